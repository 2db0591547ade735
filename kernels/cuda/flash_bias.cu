// The public flash-bias API (kernels/cuda/flash_bias.h): validation, the backward's workspace
// plan, and the sequence of launches. The kernels themselves live in flash_bias_*_kernel.cuh.
#include "kernels/cuda/flash_bias.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_bias_bwd_preprocess.cuh"
#include "kernels/cuda/flash_bias_dispatch.cuh"
#include "kernels/cuda/flash_bias_sm90.h"
#include "kernels/cuda/flash_bias_traits.cuh"

namespace pf::kernels::cuda {

namespace {

using fb::BwdArgs;
using fb::DbiasMode;
using fb::DrelMode;
using fb::FwdArgs;

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// A (B,N,H,D) operand: 16-byte aligned base and strides (vector loads of 16 bytes per row piece).
void check_bnhd(const char* who, const char* name, const void* ptr, const BNHDStrides& s, ScalarType dtype) {
  const int64_t per16 = 16 / scalar_type_size(dtype);
  PF_CHECK(aligned(ptr, 16), who << ": " << name
                                 << " must be 16-byte aligned (16-byte vector loads), got address % 16 = "
                                 << reinterpret_cast<uintptr_t>(ptr) % 16);
  PF_CHECK(s.batch % per16 == 0 && s.row % per16 == 0 && s.head % per16 == 0,
           who << ": " << name << " strides (batch, row, head) = (" << s.batch << ", " << s.row << ", "
               << s.head << ") must be multiples of " << per16 << " elements (16 bytes of "
               << scalar_type_name(dtype) << ")");
}

bool is_varlen(const FlashBiasParams& p) { return p.cu_seqlens_q != nullptr || p.cu_seqlens_k != nullptr; }

void check_common(const FlashBiasParams& p, const char* who) {
  const bool varlen = is_varlen(p);
  if (varlen) {
    PF_CHECK(p.cu_seqlens_q != nullptr && p.cu_seqlens_k != nullptr,
             who << ": a packed batch needs both cu_seqlens_q and cu_seqlens_k, got "
                 << (p.cu_seqlens_q ? "cu_seqlens_q only" : "cu_seqlens_k only"));
    PF_CHECK(p.B >= 1 && p.H >= 1 && p.Nq >= 0 && p.Nk >= 0,
             who << ": packed batch: B, H must be >= 1 and Nq, Nk (the longest lengths) >= 0, got B=" << p.B
                 << " H=" << p.H << " Nq=" << p.Nq << " Nk=" << p.Nk);
    PF_CHECK(
        p.key_padding_mask == nullptr,
        who << ": key_padding_mask is not supported with a packed batch (cu_seqlens already say which keys exist); "
               "got a mask");
    PF_CHECK(
        p.bias == nullptr || p.bias_seq_offsets != nullptr,
        who << ": a packed batch with a bias needs bias_seq_offsets (the start of each sequence's [H, nq, nk] block)");
    PF_CHECK(
        aligned(p.cu_seqlens_q, 4) && aligned(p.cu_seqlens_k, 4) && aligned(p.bias_seq_offsets, 8),
        who << ": cu_seqlens (int32) and bias_seq_offsets (int64) must be aligned to their element size");
    PF_CHECK((int64_t(p.Nq) + 63) / 64 <= 65535 && (int64_t(p.Nk) + 63) / 64 <= 65535,
             who << ": packed batch: the longest sequence must be <= 65535·64 (grid limit), got Nq=" << p.Nq
                 << " Nk=" << p.Nk);
  } else {
    PF_CHECK(p.B >= 1 && p.H >= 1 && p.Nq >= 1 && p.Nk >= 1, who << ": sizes must be >= 1, got B=" << p.B
                                                                 << " H=" << p.H << " Nq=" << p.Nq
                                                                 << " Nk=" << p.Nk);
  }
  if (p.relpos_table != nullptr) {
    PF_CHECK(p.relpos_dtype == ScalarType::F32, who << ": relpos_table dtype "
                                                    << scalar_type_name(p.relpos_dtype)
                                                    << " is not supported on CUDA; expected float32");
    PF_CHECK(p.relpos_clip >= 0 && p.relpos_clip <= (1 << 29),
             who << ": relpos_clip R must be in [0, 2^29], got " << p.relpos_clip);
    PF_CHECK(aligned(p.relpos_table, 4), who << ": relpos_table (float) must be 4-byte aligned");
  }
  PF_CHECK(p.D == 16 || p.D == 32 || p.D == 64 || p.D == 128,
           who << ": head dim D=" << p.D << " is not supported; supported: 16, 32, 64, 128");
  PF_CHECK(p.dtype == ScalarType::F16 || p.dtype == ScalarType::BF16 || p.dtype == ScalarType::F32,
           who << ": dtype " << scalar_type_name(p.dtype)
               << " is not supported on CUDA; supported: float16, bfloat16, float32");
  PF_CHECK(p.B <= 65535 && p.H <= 65535,
           who << ": B=" << p.B << " and H=" << p.H << " must be <= 65535 (grid limits)");
  PF_CHECK(std::isfinite(p.scale), who << ": scale must be finite, got " << p.scale);
  PF_CHECK(p.q && p.k && p.v, who << ": q, k and v must not be null");
  check_bnhd(who, "q", p.q, p.q_stride, p.dtype);
  check_bnhd(who, "k", p.k, p.k_stride, p.dtype);
  check_bnhd(who, "v", p.v, p.v_stride, p.dtype);
  PF_CHECK(p.out != nullptr && p.lse != nullptr, who << ": out and lse must not be null");
  check_bnhd(who, "out", p.out, p.out_stride, p.dtype);
  PF_CHECK(aligned(p.lse, 4), who << ": lse (float) must be 4-byte aligned");
  if (p.bias != nullptr) {
    PF_CHECK(p.bias_dtype == ScalarType::F32 || p.bias_dtype == ScalarType::F16 ||
                 p.bias_dtype == ScalarType::BF16,
             who << ": bias dtype " << scalar_type_name(p.bias_dtype)
                 << " is not supported on CUDA; supported: float32, float16, bfloat16");
    PF_CHECK(aligned(p.bias, scalar_type_size(p.bias_dtype)),
             who << ": bias must be aligned to its element size " << scalar_type_size(p.bias_dtype));
  }
}

// The bias (or any (B|1,H|1,Nq,Nk) tensor) can be fetched in aligned 16-byte pieces.
bool bias_vec_ok(const void* ptr, ScalarType dtype, int64_t sb, int64_t sh, int64_t sr) {
  const int64_t per16 = 16 / scalar_type_size(dtype);
  return aligned(ptr, 16) && sb % per16 == 0 && sh % per16 == 0 && sr % per16 == 0;
}

// Packed blocks: the kernels check each sequence's block and row alignment; here the base pointer.
bool bias_vec_for(const FlashBiasParams& p) {
  if (p.bias == nullptr) return false;
  if (is_varlen(p)) return aligned(p.bias, 16);
  return bias_vec_ok(p.bias, p.bias_dtype, p.bias_batch_stride, p.bias_head_stride, p.bias_row_stride);
}

FwdArgs make_fwd_args(const FlashBiasParams& p) {
  FwdArgs a;
  a.p = p;
  a.scale = float(p.scale);
  a.bias_kind = p.bias ? int(p.bias_dtype) : fb::kNoBias;
  a.bias_vec = bias_vec_for(p);
  a.varlen = is_varlen(p);
  a.relpos = p.relpos_table != nullptr;
  return a;
}

size_t round256(size_t n) { return (n + 255) / 256 * 256; }

// The current device's compute capability as major * 10 + minor (0 where it cannot be read).
int device_compute_capability() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return major * 10 + minor;
}

// Thread-block clusters (the kCluster dB reduction) need compute capability 9.0.
bool device_has_clusters() { return device_compute_capability() >= 90; }

// Where the backward's scratch lives and how dB and dT are reduced.
struct BwdPlan {
  DbiasMode dbias_mode = DbiasMode::kNone;
  bool shared_b = false, shared_h = false;
  int nsb = 0, nsh = 0;  // dB slices: (B|1, H|1)
  int64_t dbias_ld = 0;  // row pitch of the dB accumulator or stage (a multiple of kDbiasChunk)
  int cluster_size = 1;  // (b, h) pairs sharing one dB slice
  DrelMode drel_mode = DrelMode::kNone;
  int64_t drel_ld = 0;  // kPartial: floats per CTA row
  size_t off_delta = 0, off_dq = 0, off_dbias = 0, off_drel = 0, total = 0;
  bool dq_atomic = false;
  bool hopper = false;  // the Hopper backward: Δ and lse·log2 e in rows of nq_pad
  int nq_pad = 0;       // Nq, or rounded up to 64 for the Hopper backward
  size_t off_lse2 = 0;
};
bool use_hopper_backward(const FlashBiasBwdParams& p);

BwdPlan plan_backward(const FlashBiasBwdParams& p) {
  BwdPlan plan;
  const bool varlen = is_varlen(p);  // packed bias blocks belong to one sequence each: never shared
  plan.shared_b = !varlen && p.bias != nullptr && p.bias_batch_stride == 0 && p.B > 1;
  plan.shared_h = !varlen && p.bias != nullptr && p.bias_head_stride == 0 && p.H > 1;
  plan.cluster_size = (plan.shared_b ? p.B : 1) * (plan.shared_h ? p.H : 1);
  // The Hopper backward stages a broadcast dB's per-(b, h) dS in the bias dtype.
  plan.hopper = use_hopper_backward(p);
  if (p.dbias != nullptr)
    plan.dbias_mode = !(plan.shared_b || plan.shared_h) ? DbiasMode::kDirect
                      : plan.hopper                     ? DbiasMode::kStaged
                      : plan.cluster_size <= fb::kMaxClusterSize && device_has_clusters()
                          ? DbiasMode::kCluster
                      : p.deterministic ? DbiasMode::kGrouped
                                        : DbiasMode::kAtomic;
  plan.dq_atomic = p.dq != nullptr && !p.deterministic;
  // row statistics and the dQ accumulator: (B,H,Nq), or (H,Tq) packed with Tq <= B·Nq; the Hopper
  // backward's Δ and lse·log2 e in rows padded to its 64-row query blocks
  const size_t rows = size_t(p.B) * p.H * p.Nq;
  plan.nq_pad = plan.hopper ? (p.Nq + 63) / 64 * 64 : p.Nq;
  const size_t stat_bytes = round256(size_t(p.B) * p.H * plan.nq_pad * sizeof(float));
  plan.off_delta = 0;
  size_t off = stat_bytes;
  if (plan.hopper) {
    plan.off_lse2 = off;
    off += stat_bytes;
  }
  if (plan.dq_atomic) {
    plan.off_dq = off;
    off += round256(rows * p.D * sizeof(float));
  }
  if (plan.dbias_mode == DbiasMode::kAtomic || plan.dbias_mode == DbiasMode::kGrouped ||
      plan.dbias_mode == DbiasMode::kStaged) {
    plan.nsb = plan.shared_b ? 1 : p.B;
    plan.nsh = plan.shared_h ? 1 : p.H;
    plan.dbias_ld = (int64_t(p.Nk) + fb::kDbiasChunk - 1) / fb::kDbiasChunk * fb::kDbiasChunk;
    plan.off_dbias = off;
    // fp32 slices (nsb, nsh) for the accumulator; per (b, h) in the bias dtype for the stage
    off += plan.dbias_mode == DbiasMode::kStaged
               ? round256(size_t(p.B) * p.H * p.Nq * plan.dbias_ld * scalar_type_size(p.bias_dtype))
               : round256(size_t(plan.nsb) * plan.nsh * p.Nq * plan.dbias_ld * sizeof(float));
  }
  if (p.drelpos_table != nullptr) {
    plan.drel_mode = p.deterministic ? DrelMode::kPartial : DrelMode::kAtomic;
    if (plan.drel_mode == DrelMode::kPartial) {
      // one row per (b, h, key block): the bins of diagonals n0 − 64·ceil(Nq/64) + 1 … n0 + 63
      const int64_t span = (int64_t(p.Nq) + 63) / 64 * 64 + 63;
      plan.drel_ld = std::min<int64_t>(2 * int64_t(p.relpos_clip) + 1, span);
      plan.off_drel = off;
      off += round256(size_t(p.B) * p.H * ((size_t(p.Nk) + 63) / 64) * plan.drel_ld * sizeof(float));
    }
  }
  plan.total = off;
  return plan;
}

int grid_for(int64_t n, int threads) { return int(std::min<int64_t>((n + threads - 1) / threads, 132 * 16)); }

FlashBiasPath g_path = FlashBiasPath::kAuto;

// The Hopper kernels are built (PF_FLASH_BIAS_SM90) and the current device is compute capability 9.0.
bool device_is_sm90() {
#ifdef PF_FLASH_BIAS_SM90
  return device_compute_capability() == 90;
#else
  return false;
#endif
}

// nullptr: the Hopper forward runs `p`; else why not.
const char* hopper_forward_refusal(const FlashBiasParams& p) {
#ifdef PF_FLASH_BIAS_SM90
  if (!device_is_sm90()) return "the current device is not compute capability 9.0 (Hopper)";
  return flash_bias_fwd_sm90_unsupported(p);
#else
  (void)p;
  return "this build has no Hopper kernels (PF_FLASH_BIAS_SM90 off or nvcc older than 12.0)";
#endif
}

// nullptr: the Hopper backward runs `p`; else why not.
const char* hopper_backward_refusal(const FlashBiasBwdParams& p) {
  if (const char* why = hopper_forward_refusal(p)) return why;
#ifdef PF_FLASH_BIAS_SM90
  return flash_bias_bwd_sm90_unsupported(p);
#else
  return nullptr;
#endif
}
bool use_hopper_backward(const FlashBiasBwdParams& p) {
  if (g_path == FlashBiasPath::kPortable) return false;
  const char* why = hopper_backward_refusal(p);
  PF_CHECK(
      why == nullptr || g_path != FlashBiasPath::kHopper,
      "flash_bias_backward: the Hopper path was asked for (set_flash_bias_path) but cannot run: " << why);
  return why == nullptr;
}
bool use_hopper_forward(const FlashBiasParams& p) {
  if (g_path == FlashBiasPath::kPortable) return false;
  const char* why = hopper_forward_refusal(p);
  PF_CHECK(why == nullptr || g_path != FlashBiasPath::kHopper,
           "flash_bias_forward: the Hopper path was asked for (set_flash_bias_path) but cannot run: " << why);
  return why == nullptr;
}

}  // namespace

