// Tile traits of the flash-bias kernels and the argument blocks the kernels receive.
//
// Every kernel works on a BM (queries) × 64 (keys) tile of the score matrix at a time; a warp
// owns 16 query rows (forward, dQ kernel) or a 16 × 32 piece (backward, 8 warps, BM = 64). Shared-memory
// tiles of Q, K, V and dO rows have a pitch of D + 16 bytes so that the eight row addresses of an
// ldmatrix (or a warp's scalar reads) fall into distinct banks; the P / dS tiles and the bias
// tile have a pitch of 72 elements for the same reason (bank-checked for 2- and 4-byte elements).
//
// Element = __half or __nv_bfloat16: tensor cores (mma.sync m16n8k16, fp32 accumulation).
// Element = float: the same kernels with a fp32 SIMT product on the same fragment layout.
//
// Fused relative-position bias: a tile of BM rows × BN keys needs the table entries of the
// BM + BN − 1 diagonals j − i it crosses; that slice (clipped to ±R) is staged in shared memory
// with the tile's other inputs, after the bias tiles (kRelSliceElems floats per stage). The
// backward adds two rows of 128 floats for the per-tile diagonal sums of dS (the dT reduction).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda::fb {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// lse as stored by the forward (natural log) -> log2 e · lse, the origin used to recompute P
// (+inf for a row without attended keys, so that its P is exactly 0).
__device__ __forceinline__ float lse_to_log2(float lse) { return lse == -INFINITY ? INFINITY : lse * kLog2e; }

// Shapes shared by the three kernels for element type T, head dim D and BM query rows per tile.
template <typename T, int D, int BM>
struct TileShape {
  using Element = T;
  static constexpr int kHeadDim = D;
  static constexpr int kBlockM = BM;  // query rows per tile
  static constexpr int kBlockN = 64;  // keys per tile
  static constexpr bool kTensorCores = !std::is_same_v<T, float>;
  static constexpr int kPitch = D + 16 / int(sizeof(T));  // Q/K/V/dO rows in shared memory
  static constexpr int kSPitch = kBlockN + 8;             // P and dS tiles (elements of T)
  static constexpr int kBiasPitch = kBlockN + 8;          // bias tile (elements of the bias dtype)
  static constexpr int kQTileBytes = BM * kPitch * int(sizeof(T));
  static constexpr int kKTileBytes = kBlockN * kPitch * int(sizeof(T));
  static constexpr int kSTileBytes = BM * kSPitch * int(sizeof(T));
  static constexpr int kBiasTileElems = BM * kBiasPitch;  // × the bias's element size, at run time
  static constexpr int kRelSliceElems =
      BM + kBlockN;  // table entries of the tile's BM + BN − 1 diagonals (fp32)
  static_assert(D % 16 == 0 && D >= 16 && D <= 128, "head dim must be 16, 32, 64 or 128");
};

// The bias tiles come last in shared memory and take 2 or 4 bytes per element as the bias dtype
// asks (a fp16 bias leaves room for one more CTA per SM than a fp32 one would); the relative-
// position slices (and the backward's diagonal sums) follow them only when the table is given.
template <typename Tr>
constexpr int rel_offset(int bias_elt_size) {
  return Tr::kOffBias + Tr::kStages * Tr::kBiasTileElems * bias_elt_size;
}
template <typename Tr>
constexpr int smem_bytes(int bias_elt_size, bool relpos) {
  return rel_offset<Tr>(bias_elt_size) + (relpos ? Tr::kRelBytes : 0);
}

