// pair_bias over the L layers that read one pair representation z, in one pass over z each way
// (declared in kernels/cuda/fused.h; kernels/cpu/fused.h derives the single layer's backward).
//
// Layer l's bias is y_lh = Σ_c W_l[h,c] (γ_l[c] n_c + β_l[c]) with n = (z − μ)·rstd the row's
// normalised channels, the same for every layer. Folded: y_o = Σ_c W'[o,c] n_c + b'[o] for the
// O = L·H outputs o = l·H + h, W'[o,c] = W_l[h,c] γ_l[c], b'[o] = Σ_c W_l[h,c] β_l[c]: one product
// of the (rows × C) normalised z with W'ᵀ. b' rides along as a channel of constant 1 (column C of
// the augmented W'), so the forward is one warp product per 16 rows:
//   forward:  out[o] = [n, 1] · W'augᵀ                                     (16 × O per warp)
//   backward: dn = dY · W'                  (16 × C per warp; dY the 16 rows' O gradients)
//             dz = rstd·(dn − mean(dn) − n·mean(dn·n))     (LayerNorm without its affine part)
//             [dW' | db'] += dYᵀ · [n, 1]      (O × (C + 1) per block, summed over its rows)
// and the layers' gradients from the block sums (fixed order) by
//   dW_l[h,c] = γ_l[c] dW'[o,c] + β_l[c] db'[o],  dγ_l[c] = Σ_h W_l[h,c] dW'[o,c],
//   dβ_l[c] = Σ_h W_l[h,c] db'[o].
// The products run on the tensor cores for bf16 z (n and W' rounded to bf16, fp32 sums) and on
// the CUDA cores in fp32 for fp32 z (fb::warp_gemm has both). Everything else is fp32.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/flash_bias_warp.cuh"
#include "kernels/cuda/fused.h"