void set_flash_bias_path(FlashBiasPath path) { g_path = path; }
FlashBiasPath flash_bias_path() { return g_path; }

const char* flash_bias_forward_kernel(const FlashBiasParams& p) {
  return use_hopper_forward(p) ? "hopper" : "portable";
}
const char* flash_bias_backward_kernel(const FlashBiasBwdParams& p) {
  return use_hopper_backward(p) ? "hopper" : "portable";
}
bool flash_bias_hopper_covers(const FlashBiasBwdParams& p) { return hopper_backward_refusal(p) == nullptr; }

#ifdef PF_FLASH_BIAS_SM90
const char* flash_bias_fwd_sm90_unsupported(const FlashBiasParams& p) {
  if (p.dtype != ScalarType::F16 && p.dtype != ScalarType::BF16)
    return "inputs other than float16 / bfloat16";
  if (p.D != 32 && p.D != 64 && p.D != 128) return "head dim other than 32, 64, 128";
  if (is_varlen(p)) return "a packed variable-length batch";
  static_assert(kSm90RelposMaxBins == 4096, "the refusal below names the bound");
  if (p.relpos_table != nullptr &&
      relpos_window_bins(p.relpos_clip, std::max(p.Nq, p.Nk)) > kSm90RelposMaxBins)
    return "a relative-position table whose shared-memory window min(2R + 1, max(Nq, Nk) + 254) exceeds 4096 "
           "bins";
  if (p.bias != nullptr) {
    const int e = scalar_type_size(p.bias_dtype);
    if (!aligned(p.bias, 16) || (p.bias_row_stride * e) % 16 != 0 || (p.bias_head_stride * e) % 16 != 0 ||
        (p.bias_batch_stride * e) % 16 != 0 || p.bias_row_stride <= 0)
      return "a bias whose base or row / head / batch strides are not 16-byte multiples";
  }
  return nullptr;
}
const char* flash_bias_bwd_sm90_unsupported(const FlashBiasBwdParams& p) {
  if (const char* why = flash_bias_fwd_sm90_unsupported(p)) return why;
  if (p.deterministic)
    return "the deterministic mode (the Hopper backward adds dQ, a broadcast dB and dT with fp32 atomics)";
  if (p.bias != nullptr && p.bias_dtype != p.dtype) return "a bias of another dtype than q, k, v";
  const bool broadcast = (p.bias_batch_stride == 0 && p.B > 1) || (p.bias_head_stride == 0 && p.H > 1);
  if (p.dbias != nullptr && !broadcast) {
    const int e = scalar_type_size(p.bias_dtype);
    if (p.dbias_accumulate) return "a dbias to add into (dbias_accumulate) where the bias is not broadcast";
    if (!aligned(p.dbias, 16) || (p.dbias_row_stride * e) % 16 != 0 || (p.dbias_head_stride * e) % 16 != 0 ||
        (p.dbias_batch_stride * e) % 16 != 0 || p.dbias_row_stride <= 0)
      return "a dbias whose base or row / head / batch strides are not 16-byte multiples";
  }
  if (p.relpos_table != nullptr && flash_bias_bwd_sm90_stages(p) < 2)
    return "a relative-position table window that leaves shared memory for fewer than two pipeline stages";
  return nullptr;
}
#endif