// Forward: 16 query rows per warp; 8 warps (128 rows) on tensor cores so that each K/V tile
// serves twice the rows, 4 warps for fp32 (shared memory). K, V, bias and key-validity tiles
// double-buffered. On tensor cores P stays in registers; fp32 goes through a P tile.
template <typename T, int D>
struct FwdTraits : TileShape<T, D, std::is_same_v<T, float> ? 64 : 128> {
  using S = TileShape<T, D, std::is_same_v<T, float> ? 64 : 128>;
  static constexpr int kNWarps = S::kBlockM / 16, kNThreads = 32 * kNWarps;
  // Three stages (one barrier per key block instead of two) where shared memory still allows
  // two CTAs per SM: 16-bit inputs with D <= 32.
  static constexpr int kStages = (S::kTensorCores && D <= 32) ? 3 : 2;
  static constexpr int kMinBlocks = (S::kTensorCores && D <= 64) ? 2 : 1;  // ≤ 128 registers: 2 CTAs per SM
  static constexpr int kOffQ = 0;
  static constexpr int kOffK = kOffQ + S::kQTileBytes;
  static constexpr int kOffV = kOffK + kStages * S::kKTileBytes;
  static constexpr int kOffP = kOffV + kStages * S::kKTileBytes;
  static constexpr int kOffKeyOk = kOffP + (S::kTensorCores ? 0 : S::kSTileBytes);
  static constexpr int kOffBias = kOffKeyOk + (kStages * S::kBlockN + 127) / 128 * 128;
  static constexpr int kRelBytes = kStages * S::kRelSliceElems * 4;
};

// Backward (dK, dV, dB and, unless deterministic, dQ by atomics): 8 warps; a CTA owns one key
// block and walks the query blocks; Q, dO, bias, lse and delta tiles double-buffered, except for
// fp32 at D = 128 where two stages do not fit in shared memory.
template <typename T, int D>
struct BwdTraits : TileShape<T, D, 64> {
  using S = TileShape<T, D, 64>;
  static constexpr int kNWarps = 8, kNThreads = 256;
  // 2 CTAs per SM (≤ 128 registers) up to D = 64: one CTA of 8 warps left the SM idle at barriers.
  static constexpr int kMinBlocks = D <= 64 ? 2 : 1;
  static constexpr int kStages = (std::is_same_v<T, float> && D == 128) ? 1 : 2;
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + S::kKTileBytes;
  static constexpr int kOffQ = kOffV + S::kKTileBytes;
  static constexpr int kOffdO = kOffQ + kStages * S::kQTileBytes;
  static constexpr int kOffP = kOffdO + kStages * S::kQTileBytes;
  static constexpr int kOffdS = kOffP + S::kSTileBytes;
  static constexpr int kOffLse = kOffdS + S::kSTileBytes;
  static constexpr int kOffDelta = kOffLse + kStages * S::kBlockM * 4;
  static constexpr int kOffKeyOk = kOffDelta + kStages * S::kBlockM * 4;
  static constexpr int kS32Pitch = S::kBlockN + 4;  // fp32 dS tile read by the cluster's dB reduction
  // The dT reduction's fp32 dS tile, "wrapped": element (r, c) at r·kWrapPitch + ((c − r) mod 64),
  // so that column w holds diagonal w (rows r < 64 − w) and diagonal w − 64 (the rest). Pitch 73:
  // a fragment store (lane (g, t) at row g, column 2t − g + const) puts at most 2 lanes on a bank,
  // the least this layout allows (bank 8g + 2t + const); the column reads are conflict-free.
  // It shares the fp32 tile's region, except in the cluster mode (then it follows the relative-
  // position state).
  static constexpr int kWrapPitch = 73;
  static constexpr int kWrapBytes = S::kBlockM * kWrapPitch * 4;
  static constexpr int kOffdS32 = kOffKeyOk + 128;
  static constexpr int kOffBias =
      kOffdS32 + (kWrapBytes > S::kBlockM * kS32Pitch * 4 ? kWrapBytes : S::kBlockM * kS32Pitch * 4);
  // relative-position slices, then the four quarter-row partial sums of the tile's 127 diagonals
  // of dS (4 × 128 floats), then the dT walk state (64 carried sums, each warp's two end-bin sums;
  // 128 floats); in the cluster mode the wrapped dS tile after that (kWrapBytes, added at launch)
  static constexpr int kDiagElems = 128;
  static constexpr int kRelBytes = kStages * S::kRelSliceElems * 4 + 4 * kDiagElems * 4 + 128 * 4;
  static_assert(S::kBlockM == 64 && S::kBlockN == 64, "the dT diagonal reduction assumes 64 × 64 tiles");
};