namespace pf::kernels::cuda {

namespace {

constexpr int kPbOut = kPairBiasLayersMaxOutputs;  // O padded: W'aug rows (zero past O)
constexpr int kPbWarps = 4;                        // a block: 4 warps of 16 rows
constexpr int kPbBlocks =
    264;  // backward blocks: a constant, so the sums' order (and bits) do not depend on the card

template <int C>
struct PbShape {
  static constexpr int K = C + 16;  // W'aug columns: C channels, the ones channel (b'), zeros
  static constexpr int kPitch =
      C + 24;  // row pitch of sW / sN in elements: ldmatrix rows fall in distinct banks
  static constexpr int kDyPitch = 16 * kPbWarps + 8;  // sDy[o][block row]
  static constexpr int kOutPitch = 16 + 8;            // sOut[o][warp row]
};

template <class T>
__device__ __forceinline__ float load_f(const void* p, int64_t i) {
  return to_f(static_cast<const T*>(p)[i]);
}

// The 16 rows r0 … r0 + 15 of z normalised into sN (pitch P, channels 0 … C − 1) as T, and each
// row's rstd into sRstd (when given). Rows past `rows` give n = 0. A row is read by C / V lanes
// (V elements of 16 bytes each), all 16 rows' loads issued before the first use.
template <class T, int C, int P>
__device__ __forceinline__ void normalize_rows(const T* z, int64_t r0, int64_t rows, float eps, T* sN,
                                               float* sRstd) {
  constexpr int V = 16 / sizeof(T);
  static_assert(C % V == 0 && C / V <= 32, "normalize_rows: C / V lanes per row, at most 32");
  constexpr int kLanes = C / V, kRowsPerPass = 32 / kLanes, kPasses = 16 / kRowsPerPass;
  static_assert(kPasses >= 1 && 16 % kRowsPerPass == 0, "normalize_rows: 16 rows in whole passes");
  const int lane = threadIdx.x & 31, part = lane % kLanes, rr = lane / kLanes;
  uint4 raw[kPasses];
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    const int64_t r = r0 + p * kRowsPerPass + rr;
    raw[p] = r < rows ? __ldg(reinterpret_cast<const uint4*>(z + r * C) + part) : make_uint4(0u, 0u, 0u, 0u);
  }
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    const int row = p * kRowsPerPass + rr;
    const T* x = reinterpret_cast<const T*>(&raw[p]);
    float v[V], s = 0.f;
#pragma unroll
    for (int e = 0; e < V; ++e) s += v[e] = to_f(x[e]);
#pragma unroll
    for (int o = kLanes / 2; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    const float mean = s * (1.f / C);
    float q = 0.f;
#pragma unroll
    for (int e = 0; e < V; ++e) q += (v[e] - mean) * (v[e] - mean);
#pragma unroll
    for (int o = kLanes / 2; o > 0; o /= 2) q += __shfl_xor_sync(0xffffffffu, q, o);
    const bool live = r0 + row < rows;
    const float rstd = live ? rsqrtf(q * (1.f / C) + eps) : 0.f;
    uint4 packed;
    T* n = reinterpret_cast<T*>(&packed);
#pragma unroll
    for (int e = 0; e < V; ++e) n[e] = from_f<T>((v[e] - mean) * rstd);
    *reinterpret_cast<uint4*>(sN + row * P + part * V) = packed;
    if (sRstd != nullptr && part == 0) sRstd[row] = rstd;
  }
}

// Where row r of the (rows = B·NM) pair rows sits in output plane o (= l·H + h) of (L,B,H,NM):
// rows r0 + k for k < 16, from (b0, ij0) of r0.
struct PlaneRows {
  int64_t NM, B;
  int H;
  __device__ __forceinline__ int64_t offset(int o, int64_t b, int64_t ij) const {
    const int l = o / H, h = o - l * H;
    return ((int64_t(l) * B + b) * H + h) * NM + ij;
  }
  // (b, ij) of row r0 + k, given those of r0 (NM may be smaller than 16)
  __device__ __forceinline__ void step(int64_t b0, int64_t ij0, int k, int64_t& b, int64_t& ij) const {
    b = b0;
    ij = ij0 + k;
    while (ij >= NM) {
      ij -= NM;
      ++b;
    }
  }
};

// fold: W'aug (kPbOut × K, T) from the layers' γ, β, W (PT). Row o < O: W_l[h,c] γ_l[c] for
// c < C, Σ_c W_l[h,c] β_l[c] at c = C, 0 past it; rows past O zero.
template <class T, class PT>
__global__ void pair_bias_layers_fold_kernel(PairBiasLayerParams p, T* w_aug, int C, int K, int H, int O) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= kPbOut * K) return;
  const int o = i / K, c = i - o * K;
  float v = 0.f;
  if (o < O) {
    const int l = o / H, h = o - l * H;
    if (c < C) {
      v = load_f<PT>(p.w[l], int64_t(h) * C + c) * load_f<PT>(p.gamma[l], c);
    } else if (c == C) {
      for (int k = 0; k < C; ++k) v += load_f<PT>(p.w[l], int64_t(h) * C + k) * load_f<PT>(p.beta[l], k);
    }
  }
  w_aug[i] = from_f<T>(v);
}