void flash_bias_forward(const FlashBiasParams& p, cudaStream_t stream) {
  check_common(p, "flash_bias_forward");
  if (p.Nq == 0) return;        // packed batch of sequences without queries
  if (use_hopper_forward(p)) {  // true only where the Hopper kernels are built
#ifdef PF_FLASH_BIAS_SM90
    flash_bias_fwd_sm90(p, stream);
#endif
    return;
  }
  const FwdArgs args = make_fwd_args(p);
  fb::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    fb::dispatch_head_dim(p.D,
                          [&](auto d) { fb::launch_flash_bias_fwd<T, decltype(d)::value>(args, stream); });
  });
}

size_t flash_bias_backward_workspace_bytes(const FlashBiasBwdParams& p) { return plan_backward(p).total; }

namespace {

// The plan's scratch for the gradients in the workspace: the fp32 accumulators (dQ of the atomic
// mode, dB of a bias shared by more (b, h) pairs than a cluster takes), zeroed on the stream, or
// the Hopper backward's dB stage (every element written by the kernel: not zeroed); null where
// the plan has none.
struct Accumulators {
  float* dq = nullptr;
  float* dbias = nullptr;       // (nsb, nsh, Nq, dbias_ld) fp32
  void* dbias_stage = nullptr;  // (B, H, Nq, dbias_ld) in the bias dtype
};
Accumulators zeroed_accumulators(const FlashBiasBwdParams& p, const BwdPlan& plan, char* ws,
                                 cudaStream_t stream) {
  Accumulators acc;
  if (plan.dq_atomic) {
    acc.dq = reinterpret_cast<float*>(ws + plan.off_dq);
    PF_CUDA_CHECK(cudaMemsetAsync(acc.dq, 0, size_t(p.B) * p.H * p.Nq * p.D * sizeof(float), stream));
  }
  if (plan.dbias_mode == DbiasMode::kStaged) {
    acc.dbias_stage = ws + plan.off_dbias;
  } else if (plan.nsb > 0) {
    acc.dbias = reinterpret_cast<float*>(ws + plan.off_dbias);
    PF_CUDA_CHECK(cudaMemsetAsync(
        acc.dbias, 0, size_t(plan.nsb) * plan.nsh * p.Nq * plan.dbias_ld * sizeof(float), stream));
  }
  return acc;
}

// dbias (of type Dst) = (or +=) the sum of src's slices (flash_bias_dbias_sum_kernel).
template <typename Src, typename Dst>
void sum_dbias(const FlashBiasBwdParams& p, const BwdPlan& plan, const Src* src, int src_b, int src_h,
               cudaStream_t stream) {
  const int64_t n = int64_t(plan.nsb) * plan.nsh * p.Nq * ((p.Nk + fb::kDbiasChunk - 1) / fb::kDbiasChunk);
  if (n == 0) return;
  fb::flash_bias_dbias_sum_kernel<Src, Dst>
      <<<grid_for(n, 256), 256, 0, stream>>>(p, src, plan.dbias_ld, src_b, src_h, plan.nsb, plan.nsh);
  PF_CUDA_CHECK_LAUNCH("flash_bias_dbias_sum_kernel");
}

// The accumulators into the gradients' dtypes and strides: dq = scale · Σ dS K, dbias = (or +=) Σ dS
// (from the fp32 accumulator, or the stage summed over the (b, h) pairs sharing the bias).
void finalize_accumulators(const FlashBiasBwdParams& p, const BwdPlan& plan, bool varlen,
                           const Accumulators& acc, cudaStream_t stream) {
  const int64_t rows = int64_t(p.B) * p.H * p.Nq;
  if (acc.dq != nullptr && rows > 0)
    fb::dispatch_dtype(p.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      fb::flash_bias_dq_finalize_kernel<T>
          <<<grid_for(rows * p.D / 8, 256), 256, 0, stream>>>(p, varlen, acc.dq, float(p.scale));
      PF_CUDA_CHECK_LAUNCH("flash_bias_dq_finalize_kernel");
    });
  if (acc.dbias != nullptr || acc.dbias_stage != nullptr)
    fb::dispatch_dtype(p.bias_dtype, [&](auto tag) {
      using Dst = typename decltype(tag)::type;
      if (acc.dbias != nullptr) sum_dbias<float, Dst>(p, plan, acc.dbias, plan.nsb, plan.nsh, stream);
      if constexpr (!std::is_same_v<Dst, float>)  // the stage: the Hopper kernels, 16-bit biases only
        if (acc.dbias_stage != nullptr)
          sum_dbias<Dst, Dst>(p, plan, static_cast<const Dst*>(acc.dbias_stage), p.B, p.H, stream);
    });
}