// Deterministic dQ: 4 warps × 16 query rows, walks the key blocks like the forward; on tensor
// cores dS stays in registers for dQ += dS K.
template <typename T, int D>
struct DqTraits : TileShape<T, D, 64> {
  using S = TileShape<T, D, 64>;
  static constexpr int kNWarps = 4, kNThreads = 128;
  static constexpr int kStages = (std::is_same_v<T, float> && D == 128) ? 1 : 2;
  static constexpr int kOffQ = 0;
  static constexpr int kOffdO = kOffQ + S::kQTileBytes;
  static constexpr int kOffK = kOffdO + S::kQTileBytes;
  static constexpr int kOffV = kOffK + kStages * S::kKTileBytes;
  static constexpr int kOffdS = kOffV + kStages * S::kKTileBytes;
  static constexpr int kOffLse = kOffdS + (S::kTensorCores ? 0 : S::kSTileBytes);
  static constexpr int kOffDelta = kOffLse + S::kBlockM * 4;
  static constexpr int kOffKeyOk = kOffDelta + S::kBlockM * 4;
  static constexpr int kOffBias = kOffKeyOk + 128;
  static constexpr int kRelBytes = kStages * S::kRelSliceElems * 4;
};

// ---- kernel arguments (built and validated by flash_bias.cu) ----------------------------------

constexpr int kNoBias = -1;   // bias_kind when there is no bias; else int(ScalarType) of the bias
constexpr int kRelOnly = -2;  // tile mode (not a bias_kind): no dense bias, the relative-position slice alone

struct FwdArgs {
  FlashBiasParams p;
  float scale = 0.f;  // p.scale narrowed to float
  int bias_kind = kNoBias;
  bool bias_vec = false;  // bias rows may be fetched in aligned 16-byte pieces (packed: the base
                          // pointer is 16-byte aligned; each sequence's block is checked in the kernel)
  bool varlen = false;    // packed variable-length batch (p.cu_seqlens_q/k)
  bool relpos = false;    // fused relative-position table (p.relpos_table, R = p.relpos_clip)
};

// The sequence (b) a CTA works on: its lengths and where its rows start. Dense batches: every
// sequence has Nq, Nk and starts at row 0 of its batch slice; packed: cu_seqlens say.
struct SeqInfo {
  int Nq = 0, Nk = 0;  // this sequence's query and key counts
  int q0 = 0, k0 = 0;  // packed: first row of the sequence in q/out/dout/dq and k/v/dk/dv
  int b = 0;
  bool varlen = false;
  int64_t stat0 = 0;  // lse / delta index of (b, h = 0, i = 0); heads are stat_stride apart
  int64_t stat_stride = 0;

  // element offset of the sequence's row 0 (head 0) in a (B,N,H,D) / packed (T,H,D) tensor
  __host__ __device__ int64_t q_origin(const BNHDStrides& s) const {
    return varlen ? int64_t(q0) * s.row : int64_t(b) * s.batch;
  }
  __host__ __device__ int64_t k_origin(const BNHDStrides& s) const {
    return varlen ? int64_t(k0) * s.row : int64_t(b) * s.batch;
  }
  // lse / delta (B,H,Nq) dense or (H,Tq) packed: index of (h, i = 0)
  __host__ __device__ int64_t stat_row(int h) const { return stat0 + int64_t(h) * stat_stride; }
};

__device__ __forceinline__ SeqInfo seq_info(const FlashBiasParams& p, int b, bool varlen) {
  SeqInfo s;
  s.b = b;
  s.varlen = varlen;
  if (varlen) {
    s.q0 = p.cu_seqlens_q[b];
    s.Nq = p.cu_seqlens_q[b + 1] - s.q0;
    s.k0 = p.cu_seqlens_k[b];
    s.Nk = p.cu_seqlens_k[b + 1] - s.k0;
    s.stat0 = s.q0;
    s.stat_stride = p.cu_seqlens_q[p.B];  // Tq
  } else {
    s.Nq = p.Nq;
    s.Nk = p.Nk;
    s.stat0 = int64_t(b) * p.H * p.Nq;
    s.stat_stride = p.Nq;
  }
  return s;
}