template <class T, int C>
__global__ void __launch_bounds__(32 * kPbWarps)
    pair_bias_layers_forward_kernel(const T* z, const T* w_aug, T* out, int64_t rows, PlaneRows pr, int O,
                                    float eps) {
  using S = PbShape<C>;
  extern __shared__ __align__(16) char smem_raw[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, g = lane / 4, t = lane % 4;
  T* sW = reinterpret_cast<T*>(smem_raw);                   // [kPbOut][kPitch]
  T* sN = sW + kPbOut * S::kPitch + warp * 16 * S::kPitch;  // [16][kPitch], this warp's
  T* sOut = sW + (kPbOut + 16 * kPbWarps) * S::kPitch + warp * kPbOut * S::kOutPitch;  // [kPbOut][kOutPitch]
  for (int i = threadIdx.x; i < kPbOut * S::K; i += blockDim.x)
    sW[(i / S::K) * S::kPitch + i % S::K] = w_aug[i];
  for (int i = lane; i < 16 * 16; i += 32)  // the ones channel and its zero padding, never overwritten
    sN[(i / 16) * S::kPitch + C + i % 16] = from_f<T>(i % 16 == 0 ? 1.f : 0.f);
  __syncthreads();
  constexpr int V = 16 / sizeof(T);
  const bool vec = pr.NM % V == 0;  // kV-row runs never cross a batch and stay 16-byte aligned
  const int64_t tiles = (rows + 15) / 16;
  for (int64_t tile = int64_t(blockIdx.x) * kPbWarps + warp; tile < tiles;
       tile += int64_t(gridDim.x) * kPbWarps) {
    const int64_t r0 = tile * 16;
    normalize_rows<T, C, S::kPitch>(z, r0, rows, eps, sN, nullptr);
    __syncwarp();
    float acc[1][kPbOut / 8][4];
    fb::zero_frag(acc);
    fb::warp_gemm<1, kPbOut / 8, S::K, false, false, T>(acc, sN, S::kPitch, sW, S::kPitch);
#pragma unroll
    for (int nt = 0; nt < kPbOut / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        sOut[(8 * nt + 2 * t + (e & 1)) * S::kOutPitch + g + 8 * (e >> 1)] = from_f<T>(acc[0][nt][e]);
    __syncwarp();
    const int64_t b0 = r0 / pr.NM, ij0 = r0 - b0 * pr.NM;
    if (vec) {
      for (int q = lane; q < O * (16 / V); q += 32) {  // plane o, rows V·k … V·k + V − 1
        const int o = q / (16 / V), k = V * (q % (16 / V));
        if (r0 + k >= rows) continue;
        int64_t b, ij;
        pr.step(b0, ij0, k, b, ij);
        *reinterpret_cast<uint4*>(out + pr.offset(o, b, ij)) =
            *reinterpret_cast<const uint4*>(sOut + o * S::kOutPitch + k);
      }
    } else {
      for (int q = lane; q < O * 16; q += 32) {
        const int o = q / 16, k = q % 16;
        if (r0 + k >= rows) continue;
        int64_t b, ij;
        pr.step(b0, ij0, k, b, ij);
        out[pr.offset(o, b, ij)] = sOut[o * S::kOutPitch + k];
      }
    }
    __syncwarp();  // sN and sOut are rewritten by the next tile
  }
}

template <class T, int C>
__global__ void __launch_bounds__(32 * kPbWarps)
    pair_bias_layers_backward_kernel(const T* gout, const T* z, const T* w_aug, T* dz, float* partial,
                                     int64_t rows, PlaneRows pr, int O, float eps, bool accumulate_dz) {
  using S = PbShape<C>;
  constexpr int kRows = 16 * kPbWarps;  // a block's rows per step
  extern __shared__ __align__(16) char smem_raw[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, g = lane / 4, t = lane % 4;
  T* sW = reinterpret_cast<T*>(smem_raw);  // [kPbOut][kPitch]
  T* sN = sW + kPbOut * S::kPitch;         // [kRows][kPitch]: the block's rows, warp w's at 16w
  T* sDy = sN + kRows * S::kPitch;         // [kPbOut][kDyPitch]: dY of the block's rows, per output
  float* sRstd = reinterpret_cast<float*>(sDy + kPbOut * S::kDyPitch);  // [kRows]
  for (int i = threadIdx.x; i < kPbOut * S::K; i += blockDim.x)
    sW[(i / S::K) * S::kPitch + i % S::K] = w_aug[i];
  for (int i = threadIdx.x; i < kRows * 16; i += blockDim.x)
    sN[(i / 16) * S::kPitch + C + i % 16] = from_f<T>(i % 16 == 0 ? 1.f : 0.f);
  for (int i = threadIdx.x; i < kPbOut * S::kDyPitch; i += blockDim.x) sDy[i] = from_f<T>(0.f);
  __syncthreads();

  // [dW' | db'] of outputs 16w … 16w + 15 (warp w; none where 16w >= O), columns C + 1 … C + 7 unused
  constexpr int kNW = C / 8 + 1;
  float dw[1][kNW][4];
  fb::zero_frag(dw);
  constexpr int V = 16 / sizeof(T);
  const bool vec = pr.NM % V == 0;
  T* sNw = sN + 16 * warp * S::kPitch;
  const int64_t steps = (rows + kRows - 1) / kRows;
  for (int64_t step = blockIdx.x; step < steps; step += gridDim.x) {
    const int64_t r0 = step * kRows + 16 * warp;
    normalize_rows<T, C, S::kPitch>(z, r0, rows, eps, sNw, sRstd + 16 * warp);
    // dY of the warp's rows into sDy[o][16w + k] (rows past `rows`: 0)
    const int64_t b0 = r0 / pr.NM, ij0 = r0 - b0 * pr.NM;
    if (vec) {
      for (int q = lane; q < O * (16 / V); q += 32) {
        const int o = q / (16 / V), k = V * (q % (16 / V));
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r0 + k < rows) {
          int64_t b, ij;
          pr.step(b0, ij0, k, b, ij);
          v = __ldg(reinterpret_cast<const uint4*>(gout + pr.offset(o, b, ij)));
        }
        *reinterpret_cast<uint4*>(sDy + o * S::kDyPitch + 16 * warp + k) = v;
      }
    } else {
      for (int q = lane; q < O * 16; q += 32) {
        const int o = q / 16, k = q % 16;
        T v = from_f<T>(0.f);
        if (r0 + k < rows) {
          int64_t b, ij;
          pr.step(b0, ij0, k, b, ij);
          v = gout[pr.offset(o, b, ij)];
        }
        sDy[o * S::kDyPitch + 16 * warp + k] = v;
      }
    }
    __syncwarp();

    // dn (16 rows × C) = dY (16 × kPbOut) · W' (kPbOut × C)
    float dn[1][C / 8][4];
    fb::zero_frag(dn);
    fb::warp_gemm<1, C / 8, kPbOut, true, true, T>(dn, sDy + 16 * warp, S::kDyPitch, sW, S::kPitch);
    // dz of rows g (e = 0, 1) and g + 8 (e = 2, 3), channels 8nt + 2t, + 1 (none wanted: dz null)
    float s1[2] = {0.f, 0.f}, s2[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < C / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float n = to_f(sNw[(g + 8 * (e >> 1)) * S::kPitch + 8 * nt + 2 * t + (e & 1)]);
        s1[e >> 1] += dn[0][nt][e];
        s2[e >> 1] += dn[0][nt][e] * n;
      }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      s1[hf] = fb::quad_sum(s1[hf]) * (1.f / C);
      s2[hf] = fb::quad_sum(s2[hf]) * (1.f / C);
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int row = g + 8 * hf;
      if (dz == nullptr || r0 + row >= rows) continue;
      const float rstd = sRstd[16 * warp + row];
      T* d = dz + (r0 + row) * C;
#pragma unroll
      for (int nt = 0; nt < C / 8; ++nt) {
        const int c = 8 * nt + 2 * t;
        float v[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float n = to_f(sNw[row * S::kPitch + c + e]);
          v[e] = rstd * (dn[0][nt][2 * hf + e] - s1[hf] - n * s2[hf]);
        }
        if (accumulate_dz) {
          const float2 old = fb::load_pair(d + c);
          v[0] += old.x;
          v[1] += old.y;
        }
        fb::store_pair(d + c, v[0], v[1]);
      }
    }
    __syncthreads();  // every warp's n and dY in place
    if (16 * warp < O)
      fb::warp_gemm<1, kNW, kRows, false, true, T>(dw, sDy + 16 * warp * S::kDyPitch, S::kDyPitch, sN,
                                                   S::kPitch);
    __syncthreads();  // the next step rewrites sN and sDy
  }
  // this block's partial [dW' | db']: (kPbOut, C + 1) floats
  if (16 * warp >= O) return;
  float* part = partial + int64_t(blockIdx.x) * kPbOut * (C + 1);
#pragma unroll
  for (int nt = 0; nt < kNW; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int o = 16 * warp + g + 8 * (e >> 1), c = 8 * nt + 2 * t + (e & 1);
      if (c <= C) part[o * (C + 1) + c] = dw[0][nt][e];
    }
}

// sum[o][c] = Σ over the blocks in order of partial[block][o][c], o < O, c ≤ C
__global__ void pair_bias_layers_sum_kernel(const float* partial, int blocks, int O, int C, float* sum) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= O * (C + 1)) return;
  const int o = i / (C + 1), c = i - o * (C + 1);
  float s = 0.f;
  for (int k = 0; k < blocks; ++k) s += partial[(int64_t(k) * kPbOut + o) * (C + 1) + c];
  sum[i] = s;
}