// The Hopper backward: padded row statistics, the main kernel, then the accumulators' conversion.
void hopper_backward(const FlashBiasBwdParams& p, const BwdPlan& plan, char* ws, cudaStream_t stream) {
#ifdef PF_FLASH_BIAS_SM90
  const Accumulators acc = zeroed_accumulators(p, plan, ws, stream);
  float* delta = reinterpret_cast<float*>(ws + plan.off_delta);
  float* lse2 = reinterpret_cast<float*>(ws + plan.off_lse2);
  FlashBiasBwdSm90Workspace w;
  w.nq_pad = plan.nq_pad;
  w.delta = delta;
  w.lse2 = lse2;
  w.dq_accum = acc.dq;
  w.dbias_stage = acc.dbias_stage;
  w.dbias_stage_ld = plan.dbias_ld;
  fb::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      fb::flash_bias_bwd_padded_stats_kernel<T>
          <<<grid_for(int64_t(p.B) * p.H * plan.nq_pad, 8), 256, 0, stream>>>(p, plan.nq_pad, delta, lse2);
      PF_CUDA_CHECK_LAUNCH("flash_bias_bwd_padded_stats_kernel");
      flash_bias_bwd_sm90(p, w, stream);
    }
  });
  finalize_accumulators(p, plan, false, acc, stream);