// A CTA's (block, h, b): block = the query block (forward, dQ kernel) or key block (dK/dV
// kernel). Dense: grid (blocks, H, B). Packed: grid (B, H, blocks) with the blocks in reverse, so
// that the CTAs launched first are the last blocks, which only the longest sequences have, and
// the short sequences' CTAs fill in at the end. In index order (the first blocks of every
// sequence first) the longest CTAs started last: measured 0.99× the padded batch's tokens/s in
// the forward at lengths 64…1024 (H100), where the work alone allows 1.7×.
struct GridPos {
  int block, h, b;
};
__device__ __forceinline__ GridPos grid_pos(bool varlen) {
  if (varlen) return GridPos{int(gridDim.z - 1 - blockIdx.z), int(blockIdx.y), int(blockIdx.x)};
  return GridPos{int(blockIdx.x), int(blockIdx.y), int(blockIdx.z)};
}
inline dim3 launch_grid(bool varlen, int blocks, int H, int B) {
  return varlen ? dim3(unsigned(B), unsigned(H), unsigned(blocks))
                : dim3(unsigned(blocks), unsigned(H), unsigned(B));
}

// Element offset and row stride of the (b, h) slice of a bias-shaped tensor: dense strides, or
// the packed block [H, Nq_b, Nk_b] of sequence b at seq_offsets[b].
__device__ __forceinline__ int64_t bias_slice(const SeqInfo& s, int h, const int64_t* seq_offsets,
                                              int64_t batch_stride, int64_t head_stride, int64_t row_stride,
                                              int64_t& row_stride_out) {
  if (s.varlen) {
    row_stride_out = s.Nk;
    return seq_offsets[s.b] + int64_t(h) * s.Nq * s.Nk;
  }
  row_stride_out = row_stride;
  return int64_t(s.b) * batch_stride + int64_t(h) * head_stride;
}

// How dT (the relative-position table's gradient) reaches memory.
enum class DrelMode : int {
  kNone = 0,
  kAtomic = 1,   // fp32 atomics straight into p.drelpos_table (zeroed first unless accumulating)
  kPartial = 2,  // deterministic: each CTA writes its bins to a workspace row; one ordered reduction
};

// How dB reaches memory.
enum class DbiasMode : int {
  kNone = 0,
  kDirect = 1,   // one CTA per (key block, b, h) owns each dB element: written from registers
  kAtomic = 2,   // bias shared over batch and/or heads: fp32 atomics into dbias_accum
  kGrouped = 3,  // shared, deterministic: a CTA loops over the sharing (b, h) in a fixed order
  kCluster = 4,  // shared by at most 8 (b, h): those CTAs form a thread-block cluster and sum their
                 // fp32 dS tiles through distributed shared memory in rank order (deterministic)
  kStaged = 5,   // shared, the Hopper backward: each (b, h) stores its dS in the bias dtype into a
                 // staging buffer (B,H,Nq,ld); flash_bias_dbias_sum_kernel sums it in a fixed order
};

constexpr int kMaxClusterSize = 8;  // portable cluster size

struct BwdArgs {
  FlashBiasBwdParams p;
  float scale = 0.f;  // p.scale narrowed to float
  int bias_kind = kNoBias;
  bool bias_vec = false;
  bool dbias_vec = false;        // dbias pairs may be stored as one aligned 2-element access
  bool dbias_from_smem = false;  // kDirect, =, dbias dtype == element type, 16-byte aligned rows:
                                 // dB leaves from the dS tile in 16-byte stores
  const float* delta = nullptr;  // (B,H,Nq) rowsum(dO∘O)
  float* dq_accum = nullptr;     // (B,H,Nq,D) fp32, unscaled; non-null = dQ by atomics
  float* dbias_accum = nullptr;  // (B|1,H|1,Nq,dbias_accum_ld) fp32, kAtomic / kGrouped
  int64_t dbias_accum_ld = 0;
  DbiasMode dbias_mode = DbiasMode::kNone;
  bool shared_b = false, shared_h = false;  // the bias is shared over the batch / heads
  bool group_b = false, group_h = false;    // kGrouped: a CTA loops over b / h
  bool sharing_fastest = false;             // kAtomic, kCluster: 1-d grid, the sharing b / h vary fastest
  int cluster_size = 1;                     // kCluster: number of (b, h) sharing one dB slice
  bool varlen = false;                      // packed variable-length batch
  bool relpos = false;                      // fused relative-position table
  DrelMode drel_mode = DrelMode::kNone;
  float* drel_part = nullptr;  // kPartial: (B,H,ceil(Nk/64), drel_part_ld) fp32
  int64_t drel_part_ld = 0;    // min(2R+1, 64·ceil(Nq/64) + 63)
};

}  // namespace pf::kernels::cuda::fb