// The layers' dW, dγ, dβ from sum = [dW' | db'] (one thread per layer and channel)
template <class PT>
__global__ void pair_bias_layers_unfold_kernel(PairBiasLayerParams p, PairBiasLayerGrads d, const float* sum,
                                               int L, int H, int C) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= L * C) return;
  const int l = i / C, c = i - l * C;
  const float gam = load_f<PT>(p.gamma[l], c), bet = load_f<PT>(p.beta[l], c);
  float dg = 0.f, db = 0.f;
  for (int h = 0; h < H; ++h) {
    const float* row = sum + (l * H + h) * (C + 1);
    const float w = load_f<PT>(p.w[l], int64_t(h) * C + c), dwp = row[c], dbp = row[C];
    dg += w * dwp;
    db += w * dbp;
    if (d.w[l] != nullptr) static_cast<PT*>(d.w[l])[int64_t(h) * C + c] = from_f<PT>(gam * dwp + bet * dbp);
  }
  if (d.gamma[l] != nullptr) static_cast<PT*>(d.gamma[l])[c] = from_f<PT>(dg);
  if (d.beta[l] != nullptr) static_cast<PT*>(d.beta[l])[c] = from_f<PT>(db);
}

// f(integral_constant<int, C>) for the C the kernels are built for
template <class F>
void dispatch_c(int C, F&& f) {
  switch (C) {
    case 16: f(std::integral_constant<int, 16>{}); return;
    case 32: f(std::integral_constant<int, 32>{}); return;
    case 64: f(std::integral_constant<int, 64>{}); return;
    case 128: f(std::integral_constant<int, 128>{}); return;
    default: break;
  }
  PF_FAIL("pair_bias_layers: no kernel for C = " << C << " channels (16, 32, 64 or 128)");
}