#else
  (void)p, (void)plan, (void)ws, (void)stream;
  PF_FAIL("flash_bias_backward: this build has no Hopper kernels");
#endif
}

}  // namespace

void flash_bias_backward(const FlashBiasBwdParams& p, void* workspace, cudaStream_t stream) {
  const char* who = "flash_bias_backward";
  check_common(p, who);
  PF_CHECK(p.dout != nullptr, who << ": dout must not be null");
  check_bnhd(who, "dout", p.dout, p.dout_stride, p.dtype);
  if (p.dq) check_bnhd(who, "dq", p.dq, p.dq_stride, p.dtype);
  if (p.dk) check_bnhd(who, "dk", p.dk, p.dk_stride, p.dtype);
  if (p.dv) check_bnhd(who, "dv", p.dv, p.dv_stride, p.dtype);
  if (p.dbias) {
    PF_CHECK(p.bias != nullptr, who << ": dbias was given but there is no bias");
    PF_CHECK(aligned(p.dbias, scalar_type_size(p.bias_dtype)),
             who << ": dbias must be aligned to its element size " << scalar_type_size(p.bias_dtype));
  }
  if (p.drelpos_table) {
    PF_CHECK(p.relpos_table != nullptr, who << ": drelpos_table was given but there is no relpos_table");
    PF_CHECK(aligned(p.drelpos_table, 4), who << ": drelpos_table (float) must be 4-byte aligned");
  }
  const BwdPlan plan = plan_backward(p);
  PF_CHECK(plan.total == 0 || workspace != nullptr,
           who << ": workspace is null but " << plan.total
               << " bytes are needed (flash_bias_backward_workspace_bytes)");
  PF_CHECK(aligned(workspace, 256), who << ": workspace must be 256-byte aligned");
  const bool want_dq = p.dq != nullptr, want_dk = p.dk != nullptr, want_dv = p.dv != nullptr;
  const bool want_drel = p.drelpos_table != nullptr;
  if (!want_dq && !want_dk && !want_dv && p.dbias == nullptr && !want_drel) return;
  const bool varlen = is_varlen(p);

  char* ws = static_cast<char*>(workspace);
  const int64_t n_bins = int64_t(p.H) * (2 * int64_t(p.relpos_clip) + 1);
  if (plan.drel_mode == DrelMode::kAtomic && !p.dbias_accumulate)  // both paths add dT atomically
    PF_CUDA_CHECK(cudaMemsetAsync(p.drelpos_table, 0, size_t(n_bins) * sizeof(float), stream));
  if (plan.hopper) {
    hopper_backward(p, plan, ws, stream);
    return;
  }
  BwdArgs args;
  args.p = p;
  args.scale = float(p.scale);
  args.bias_kind = p.bias ? int(p.bias_dtype) : fb::kNoBias;
  args.bias_vec = bias_vec_for(p);
  // packed: the strides are unused; the kernel checks each sequence's block offset and row length
  args.dbias_vec = p.dbias && aligned(p.dbias, 2 * scalar_type_size(p.bias_dtype)) &&
                   (varlen || (p.dbias_batch_stride % 2 == 0 && p.dbias_head_stride % 2 == 0 &&
                               p.dbias_row_stride % 2 == 0));
  args.dbias_from_smem = plan.dbias_mode == DbiasMode::kDirect && !p.dbias_accumulate &&
                         p.bias_dtype == p.dtype &&
                         (varlen ? aligned(p.dbias, 16)
                                 : bias_vec_ok(p.dbias, p.bias_dtype, p.dbias_batch_stride,
                                               p.dbias_head_stride, p.dbias_row_stride));
  args.varlen = varlen;
  args.relpos = p.relpos_table != nullptr;
  args.drel_mode = plan.drel_mode;
  if (plan.drel_mode == DrelMode::kPartial) {
    args.drel_part = reinterpret_cast<float*>(ws + plan.off_drel);
    args.drel_part_ld = plan.drel_ld;
  }
  const Accumulators acc = zeroed_accumulators(p, plan, ws, stream);
  args.delta = reinterpret_cast<float*>(ws + plan.off_delta);
  args.dq_accum = acc.dq;
  args.dbias_mode = plan.dbias_mode;
  args.shared_b = plan.shared_b;
  args.shared_h = plan.shared_h;
  args.dbias_accum = acc.dbias;
  args.dbias_accum_ld = plan.dbias_ld;
  args.group_b = plan.dbias_mode == DbiasMode::kGrouped && plan.shared_b;
  args.group_h = plan.dbias_mode == DbiasMode::kGrouped && plan.shared_h;
  args.sharing_fastest = plan.dbias_mode == DbiasMode::kAtomic || plan.dbias_mode == DbiasMode::kCluster;
  args.cluster_size = plan.dbias_mode == DbiasMode::kCluster ? plan.cluster_size : 1;

  const int64_t rows = int64_t(p.B) * p.H * p.Nq;

  fb::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    // Δ = rowsum(dO ∘ O): 8 warps per block, one warp per row
    if (rows > 0) {
      fb::flash_bias_bwd_delta_kernel<T>
          <<<grid_for(rows, 8), 256, 0, stream>>>(p, varlen, const_cast<float*>(args.delta));
      PF_CUDA_CHECK_LAUNCH("flash_bias_bwd_delta_kernel");
    }

    fb::dispatch_head_dim(p.D, [&](auto d) {
      constexpr int D = decltype(d)::value;
      if (want_dk || want_dv || p.dbias != nullptr || want_drel || plan.dq_atomic)
        fb::launch_flash_bias_bwd<T, D>(args, stream);
      if (want_dq && !plan.dq_atomic) fb::launch_flash_bias_bwd_dq<T, D>(args, stream);
    });
  });
  if (plan.drel_mode == DrelMode::kPartial) {
    fb::flash_bias_drel_reduce_kernel<<<grid_for(n_bins, 256), 256, 0, stream>>>(p, varlen, args.drel_part,
                                                                                 plan.drel_ld);
    PF_CUDA_CHECK_LAUNCH("flash_bias_drel_reduce_kernel");
  }
  finalize_accumulators(p, plan, varlen, acc, stream);
}

}  // namespace pf::kernels::cuda