template <int C, class T>
size_t forward_smem() {
  using S = PbShape<C>;
  return ((kPbOut + 16 * kPbWarps) * S::kPitch + kPbWarps * kPbOut * S::kOutPitch) * sizeof(T);
}
template <int C, class T>
size_t backward_smem() {
  using S = PbShape<C>;
  return ((kPbOut + 16 * kPbWarps) * S::kPitch + kPbOut * S::kDyPitch) * sizeof(T) +
         16 * kPbWarps * sizeof(float);
}

size_t w_aug_bytes(ScalarType zt, int C) {
  return size_t(kPbOut) * (C + 16) * (zt == ScalarType::F32 ? 4 : 2);
}

void check_layers(const PairBiasLayerParams& p, int C, int H, const char* what) {
  PF_CHECK(p.L >= 1 && p.L <= kPairBiasLayersMaxLayers && H >= 1 && int64_t(p.L) * H <= kPbOut,
           what << ": " << p.L << " layers of " << H << " heads: 1 <= L·H <= " << kPbOut << " expected");
  PF_CHECK(C == 16 || C == 32 || C == 64 || C == 128,
           what << ": C = " << C << " (16, 32, 64 or 128 expected)");
}

template <class T>
void fold(ScalarType pt, const PairBiasLayerParams& p, T* w_aug, int C, int H) {
  const int K = C + 16, n = kPbOut * K;
  dispatch_dtype(pt, "pair_bias_layers (parameters)", [&](auto q) {
    using PT = decltype(q);
    pair_bias_layers_fold_kernel<T, PT>
        <<<(n + 255) / 256, 256, 0, cur_stream()>>>(p, w_aug, C, K, H, p.L * H);
    PF_CUDA_CHECK_LAUNCH("pair_bias_layers_fold_kernel");
  });
}

}  // namespace

bool pair_bias_layers_fits(ScalarType zt, int C, int H, int L) {
  return (zt == ScalarType::F32 || zt == ScalarType::BF16) && (C == 16 || C == 32 || C == 64 || C == 128) &&
         L >= 1 && L <= kPairBiasLayersMaxLayers && H >= 1 && int64_t(L) * H <= kPbOut;
}

size_t pair_bias_layers_workspace_bytes(ScalarType zt, int C) {
  return w_aug_bytes(zt, C) +
         (size_t(kPbBlocks) * kPbOut * (C + 1) + size_t(kPbOut) * (C + 1)) * sizeof(float);
}

void pair_bias_layers_forward(ScalarType zt, ScalarType pt, const void* z, const PairBiasLayerParams& p,
                              void* out, int64_t B, int64_t N, int64_t M, int C, int H, double eps,
                              void* workspace) {
  check_layers(p, C, H, "pair_bias_layers_forward");
  const int64_t rows = B * N * M;
  if (rows == 0) return;
  dispatch_dtype(zt, "pair_bias_layers", [&](auto t) {
    using T = decltype(t);
    T* w_aug = static_cast<T*>(workspace);
    fold<T>(pt, p, w_aug, C, H);
    dispatch_c(C, [&](auto cc) {
      constexpr int CC = decltype(cc)::value;
      auto kernel = pair_bias_layers_forward_kernel<T, CC>;
      const size_t smem = forward_smem<CC, T>();
      allow_smem(kernel, smem);
      int per_sm = 0;
      PF_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * kPbWarps, smem));
      const int64_t tiles = (rows + 15) / 16;
      const int sms = sm_count();
      const int64_t blocks =
          std::min<int64_t>((tiles + kPbWarps - 1) / kPbWarps, int64_t(std::max(per_sm, 1)) * sms);
      kernel<<<static_cast<unsigned>(blocks), 32 * kPbWarps, smem, cur_stream()>>>(
          static_cast<const T*>(z), w_aug, static_cast<T*>(out), rows, PlaneRows{N * M, B, H}, p.L * H,
          static_cast<float>(eps));
      PF_CUDA_CHECK_LAUNCH("pair_bias_layers_forward_kernel");
    });
  });
}

void pair_bias_layers_backward(ScalarType zt, ScalarType pt, const void* g, const void* z,
                               const PairBiasLayerParams& p, const PairBiasLayerGrads& d, void* dz, int64_t B,
                               int64_t N, int64_t M, int C, int H, double eps, bool accumulate_dz,
                               void* workspace) {
  check_layers(p, C, H, "pair_bias_layers_backward");
  const int64_t rows = B * N * M;
  const int O = p.L * H;
  dispatch_dtype(zt, "pair_bias_layers", [&](auto t) {
    using T = decltype(t);
    T* w_aug = static_cast<T*>(workspace);
    float* partial = reinterpret_cast<float*>(static_cast<char*>(workspace) + w_aug_bytes(zt, C));
    float* sum = partial + size_t(kPbBlocks) * kPbOut * (C + 1);
    fold<T>(pt, p, w_aug, C, H);
    const int64_t steps = (rows + 16 * kPbWarps - 1) / (16 * kPbWarps);
    const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(steps, kPbBlocks)));
    dispatch_c(C, [&](auto cc) {
      constexpr int CC = decltype(cc)::value;
      auto kernel = pair_bias_layers_backward_kernel<T, CC>;
      const size_t smem = backward_smem<CC, T>();
      allow_smem(kernel, smem);
      kernel<<<blocks, 32 * kPbWarps, smem, cur_stream()>>>(
          static_cast<const T*>(g), static_cast<const T*>(z), w_aug, static_cast<T*>(dz), partial, rows,
          PlaneRows{N * M, B, H}, O, static_cast<float>(eps), accumulate_dz);
      PF_CUDA_CHECK_LAUNCH("pair_bias_layers_backward_kernel");
    });
    // rows == 0: the kernel's blocks write zero partial sums
    const int n = O * (C + 1);
    pair_bias_layers_sum_kernel<<<(n + 255) / 256, 256, 0, cur_stream()>>>(partial, blocks, O, C, sum);
    PF_CUDA_CHECK_LAUNCH("pair_bias_layers_sum_kernel");
    dispatch_dtype(pt, "pair_bias_layers (parameters)", [&](auto q) {
      using PT = decltype(q);
      pair_bias_layers_unfold_kernel<PT>
          <<<(p.L * C + 127) / 128, 128, 0, cur_stream()>>>(p, d, sum, p.L, H, C);
      PF_CUDA_CHECK_LAUNCH("pair_bias_layers_unfold_kernel");
    });
  });
}

}  // namespace pf::kernels::cuda
