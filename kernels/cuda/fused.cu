#include "kernels/cuda/fused.h"

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/flash_bias_warp.cuh"  // cp.async, ldmatrix, mma.sync (embedding_sum backward)

namespace pf::kernels::cuda {

namespace {

// One pair (one row of z, C values) per thread: rows are C·2 or C·4 bytes (64 or 128 at C = 32),
// read with 16-byte loads; the H outputs of a row go to H planes of the (B,H,N,M) bias, where
// consecutive threads (consecutive j) write consecutive addresses.
constexpr int kThreads = 128;
constexpr int kMaxBlocksFwd = 2048;
// The backward's grid: every block leaves one partial row of (dW, dγ, dβ) in the workspace;
// 4 blocks per SM on H100 stream z at full rate and keep the final sum short.
constexpr int kMaxBlocksBwd = 528;

// Parameters come as fp32 or bf16; the kernels read them once per block into shared memory.
__device__ __forceinline__ float load_param(const void* p, bool bf, int i) {
  return bf ? __bfloat162float(static_cast<const bf16*>(p)[i]) : static_cast<const float*>(p)[i];
}

// v[0..CM) = row p[0..C) in fp32, zero past C. 16-byte loads when the row is exactly CM wide
// and aligned (CM is a multiple of 8, so rows of bf16 and fp32 both split evenly).
template <class T, int CM>
__device__ __forceinline__ void load_row(const T* p, int C, float (&v)[CM]) {
  constexpr int kPer = 16 / sizeof(T);
  if (C == CM && reinterpret_cast<uintptr_t>(p) % 16 == 0) {
#pragma unroll
    for (int k = 0; k < CM / kPer; ++k) {
      const uint4 u = reinterpret_cast<const uint4*>(p)[k];
      const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
      for (int q = 0; q < kPer; ++q) v[k * kPer + q] = to_f(e[q]);
    }
  } else {
#pragma unroll
    for (int c = 0; c < CM; ++c) v[c] = c < C ? to_f(p[c]) : 0.f;
  }
}

template <int B>
struct VecOf;
template <>
struct VecOf<16> {
  using type = uint4;
};
template <>
struct VecOf<8> {
  using type = uint2;
};
template <>
struct VecOf<4> {
  using type = unsigned;
};
template <>
struct VecOf<2> {
  using type = unsigned short;
};

// The widest load (≤ 16 bytes) that splits K elements of T evenly.
template <class T, int K>
__host__ __device__ constexpr int lane_vec_bytes() {
  constexpr int b = K * int(sizeof(T));
  return b % 16 == 0 ? 16 : b % 8 == 0 ? 8 : b % 4 == 0 ? 4 : int(sizeof(T));
}

// p[0..n) = v[0..n), one rounding to T; the widest stores (≤ 16 bytes) that split K evenly when
// the row is exactly K wide and aligned.
template <class T, int K>
__device__ __forceinline__ void store_row(T* p, int n, const float (&v)[K]) {
  constexpr int V = lane_vec_bytes<T, K>(), kPer = V / int(sizeof(T));
  using Vec = typename VecOf<V>::type;
  if (n == K && reinterpret_cast<uintptr_t>(p) % V == 0) {
#pragma unroll
    for (int k = 0; k < K / kPer; ++k) {
      Vec u;
      T* e = reinterpret_cast<T*>(&u);
#pragma unroll
      for (int q = 0; q < kPer; ++q) e[q] = from_f<T>(v[k * kPer + q]);
      reinterpret_cast<Vec*>(p)[k] = u;
    }
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (k < n) p[k] = from_f<T>(v[k]);
  }
}

// x ← x̂ = (x − μ)·r over the first C entries (entries past C become −μ·r and must meet zero
// weights); returns r. Two-pass statistics, as kernels/cuda/layernorm.cu.
template <int CM>
__device__ __forceinline__ float normalise(float (&x)[CM], int C, float eps) {
  float s = 0;
#pragma unroll
  for (int c = 0; c < CM; ++c) s += x[c];  // zeros past C
  const float mu = s / C;
  float v = 0;
#pragma unroll
  for (int c = 0; c < CM; ++c)
    if (c < C) v += (x[c] - mu) * (x[c] - mu);
  const float r = rsqrtf(v / C + eps);
#pragma unroll
  for (int c = 0; c < CM; ++c) x[c] = (x[c] - mu) * r;
  return r;
}

// out[b,h,i,j] = Σ_c (W[h,c]·γ[c])·x̂[c] + Σ_c W[h,c]·β[c]   (= Σ_c W[h,c]·n[c])
template <class T, int CM, int HM>
__global__ void __launch_bounds__(kThreads)
    pair_bias_forward_kernel(const T* z, const void* gamma, const void* beta, const void* w, bool pbf, T* out,
                             int64_t rows, int64_t NM, int C, int H, float eps) {
  __shared__ __align__(16) float wg[HM][CM];  // W·γ, zero past (H, C)
  __shared__ float wb[HM];                    // W·β
  for (int i = threadIdx.x; i < HM * CM; i += blockDim.x) {
    const int h = i / CM, c = i % CM;
    wg[h][c] = h < H && c < C ? load_param(w, pbf, h * C + c) * load_param(gamma, pbf, c) : 0.f;
  }
  if (threadIdx.x < HM) {
    float s = 0;
    if (static_cast<int>(threadIdx.x) < H)
      for (int c = 0; c < C; ++c) s += load_param(w, pbf, threadIdx.x * C + c) * load_param(beta, pbf, c);
    wb[threadIdx.x] = s;
  }
  __syncthreads();
  for (int64_t row = blockIdx.x * int64_t(kThreads) + threadIdx.x; row < rows;
       row += int64_t(gridDim.x) * kThreads) {
    // A compiler-only fence: without it the H·C weight reads are hoisted out of the loop into
    // registers (255 registers and spills at C = 32, H = 8); per row they are broadcast reads.
    asm volatile("" ::: "memory");
    float x[CM];
    load_row<T, CM>(z + row * C, C, x);
    normalise<CM>(x, C, eps);
    const int64_t b = row / NM, ij = row - b * NM;
    T* o = out + b * H * NM + ij;
#pragma unroll
    for (int h = 0; h < HM; ++h) {
      if (h >= H) break;
      float acc = wb[h];
#pragma unroll
      for (int c = 0; c < CM; ++c) acc += wg[h][c] * x[c];
      o[h * NM] = from_f<T>(acc);
    }
  }
}

// The backward, one tile of kThreads rows at a time:
//  1. each thread takes its row: x̂ and r from z, dy[h] from g, dn = Wᵀ·dy, and writes dz;
//  2. the tile's dy, x̂ and dn go to shared memory, and thread (group k, column c) adds the rows
//     k, k + G, ... (G = kThreads / C groups) into its dW[·,c], dγ[c], dβ[c] registers;
//  3. at the end the groups' sums are added in group order: one partial row per block.
template <class T, int CM, int HM>
__global__ void __launch_bounds__(kThreads)
    pair_bias_backward_kernel(const T* g, const T* z, const void* gamma, const void* beta, const void* w,
                              bool pbf, T* dz, bool accumulate, float* partial, int64_t rows, int64_t NM,
                              int C, int H, float eps) {
  __shared__ __align__(16) float s_w[HM][CM];  // zero past (H, C)
  __shared__ float s_gam[CM], s_bet[CM];
  extern __shared__ float smem[];
  float* s_dy = smem;                       // [kThreads][HM]
  float* s_xh = s_dy + kThreads * HM;       // [kThreads][C + 1] (padded: no bank conflicts)
  float* s_dn = s_xh + kThreads * (C + 1);  // [kThreads][C + 1]
  for (int i = threadIdx.x; i < HM * CM; i += blockDim.x) {
    const int h = i / CM, c = i % CM;
    s_w[h][c] = h < H && c < C ? load_param(w, pbf, h * C + c) : 0.f;
  }
  for (int c = threadIdx.x; c < CM; c += blockDim.x) {
    s_gam[c] = c < C ? load_param(gamma, pbf, c) : 0.f;
    s_bet[c] = c < C ? load_param(beta, pbf, c) : 0.f;
  }
  __syncthreads();
  const bool want_params = partial != nullptr;
  const int G = kThreads / C, my_c = threadIdx.x % C, my_grp = threadIdx.x / C;
  float aw[HM], ag = 0, ab = 0;
#pragma unroll
  for (int h = 0; h < HM; ++h) aw[h] = 0;
  for (int64_t base = blockIdx.x * int64_t(kThreads); base < rows; base += int64_t(gridDim.x) * kThreads) {
    asm volatile("" ::: "memory");  // keeps the weight reads in the loop (as in the forward)
    const int64_t row = base + threadIdx.x;
    float x[CM], dn[CM], dy[HM], r = 0;
    if (row < rows) {
      load_row<T, CM>(z + row * C, C, x);
      r = normalise<CM>(x, C, eps);
      const int64_t b = row / NM, ij = row - b * NM;
      const T* gr = g + b * H * NM + ij;
#pragma unroll
      for (int h = 0; h < HM; ++h) dy[h] = h < H ? to_f(gr[h * NM]) : 0.f;
#pragma unroll
      for (int c = 0; c < CM; ++c) {
        float s = 0;
#pragma unroll
        for (int h = 0; h < HM; ++h) s += dy[h] * s_w[h][c];
        dn[c] = s;
      }
    } else {
#pragma unroll
      for (int c = 0; c < CM; ++c) x[c] = dn[c] = 0;
#pragma unroll
      for (int h = 0; h < HM; ++h) dy[h] = 0;
    }
    if (want_params) {  // the previous tile's readers are past the barrier at the loop's end
#pragma unroll
      for (int h = 0; h < HM; ++h) s_dy[threadIdx.x * HM + h] = dy[h];
#pragma unroll
      for (int c = 0; c < CM; ++c)
        if (c < C) {
          s_xh[threadIdx.x * (C + 1) + c] = x[c];
          s_dn[threadIdx.x * (C + 1) + c] = dn[c];
        }
    }
    if (dz && row < rows) {
      // dx̂ = dn·γ (in dn's registers), rounded once (no FMA into the subtraction): with C = 1
      // dz is exactly 0.
      float s1 = 0, s2 = 0;
#pragma unroll
      for (int c = 0; c < CM; ++c) {
        dn[c] = __fmul_rn(dn[c], s_gam[c]);  // zero past C
        s1 += dn[c];
        s2 += dn[c] * x[c];
      }
      const float m1 = s1 / C, m2 = s2 / C;
#pragma unroll
      for (int c = 0; c < CM; ++c) dn[c] = r * (dn[c] - m1 - x[c] * m2);
      if (accumulate) {  // dz += (x is no longer needed)
        load_row<T, CM>(dz + row * C, C, x);
#pragma unroll
        for (int c = 0; c < CM; ++c) dn[c] += x[c];
      }
      store_row<T, CM>(dz + row * C, C, dn);
    }
    if (!want_params) continue;
    __syncthreads();
    if (my_grp < G) {
      const float gam = s_gam[my_c], bet = s_bet[my_c];
      for (int rr = my_grp; rr < kThreads; rr += G) {
        const float xv = s_xh[rr * (C + 1) + my_c], dv = s_dn[rr * (C + 1) + my_c];
        const float nv = xv * gam + bet;
#pragma unroll
        for (int h = 0; h < HM; ++h) aw[h] += s_dy[rr * HM + h] * nv;
        ag += dv * xv;
        ab += dv;
      }
    }
    __syncthreads();
  }
  if (!want_params) return;
  // The groups' sums, added in group order: red[k][o], o over (dW (H·C) | dγ (C) | dβ (C)).
  // G·P ≤ kThreads·(H + 2) floats fit in the tile buffers.
  const int P = H * C + 2 * C;
  float* red = smem;
  if (my_grp < G) {
#pragma unroll
    for (int h = 0; h < HM; ++h)
      if (h < H) red[my_grp * P + h * C + my_c] = aw[h];
    red[my_grp * P + H * C + my_c] = ag;
    red[my_grp * P + H * C + C + my_c] = ab;
  }
  __syncthreads();
  for (int o = threadIdx.x; o < P; o += blockDim.x) {
    float s = 0;
    for (int k = 0; k < G; ++k) s += red[k * P + o];
    partial[int64_t(blockIdx.x) * P + o] = s;
  }
}

// dW, dγ, dβ: output o is the fixed-order sum over the blocks' partial rows (one block per o).
template <class P>
__global__ void pair_bias_param_sum_kernel(const float* partial, int blocks, int H, int C, P* dw, P* dgamma,
                                           P* dbeta) {
  const int NP = H * C + 2 * C, o = blockIdx.x;
  double s = 0;
  for (int k = threadIdx.x; k < blocks; k += blockDim.x) s += partial[int64_t(k) * NP + o];
  s = block_sum(s);
  if (threadIdx.x != 0) return;
  if (o < H * C) {
    if (dw) dw[o] = from_f<P>(static_cast<float>(s));
  } else if (o < H * C + C) {
    if (dgamma) dgamma[o - H * C] = from_f<P>(static_cast<float>(s));
  } else if (dbeta) {
    dbeta[o - H * C - C] = from_f<P>(static_cast<float>(s));
  }
}

// ---- pair_bias of any width: channels in chunks of kChunk, heads in groups of kHeadGroup ------
//
// The kernels above keep a whole row (C values) and its H outputs in registers, which caps them
// at kPairBiasMaxC / kPairBiasMaxH. Past that, up to C = 256, the lane-group kernels below take
// a row per 16 or 32 lanes. Past those the same maths runs with the row in chunks of kChunk
// channels (re-read from z, which a block's 128 rows keep in L1) and the weights for all (H, C)
// in dynamic shared memory; shared memory is then the only limit (pair_bias_fits).
constexpr int kChunk = 32;
constexpr int kHeadGroup = 64;  // forward accumulators per thread (one pass over z per group)

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Mean and 1/σ of the row p[0..C), two passes over its chunks (as normalise above).
template <class T>
__device__ __forceinline__ void row_stats(const T* p, int C, float eps, float& mu, float& r) {
  float x[kChunk], s = 0;
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    load_row<T, kChunk>(p + c0, min(kChunk, C - c0), x);
#pragma unroll
    for (int c = 0; c < kChunk; ++c) s += x[c];  // zeros past C
  }
  mu = s / C;
  float v = 0;
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    load_row<T, kChunk>(p + c0, min(kChunk, C - c0), x);
#pragma unroll
    for (int c = 0; c < kChunk; ++c)
      if (c0 + c < C) v += (x[c] - mu) * (x[c] - mu);
  }
  r = rsqrtf(v / C + eps);
}

// x ← x̂ of the chunk p[c0..c0 + kChunk) of a row, zero past C.
template <class T>
__device__ __forceinline__ void load_normalised(const T* p, int c0, int C, float mu, float r,
                                                float (&x)[kChunk]) {
  load_row<T, kChunk>(p + c0, min(kChunk, C - c0), x);
#pragma unroll
  for (int c = 0; c < kChunk; ++c) x[c] = c0 + c < C ? (x[c] - mu) * r : 0.f;
}

// Shared memory of the wide kernels, in floats.
size_t chunked(int C) { return (size_t(C) + kChunk - 1) / kChunk * kChunk; }
size_t wide_forward_smem_floats(int C, int H) { return size_t(H) * chunked(C) + H; }
size_t wide_backward_smem_floats(int C, int H) {
  const size_t Cp = chunked(C);
  return size_t(H) * Cp + 2 * Cp                // W, γ, β
         + size_t(kThreads) * (H | 1)           // dy of the tile's rows
         + 2 * size_t(kThreads) * (kChunk + 1)  // x̂ and dn of the tile's rows, one chunk
         + size_t(H) * C + 2 * size_t(C);       // the block's sums of dW, dγ, dβ
}

// out[b,h,i,j] = Σ_c (W[h,c]·γ[c])·x̂[c] + Σ_c W[h,c]·β[c], as pair_bias_forward_kernel.
template <class T>
__global__ void __launch_bounds__(kThreads)
    pair_bias_forward_wide_kernel(const T* z, const void* gamma, const void* beta, const void* w, bool pbf,
                                  T* out, int64_t rows, int64_t NM, int C, int H, float eps) {
  extern __shared__ __align__(16) float smem[];
  const int Cp = round_up(C, kChunk);
  float* wg = smem;         // [H][Cp]: W·γ, zero past C
  float* wb = wg + H * Cp;  // [H]: W·β
  for (int i = threadIdx.x; i < H * Cp; i += blockDim.x) {
    const int h = i / Cp, c = i % Cp;
    wg[i] = c < C ? load_param(w, pbf, h * C + c) * load_param(gamma, pbf, c) : 0.f;
  }
  for (int h = threadIdx.x; h < H; h += blockDim.x) {
    float s = 0;
    for (int c = 0; c < C; ++c) s += load_param(w, pbf, h * C + c) * load_param(beta, pbf, c);
    wb[h] = s;
  }
  __syncthreads();
  for (int64_t row = blockIdx.x * int64_t(kThreads) + threadIdx.x; row < rows;
       row += int64_t(gridDim.x) * kThreads) {
    const T* zr = z + row * C;
    float mu, r;
    row_stats(zr, C, eps, mu, r);
    const int64_t b = row / NM, ij = row - b * NM;
    T* o = out + b * H * NM + ij;
    for (int h0 = 0; h0 < H; h0 += kHeadGroup) {
      const int hn = min(kHeadGroup, H - h0);
      float acc[kHeadGroup];
#pragma unroll
      for (int h = 0; h < kHeadGroup; ++h) acc[h] = h < hn ? wb[h0 + h] : 0.f;
      for (int c0 = 0; c0 < C; c0 += kChunk) {
        float x[kChunk];
        load_normalised(zr, c0, C, mu, r, x);
        const float* wr = wg + h0 * Cp + c0;
#pragma unroll
        for (int h = 0; h < kHeadGroup; ++h) {
          if (h >= hn) break;
#pragma unroll
          for (int c = 0; c < kChunk; ++c) acc[h] += wr[h * Cp + c] * x[c];
        }
      }
#pragma unroll
      for (int h = 0; h < kHeadGroup; ++h) {
        if (h >= hn) break;
        o[(h0 + h) * NM] = from_f<T>(acc[h]);
      }
    }
  }
}

// The backward of any width. Per tile of kThreads rows (thread t → row base + t):
//  1. thread t: μ, r of its row and dy[h] = g[b,h,i,j] into s_dy;
//  2. per chunk of kChunk channels: thread t computes x̂ and dn = Wᵀ·dy of its row there and adds
//     its dz sums s1 = Σ dn·γ, s2 = Σ dn·γ·x̂; with parameter gradients wanted the chunk's x̂ and
//     dn go to shared memory and each entry of (dW[·, chunk] | dγ[chunk] | dβ[chunk]) is summed
//     over the tile's rows, in row order, by the one thread that owns it into the block's sums;
//  3. thread t writes dz of its row chunk by chunk (x̂ and dn recomputed).
// At the end the block's sums are its partial row (pair_bias_param_sum_kernel adds the blocks).
template <class T>
__global__ void __launch_bounds__(kThreads)
    pair_bias_backward_wide_kernel(const T* g, const T* z, const void* gamma, const void* beta, const void* w,
                                   bool pbf, T* dz, bool accumulate, float* partial, int64_t rows, int64_t NM,
                                   int C, int H, float eps) {
  extern __shared__ __align__(16) float smem[];
  const int Cp = round_up(C, kChunk), Hs = H | 1;  // Hs odd: thread t's s_dy row, no conflicts
  constexpr int Xs = kChunk + 1;
  float* s_w = smem;                   // [H][Cp], zero past C
  float* s_gam = s_w + H * Cp;         // [Cp]
  float* s_bet = s_gam + Cp;           // [Cp]
  float* s_dy = s_bet + Cp;            // [kThreads][Hs]
  float* s_xh = s_dy + kThreads * Hs;  // [kThreads][Xs]
  float* s_dn = s_xh + kThreads * Xs;  // [kThreads][Xs]
  float* acc = s_dn + kThreads * Xs;   // [H·C | C | C]: dW, dγ, dβ of this block
  const int P = H * C + 2 * C;
  const bool want_params = partial != nullptr;
  for (int i = threadIdx.x; i < H * Cp; i += blockDim.x) {
    const int h = i / Cp, c = i % Cp;
    s_w[i] = c < C ? load_param(w, pbf, h * C + c) : 0.f;
  }
  for (int c = threadIdx.x; c < Cp; c += blockDim.x) {
    s_gam[c] = c < C ? load_param(gamma, pbf, c) : 0.f;
    s_bet[c] = c < C ? load_param(beta, pbf, c) : 0.f;
  }
  if (want_params)
    for (int o = threadIdx.x; o < P; o += blockDim.x) acc[o] = 0;
  __syncthreads();
  float* my_dy = s_dy + threadIdx.x * Hs;
  // dn[c] = Σ_h dy[h]·W[h, c0 + c]
  auto project = [&](int c0, float(&dn)[kChunk]) {
#pragma unroll
    for (int c = 0; c < kChunk; ++c) dn[c] = 0;
    for (int h = 0; h < H; ++h) {
      const float d = my_dy[h];
      const float* wr = s_w + h * Cp + c0;
#pragma unroll
      for (int c = 0; c < kChunk; ++c) dn[c] += d * wr[c];
    }
  };
  for (int64_t base = blockIdx.x * int64_t(kThreads); base < rows; base += int64_t(gridDim.x) * kThreads) {
    const int64_t row = base + threadIdx.x;
    const bool valid = row < rows;
    const T* zr = z + (valid ? row : 0) * C;
    float mu = 0, r = 0;
    if (valid) {
      row_stats(zr, C, eps, mu, r);
      const int64_t b = row / NM, ij = row - b * NM;
      const T* gr = g + b * H * NM + ij;
      for (int h = 0; h < H; ++h) my_dy[h] = to_f(gr[h * NM]);
    } else {
      for (int h = 0; h < H; ++h) my_dy[h] = 0;  // adds nothing to dW, dγ, dβ
    }
    float s1 = 0, s2 = 0;
    for (int c0 = 0; c0 < C; c0 += kChunk) {
      float x[kChunk], dn[kChunk];
      if (valid) {
        load_normalised(zr, c0, C, mu, r, x);
      } else {
#pragma unroll
        for (int c = 0; c < kChunk; ++c) x[c] = 0;
      }
      project(c0, dn);
#pragma unroll
      for (int c = 0; c < kChunk; ++c) {
        const float dxh = __fmul_rn(dn[c], s_gam[c0 + c]);  // zero past C
        s1 += dxh;
        s2 += dxh * x[c];
      }
      if (!want_params) continue;
#pragma unroll
      for (int c = 0; c < kChunk; ++c) {
        s_xh[threadIdx.x * Xs + c] = x[c];
        s_dn[threadIdx.x * Xs + c] = dn[c];
      }
      __syncthreads();
      // Entry e = k·kChunk + cc of the chunk: k < H → dW[k, c0 + cc], k = H → dγ, k = H+1 → dβ.
      for (int e = threadIdx.x; e < (H + 2) * kChunk; e += blockDim.x) {
        const int k = e / kChunk, cc = e % kChunk, c = c0 + cc;
        if (c >= C) continue;
        float s = 0;
        if (k < H) {
          const float gam = s_gam[c], bet = s_bet[c];
          for (int rr = 0; rr < kThreads; ++rr) s += s_dy[rr * Hs + k] * (s_xh[rr * Xs + cc] * gam + bet);
          acc[k * C + c] += s;
        } else if (k == H) {
          for (int rr = 0; rr < kThreads; ++rr) s += s_dn[rr * Xs + cc] * s_xh[rr * Xs + cc];
          acc[H * C + c] += s;
        } else {
          for (int rr = 0; rr < kThreads; ++rr) s += s_dn[rr * Xs + cc];
          acc[H * C + C + c] += s;
        }
      }
      __syncthreads();  // the chunk's readers are done before the next chunk (or tile) writes
    }
    if (!dz || !valid) continue;
    const float m1 = s1 / C, m2 = s2 / C;
    for (int c0 = 0; c0 < C; c0 += kChunk) {
      float x[kChunk], dn[kChunk];
      load_normalised(zr, c0, C, mu, r, x);
      project(c0, dn);
#pragma unroll
      for (int c = 0; c < kChunk; ++c) dn[c] = r * (__fmul_rn(dn[c], s_gam[c0 + c]) - m1 - x[c] * m2);
      if (accumulate) {  // dz += (x is no longer needed)
        load_row<T, kChunk>(dz + row * C + c0, min(kChunk, C - c0), x);
#pragma unroll
        for (int c = 0; c < kChunk; ++c) dn[c] += x[c];
      }
      store_row<T, kChunk>(dz + row * C + c0, min(kChunk, C - c0), dn);
    }
  }
  if (!want_params) return;
  __syncthreads();
  for (int o = threadIdx.x; o < P; o += blockDim.x) partial[int64_t(blockIdx.x) * P + o] = acc[o];
}

// ---- pair_bias with a group of L lanes per row (C up to 256) ----------------------------------
//
// The wide kernels above give a row of C > 64 channels to one thread: z is re-read chunk by
// chunk (3–4 times per call) and the parameter sums go through shared memory entry by entry.
// These give a row to L = 16 or 32 lanes of a warp instead; lane q of its group holds the K
// channels qK .. qK + K − 1 (one coalesced 8/16-byte load per lane: the group reads the row in
// one go), so z is read once per call, forward and backward:
//  - μ, 1/σ (two-pass) and the backward's s1 = Σ dx̂, s2 = Σ dx̂·x̂ are sums over the group's lanes
//    (shuffles, log₂L steps each);
//  - the forward's H dot products Σ_c W[h,c]·n[c] are reduced over the group by a
//    reduce-scatter (log₂H exchange steps halving the values each lane holds, then log₂(L/H)
//    plain steps: H − 1 + log₂(L/H) shuffles instead of H·log₂L), leaving head h in lanes whose
//    bits say h; the results of a warp's 32 rows go through shared memory and leave as H
//    coalesced stores;
//  - the backward loads dy (H values per row, strided by N·M in g) for 32 consecutive rows at
//    once, lane l taking row base + l, and broadcasts them to the row's group by shuffles; each
//    lane adds dW[h, its channels] += dy[h]·n, dγ += dn·x̂, dβ += dn in registers over every row
//    its group takes, and the block leaves one partial row as the other kernels do.
// W (·γ in the forward) for a lane's channels stays in registers (H·K values); in the backward,
// where H·K passes kPbLaneWRegs, W is read from shared memory (one 16-byte read per head and row)
// and only dW stays in registers.
// 4 warps, each taking 32 consecutive rows at a time: with the forward's ~150 registers 3 blocks
// (12 warps) fit an SM where 2 of 8 warps would not; the backward (~250) runs 2 (8 warps).
constexpr int kPbLaneThreads = 128;
constexpr int kPbLaneWRegs = 64;  // W values per lane kept in registers by the backward

// A lane's K elements of T as loaded, in 32-bit words (bf16: element k in the low or high half of
// word k/2): the prefetch buffers hold these, for bf16 half the registers of the fp32 values.
template <class T, int K>
struct LaneRaw {
  static_assert(K * sizeof(T) % 8 == 0, "a lane loads 8 or 16 bytes at a time");
  unsigned w[K * sizeof(T) / 4];
};

__device__ __forceinline__ unsigned elem_bits(float x) { return __float_as_uint(x); }
__device__ __forceinline__ unsigned elem_bits(bf16 x) { return __bfloat16_as_ushort(x); }

// p[0..n) as loaded, zero past n (n = the lane's channels inside the row, 0..K).
template <class T, int K>
__device__ __forceinline__ LaneRaw<T, K> load_raw(const T* p, int n) {
  constexpr int V = lane_vec_bytes<T, K>(), kWordsPerVec = V / 4;
  using Vec = typename VecOf<V>::type;
  LaneRaw<T, K> r;
  if (n == K && reinterpret_cast<uintptr_t>(p) % V == 0) {
#pragma unroll
    for (int i = 0; i < K * int(sizeof(T)) / V; ++i) {
      const Vec u = reinterpret_cast<const Vec*>(p)[i];
#pragma unroll
      for (int j = 0; j < kWordsPerVec; ++j)
        r.w[i * kWordsPerVec + j] = reinterpret_cast<const unsigned*>(&u)[j];
    }
  } else {
    constexpr int kPerWord = 4 / int(sizeof(T));
#pragma unroll
    for (int j = 0; j < K / kPerWord; ++j) r.w[j] = 0;
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (k < n) r.w[k / kPerWord] |= elem_bits(p[k]) << (32 / kPerWord * (k % kPerWord));
  }
  return r;
}

// x[0..K) = the values of r in fp32.
template <class T, int K>
__device__ __forceinline__ void unpack(const LaneRaw<T, K>& r, float (&x)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if constexpr (sizeof(T) == 4)
      x[k] = __uint_as_float(r.w[k]);
    else
      x[k] = __uint_as_float(k % 2 == 0 ? r.w[k / 2] << 16 : r.w[k / 2] & 0xffff0000u);
  }
}

// x ← x̂ of one row held by an L-lane group (K channels per lane, n of them inside the row, the
// rest zero); returns r = 1/σ. Two-pass statistics (as normalise above); x̂ is zero past C.
template <int L, int K>
__device__ __forceinline__ float normalise_lanes(float (&x)[K], int n, int C, float eps) {
  float s = 0;
#pragma unroll
  for (int k = 0; k < K; ++k) s += x[k];
  const float mu = warp_sum(s, L) / C;
  float v = 0;
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (k < n) v += (x[k] - mu) * (x[k] - mu);
  const float r = rsqrtf(warp_sum(v, L) / C + eps);
#pragma unroll
  for (int k = 0; k < K; ++k) x[k] = k < n ? (x[k] - mu) * r : 0.f;
  return r;
}

// Runs a warp over its rows: batches of 32 consecutive rows at base = (block·warps + warp)·32,
// + grid·warps·32, ...; in each batch, iteration it gives the lane's group row
// base + it·(32/L) + lane/L. Calls begin(base), row(base, it, x) for every iteration with x this
// lane's K values of z (zero past the rows and past C), end(base). z is loaded D iterations ahead
// (across batches too): D rows per group stay in flight while one is computed.
template <class T, int L, int K, int D, class Begin, class Row, class End>
__device__ __forceinline__ void for_each_warp_row(const T* z, int64_t rows, int C, int c0, int n,
                                                  Begin&& begin, Row&& row, End&& end) {
  constexpr int kWarps = kPbLaneThreads / 32, NIT = L;  // iterations per batch: 32 rows, 32/L a time
  static_assert(NIT % D == 0, "the prefetch depth divides a batch");
  const int lane = threadIdx.x % 32;
  const int64_t step = int64_t(gridDim.x) * kWarps * 32;
  const int64_t first = (int64_t(blockIdx.x) * kWarps + threadIdx.x / 32) * 32;
  auto fetch = [&](int64_t base, int it) {
    const int64_t r = base + it * (32 / L) + lane / L;
    return r < rows ? load_raw<T, K>(z + r * C + c0, n) : LaneRaw<T, K>{};
  };
  LaneRaw<T, K> buf[D];  // buf[p]: iteration ≡ p (mod D)
#pragma unroll
  for (int p = 0; p < D; ++p) buf[p] = fetch(first, p);
  for (int64_t base = first; base < rows; base += step) {
    begin(base);
#pragma unroll 1
    for (int it0 = 0; it0 < NIT; it0 += D) {
#pragma unroll
      for (int p = 0; p < D; ++p) {
        const int it = it0 + p;
        float x[K];
        unpack(buf[p], x);
        buf[p] = it + D < NIT ? fetch(base, it + D) : fetch(base + step, it + D - NIT);
        row(base, it, x);
      }
    }
    end(base);
  }
}

// The prefetch depth: 64 bytes of z per lane in flight (4 rows of bf16 at C = 128), fewer where
// the registers are short.
template <class T, int K>
__host__ __device__ constexpr int lane_prefetch(int bytes = 64) {
  const int d = bytes / (K * int(sizeof(T)));
  return d >= 4 ? 4 : d >= 2 ? 2 : 1;
}

// One exchange step of reduce_scatter: lanes whose bit O is set keep a[N/2..N), the others
// a[0..N/2); each sends the other half to its partner (lane ^ O) and adds what it receives.
// Templates rather than loops: every index stays a compile-time constant (registers, no stack).
template <int N, int O, int HM>
__device__ __forceinline__ void scatter_step(float (&a)[HM], int lane, int& mine) {
  if constexpr (N > 1) {
    const bool upper = (lane & O) != 0;
#pragma unroll
    for (int j = 0; j < N / 2; ++j) {
      const float send = upper ? a[j] : a[j + N / 2];
      const float keep = upper ? a[j + N / 2] : a[j];
      a[j] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
    if (upper) mine += N / 2;
    scatter_step<N / 2, O / 2>(a, lane, mine);
  } else {
#pragma unroll
    for (int o = O; o > 0; o /= 2) a[0] += __shfl_xor_sync(0xffffffffu, a[0], o);  // plain sums
  }
}

// Sums a[0..HM) over the L lanes of each group: on return a[0] holds the group's sum of head
// *h, the same in the L/HM lanes whose low bits are the group's (HM ≤ L, both powers of two).
template <int L, int HM>
__device__ __forceinline__ void reduce_scatter(float (&a)[HM], int lane, int* h) {
  static_assert(HM <= L && (HM & (HM - 1)) == 0 && (L & (L - 1)) == 0, "powers of two, HM <= L");
  int mine = 0;
  scatter_step<HM, L / 2>(a, lane, mine);
  *h = mine;
}

// out[b,h,i,j] = Σ_c (W[h,c]·γ[c])·x̂[c] + Σ_c W[h,c]·β[c]   (as pair_bias_forward_kernel)
template <class T, int L, int K, int HM>
__global__ void __launch_bounds__(kPbLaneThreads)
    pair_bias_forward_lanes_kernel(const T* z, const void* gamma, const void* beta, const void* w, bool pbf,
                                   T* out, int64_t rows, int64_t NM, int C, int H, float eps) {
  constexpr int R = 32 / L, kWarps = kPbLaneThreads / 32;
  __shared__ float s_out[kWarps][HM][33];  // a warp's 32 rows of output, per head
  __shared__ float s_wb[HM];               // W·β (zero past H)
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, q = lane % L;
  const int c0 = q * K, n = max(0, min(K, C - c0));  // this lane's channels
  for (int h = warp; h < HM; h += kWarps) {          // a warp per head: C/32 loads per lane, not C
    float s = 0;
    if (h < H)
      for (int c = lane; c < C; c += 32) s += load_param(w, pbf, h * C + c) * load_param(beta, pbf, c);
    s = warp_sum(s);
    if (lane == 0) s_wb[h] = s;
  }
  float wg[HM][K];  // W·γ, zero past (H, C)
#pragma unroll
  for (int h = 0; h < HM; ++h)
#pragma unroll
    for (int k = 0; k < K; ++k)
      wg[h][k] = h < H && k < n ? load_param(w, pbf, h * C + c0 + k) * load_param(gamma, pbf, c0 + k) : 0.f;
  __syncthreads();
  for_each_warp_row<T, L, K, lane_prefetch<T, K>()>(
      z, rows, C, c0, n, [](int64_t) {},
      [&](int64_t, int it, float(&x)[K]) {
        const int t = it * R + lane / L;  // the row of the batch this lane's group takes
        normalise_lanes<L, K>(x, n, C, eps);
        float acc[HM];  // W·β enters once per group, through its first lane
#pragma unroll
        for (int h = 0; h < HM; ++h) {
          float s = q == 0 ? s_wb[h] : 0.f;
#pragma unroll
          for (int k = 0; k < K; ++k) s += wg[h][k] * x[k];
          acc[h] = s;
        }
        int h;
        reduce_scatter<L, HM>(acc, lane, &h);
        if ((lane & (L / HM - 1)) == 0) s_out[warp][h][t] = acc[0];
      },
      [&](int64_t base) {
        __syncwarp();
        const int64_t row = base + lane;
        if (row < rows) {
          const int64_t b = row / NM, ij = row - b * NM;
          T* o = out + b * H * NM + ij;
          for (int h = 0; h < H; ++h) o[h * NM] = from_f<T>(s_out[warp][h][lane]);
        }
        __syncwarp();  // s_out is read before the next batch writes it
      });
}

// The backward (kernels/cpu/fused.h derives it). Per row, in its group: x̂, r; dy by shuffle;
// dn = Wᵀ·dy; dW += dy ⊗ n, dγ += dn·x̂, dβ += dn in the lanes' registers; dz = r·(dx̂ − mean(dx̂)
// − x̂·mean(dx̂·x̂)), dx̂ = dn·γ, written or added (accumulate). At the end the lanes that hold the
// same channels, then the warps, add their sums in a fixed order into the block's partial row.
// WS: W in shared memory (H·K past kPbLaneWRegs), else in registers.
template <class T, int L, int K, int HM, bool WS>
__global__ void __launch_bounds__(kPbLaneThreads)
    pair_bias_backward_lanes_kernel(const T* g, const T* z, const void* gamma, const void* beta,
                                    const void* w, bool pbf, T* dz, bool accumulate, float* partial,
                                    int64_t rows, int64_t NM, int C, int H, float eps) {
  constexpr int R = 32 / L, kWarps = kPbLaneThreads / 32, CP = L * K;
  static_assert(WS || HM * K <= kPbLaneWRegs, "W past the register budget belongs in shared memory");
  extern __shared__ __align__(16) float smem[];  // WS: W, γ, β; at the end: the block's sums
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, q = lane % L;
  const int c0 = q * K, n = max(0, min(K, C - c0));
  const bool want_params = partial != nullptr;
  // W[h, c0 + k], γ, β (zero past (H, C)): registers, or (WS) shared memory [HM][CP] | γ | β.
  float wr[WS ? 1 : HM][K], gam_r[WS ? 1 : K], bet_r[WS ? 1 : K];
  const float* s_gam = smem + HM * CP;
  const float* s_bet = s_gam + CP;
  if (WS) {
    for (int i = threadIdx.x; i < HM * CP; i += blockDim.x) {
      const int h = i / CP, c = i % CP;
      smem[i] = h < H && c < C ? load_param(w, pbf, h * C + c) : 0.f;
    }
    for (int c = threadIdx.x; c < CP; c += blockDim.x) {
      smem[HM * CP + c] = c < C ? load_param(gamma, pbf, c) : 0.f;
      smem[HM * CP + CP + c] = c < C ? load_param(beta, pbf, c) : 0.f;
    }
    __syncthreads();
  } else {
#pragma unroll
    for (int h = 0; h < (WS ? 1 : HM); ++h)
#pragma unroll
      for (int k = 0; k < K; ++k) wr[h][k] = h < H && k < n ? load_param(w, pbf, h * C + c0 + k) : 0.f;
#pragma unroll
    for (int k = 0; k < (WS ? 1 : K); ++k) {
      gam_r[k] = k < n ? load_param(gamma, pbf, c0 + k) : 0.f;
      bet_r[k] = k < n ? load_param(beta, pbf, c0 + k) : 0.f;
    }
  }
  auto gam = [&](int k) { return WS ? s_gam[c0 + k] : gam_r[WS ? 0 : k]; };
  auto bet = [&](int k) { return WS ? s_bet[c0 + k] : bet_r[WS ? 0 : k]; };
  float aw[HM][K], ag[K], ab[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    ag[k] = ab[k] = 0;
#pragma unroll
    for (int h = 0; h < HM; ++h) aw[h][k] = 0;
  }
  float dyl[HM];  // dy of row base + lane of the current batch (zero past H and past the rows)
  constexpr int kDepth = lane_prefetch<T, K>(WS ? 32 : 64);
  for_each_warp_row<T, L, K, kDepth>(
      z, rows, C, c0, n,
      [&](int64_t base) {
        const int64_t row = base + lane;
        const int64_t b = row / NM, ij = row - b * NM;
        const T* gr = g + b * H * NM + ij;
#pragma unroll
        for (int h = 0; h < HM; ++h) dyl[h] = h < H && row < rows ? to_f(gr[h * NM]) : 0.f;
      },
      [&](int64_t base, int it, float(&x)[K]) {
        const int t = it * R + lane / L;
        const int64_t row = base + t;
        const bool valid = row < rows;
        // The old dz (accumulate), issued first: its latency hides behind the maths.
        const LaneRaw<T, K> old =
            dz && accumulate && valid ? load_raw<T, K>(dz + row * C + c0, n) : LaneRaw<T, K>{};
        float r = normalise_lanes<L, K>(x, n, C, eps);
        if (!valid) {  // past the rows: x̂ = 0 and dy = 0 add nothing (even with eps = 0)
          r = 0;
#pragma unroll
          for (int k = 0; k < K; ++k) x[k] = 0;
        }
        float dn[K], nk[K];  // dn = Wᵀ·dy, n = x̂·γ + β
#pragma unroll
        for (int k = 0; k < K; ++k) {
          dn[k] = 0;
          nk[k] = x[k] * gam(k) + bet(k);
        }
#pragma unroll
        for (int h = 0; h < HM; ++h) {
          const float dyh = __shfl_sync(0xffffffffu, dyl[h], t);  // dy[h] of the group's row
          if (want_params)
#pragma unroll
            for (int k = 0; k < K; ++k) aw[h][k] += dyh * nk[k];
          if (WS) {
            static_assert(!WS || K % 4 == 0, "W rows in shared memory are read 4 channels at a time");
#pragma unroll
            for (int k = 0; k < K; k += 4) {
              const float4 v = *reinterpret_cast<const float4*>(smem + h * CP + c0 + k);
              dn[k] += dyh * v.x;
              dn[k + 1] += dyh * v.y;
              dn[k + 2] += dyh * v.z;
              dn[k + 3] += dyh * v.w;
            }
          } else {
#pragma unroll
            for (int k = 0; k < K; ++k) dn[k] += dyh * wr[WS ? 0 : h][k];
          }
        }
        if (want_params)
#pragma unroll
          for (int k = 0; k < K; ++k) {
            ag[k] += dn[k] * x[k];
            ab[k] += dn[k];
          }
        if (!dz) return;
        // dx̂ = dn·γ rounded once (no FMA into the subtraction: with C = 1, dz is exactly 0).
        float s1 = 0, s2 = 0;
#pragma unroll
        for (int k = 0; k < K; ++k) {
          dn[k] = __fmul_rn(dn[k], gam(k));  // zero past C
          s1 += dn[k];
          s2 += dn[k] * x[k];
        }
        const float m1 = warp_sum(s1, L) / C, m2 = warp_sum(s2, L) / C;
        if (!valid) return;
        float o[K];
        unpack(old, o);
#pragma unroll
        for (int k = 0; k < K; ++k) dn[k] = o[k] + r * (dn[k] - m1 - x[k] * m2);
        store_row<T, K>(dz + row * C + c0, n, dn);
      },
      [](int64_t) {});
  if (!want_params) return;
    // The R lanes of a warp that hold the same channels add up (lane q first), then the warps in
    // order: red[o], o over (dW (H·C) | dγ (C) | dβ (C)).
#pragma unroll
  for (int o = L; o < 32; o *= 2)
#pragma unroll
    for (int k = 0; k < K; ++k) {
      ag[k] += __shfl_down_sync(0xffffffffu, ag[k], o);
      ab[k] += __shfl_down_sync(0xffffffffu, ab[k], o);
#pragma unroll
      for (int h = 0; h < HM; ++h) aw[h][k] += __shfl_down_sync(0xffffffffu, aw[h][k], o);
    }
  const int P = H * C + 2 * C;
  float* red = smem;
  __syncthreads();  // (WS: every warp is done reading W)
  for (int v = 0; v < kWarps; ++v) {
    if (warp == v && lane < L)
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (k >= n) break;
        const int c = c0 + k;
        red[H * C + c] = v == 0 ? ag[k] : red[H * C + c] + ag[k];
        red[H * C + C + c] = v == 0 ? ab[k] : red[H * C + C + c] + ab[k];
#pragma unroll
        for (int h = 0; h < HM; ++h)
          if (h < H) red[h * C + c] = v == 0 ? aw[h][k] : red[h * C + c] + aw[h][k];
      }
    __syncthreads();
  }
  for (int o = threadIdx.x; o < P; o += blockDim.x) partial[int64_t(blockIdx.x) * P + o] = red[o];
}

// The lane-group kernels' shape for (C, H): L lanes per row, K channels per lane, HM heads, W in
// shared memory (ws); L = 0 where none takes (C, H). The first that fits, fewest lanes first (fewer
// shuffles per row), H·K ≤ kPbLaneWRegs before W in shared memory.
struct LaneShape {
  int L, K, HM;
  bool ws;
};
constexpr LaneShape kLaneShapes[] = {
    {16, 8, 8, false}, {32, 4, 16, false}, {32, 8, 8, false}, {32, 4, 32, true}, {32, 8, 16, true}};
LaneShape lane_shape(int C, int H) {
  for (const LaneShape& s : kLaneShapes)
    if (C <= s.L * s.K && H <= s.HM) return s;
  return {0, 0, 0, false};
}

// Calls f(integral constants L, K, HM, WS) for lane_shape(C, H) (which must take (C, H)).
template <class F>
void dispatch_lanes(int C, int H, F&& f) {
  const LaneShape s = lane_shape(C, H);
  using std::integral_constant;
  if (s.L == 16)
    f(integral_constant<int, 16>{}, integral_constant<int, 8>{}, integral_constant<int, 8>{},
      integral_constant<bool, false>{});
  else if (s.K == 4 && s.HM == 16)
    f(integral_constant<int, 32>{}, integral_constant<int, 4>{}, integral_constant<int, 16>{},
      integral_constant<bool, false>{});
  else if (s.K == 8 && s.HM == 8)
    f(integral_constant<int, 32>{}, integral_constant<int, 8>{}, integral_constant<int, 8>{},
      integral_constant<bool, false>{});
  else if (s.K == 4)
    f(integral_constant<int, 32>{}, integral_constant<int, 4>{}, integral_constant<int, 32>{},
      integral_constant<bool, true>{});
  else
    f(integral_constant<int, 32>{}, integral_constant<int, 8>{}, integral_constant<int, 16>{},
      integral_constant<bool, true>{});
}

// Dynamic shared memory of the lane-group backward: W (ws) and the block's sums, in bytes.
size_t lanes_backward_smem_bytes(int C, int H) {
  const LaneShape s = lane_shape(C, H);
  const size_t w = s.ws ? size_t(s.HM + 2) * s.L * s.K : 0;  // W, γ, β
  return std::max(w, size_t(H) * C + 2 * size_t(C)) * sizeof(float);
}

bool is_narrow(int C, int H) { return C <= kPairBiasMaxC && H <= kPairBiasMaxH; }

int64_t backward_blocks(int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>((rows + kThreads - 1) / kThreads, kMaxBlocksBwd));
}

// Which kernels take (C, H): the register kernels, the lane-group kernels, else the wide ones.
bool takes_lanes(int C, int H) { return !is_narrow(C, H) && lane_shape(C, H).L != 0; }

size_t pair_bias_smem_bytes(int C, int H) {
  return is_narrow(C, H)     ? 0
         : takes_lanes(C, H) ? lanes_backward_smem_bytes(C, H)
                             : wide_backward_smem_floats(C, H) * sizeof(float);
}

void check_sizes(int C, int H, const char* what) {
  PF_CHECK(C >= 1 && H >= 1,
           what << ": needs C >= 1 channels and H >= 1 heads, got C = " << C << ", H = " << H);
  PF_CHECK(pair_bias_fits(C, H),
           what << ": C = " << C << " channels and H = " << H << " heads need " << pair_bias_smem_bytes(C, H)
                << " bytes of shared memory per block, the device "
                << "allows " << max_smem_bytes() << " (ops::pair_bias runs the unfused chain)");
}

// Calls f(std::integral_constant<int, CM>{}, std::integral_constant<int, HM>{}) for the
// smallest compiled (CM, HM) that holds (C, H).
template <class F>
void dispatch_width(int C, int H, F&& f) {
  auto with_h = [&](auto cm) {
    if (H <= 8)
      f(cm, std::integral_constant<int, 8>{});
    else
      f(cm, std::integral_constant<int, 16>{});
  };
  if (C <= 16)
    with_h(std::integral_constant<int, 16>{});
  else if (C <= 32)
    with_h(std::integral_constant<int, 32>{});
  else
    with_h(std::integral_constant<int, 64>{});
}

bool param_is_bf16(ScalarType pt, const char* what) {
  PF_CHECK(pt == ScalarType::F32 || pt == ScalarType::BF16,
           what << ": parameters must be float32 or bfloat16, got " << scalar_type_name(pt));
  return pt == ScalarType::BF16;
}

// ---- embedding_sum ---------------------------------------------------------------------------

constexpr int kEsMaxTableFloats = 12288;  // a warp's tile of the tables: 48 KB of shared memory
// 3 per SM on H100 (12 warps with the large config's 16.5 KB tables; 2 per SM left its backward
// latency-bound at 8 rows in flight per warp); the partial tables to add stay few.
constexpr int kEsMaxBlocks = 396;
constexpr int64_t kEsMaxPartialFloats = int64_t{1} << 25;  // 128 MiB of per-block partial tables
// The backward re-reads g once per row tile: past 8 row tiles of 32 columns (3072 table rows)
// the unfused chain (ops::embedding's backward, made for large tables) is the better tool.
constexpr int kEsMaxRows = 8 * (kEsMaxTableFloats / 32);
constexpr int kEsRowsPerStep = 16;  // rows a warp loads before adding them (loads in flight)

template <class T>
__device__ __forceinline__ float load_any(const T* p, int64_t i) {
  return to_f(p[i]);
}

// One output element per thread: out[r, c] = A[ia[r], c] + B[ib[r mod S], c].
template <class TT, class OT>
__global__ void embedding_sum_forward_kernel(const TT* a, const int32_t* ia, const TT* b, const int32_t* ib,
                                             OT* out, int64_t rows, int64_t S, int D, int Va, int Vb) {
  const int64_t n = rows * D;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / D;
    const int c = static_cast<int>(e - r * D);
    const int va = ia[r], vb = ib[r % S];
    const float v = va >= 0 && va < Va && vb >= 0 && vb < Vb
                        ? load_any(a, int64_t(va) * D + c) + load_any(b, int64_t(vb) * D + c)
                        : __int_as_float(0x7fc00000);  // NaN: an index outside its table
    out[e] = from_f<OT>(v);
  }
}

// Each warp owns a private tile (Vt rows × Dt columns) of the stacked (Va + Vb, D) table [A; B]
// in shared memory and adds its rows into it in row order, lane l taking columns d0 + l,
// d0 + l + 32, ...: no two lanes touch one address, no atomics. The block's warps are then added
// in warp order into the block's partial table (layout (Va + Vb, D), this tile's part of it).
// blockIdx.y picks the tile: row tile blockIdx.y / column tiles, column tile blockIdx.y % column
// tiles. Tables of the pair-bias model are one tile (Vt = Va + Vb, Dt = D).
template <class GT>
__global__ void embedding_sum_backward_kernel(const GT* g, const int32_t* ia, const int32_t* ib,
                                              float* partial, int64_t rows, int64_t S, int D, int Va, int Vb,
                                              int64_t rows_per_block, int Vt, int Dt) {
  extern __shared__ float tables[];  // [warps][Vt·Dt]
  const int V = Va + Vb, col_tiles = (D + Dt - 1) / Dt;
  const int v0 = (blockIdx.y / col_tiles) * Vt, d0 = (blockIdx.y % col_tiles) * Dt;
  const int vn = min(Vt, V - v0), dn = min(Dt, D - d0);
  const int P = Vt * Dt, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  for (int i = threadIdx.x; i < warps * P; i += blockDim.x) tables[i] = 0;
  __syncthreads();
  float* acc = tables + warp * P;
  const int64_t begin = blockIdx.x * rows_per_block;
  const int64_t end = min(rows, begin + rows_per_block);
  // Warp w takes steps of kEsRowsPerStep consecutive rows, every warps-th step.
  for (int64_t r0 = begin + int64_t(warp) * kEsRowsPerStep; r0 < end; r0 += int64_t(warps) * kEsRowsPerStep) {
    int va[kEsRowsPerStep], vb[kEsRowsPerStep];  // rows of the tile, −1 = none
    int64_t rb = r0 % S;                         // row r0 + k reads ib[(r0 + k) mod S]
#pragma unroll
    for (int k = 0; k < kEsRowsPerStep; ++k) {
      const int64_t r = r0 + k;
      const bool in = r < end;
      const int a = in ? ia[r] : -1, b = in ? ib[rb] : -1;
      rb = rb + 1 == S ? 0 : rb + 1;
      va[k] = a >= 0 && a < Va && a - v0 >= 0 && a - v0 < vn ? a - v0 : -1;
      vb[k] = b >= 0 && b < Vb && Va + b - v0 >= 0 && Va + b - v0 < vn ? Va + b - v0 : -1;
    }
    for (int c = lane; c < dn; c += 32) {
      float v[kEsRowsPerStep];
#pragma unroll
      for (int k = 0; k < kEsRowsPerStep; ++k) v[k] = r0 + k < end ? load_any(g, (r0 + k) * D + d0 + c) : 0.f;
#pragma unroll
      for (int k = 0; k < kEsRowsPerStep; ++k) {  // in row order
        if (va[k] >= 0) acc[va[k] * Dt + c] += v[k];
        if (vb[k] >= 0) acc[vb[k] * Dt + c] += v[k];
      }
    }
  }
  __syncthreads();
  for (int o = threadIdx.x; o < vn * dn; o += blockDim.x) {
    const int v = o / dn, c = o % dn;
    float s = 0;
    for (int w = 0; w < warps; ++w) s += tables[w * P + v * Dt + c];
    partial[int64_t(blockIdx.x) * V * D + int64_t(v0 + v) * D + d0 + c] = s;
  }
}

// dA, dB: output o is the fixed-order sum over the blocks' partial tables (one block per o).
template <class TT>
__global__ void embedding_sum_table_sum_kernel(const float* partial, int blocks, int Va, int D, TT* da,
                                               TT* db) {
  const int P = gridDim.x, o = blockIdx.x;
  double s = 0;
  for (int k = threadIdx.x; k < blocks; k += blockDim.x) s += partial[int64_t(k) * P + o];
  s = block_sum(s);
  if (threadIdx.x != 0) return;
  if (o < Va * D) {
    if (da) da[o] = from_f<TT>(static_cast<float>(s));
  } else if (db) {
    db[o - Va * D] = from_f<TT>(static_cast<float>(s));
  }
}

// The tile of the stacked (V = Va + Vb, D) table one block adds into: the whole table when it
// fits a warp's kEsMaxTableFloats, else columns in multiples of 32 (whole rows of the table),
// else 32 columns and as many rows as fit.
struct EsTile {
  int Vt, Dt, tiles;
};
EsTile es_tile(int D, int Va, int Vb) {
  const int64_t V = int64_t(Va) + Vb;
  EsTile t{};
  if (V * D <= kEsMaxTableFloats) {
    t.Vt = static_cast<int>(V);
    t.Dt = D;
  } else if (V * 32 <= kEsMaxTableFloats) {
    t.Vt = static_cast<int>(V);
    t.Dt = static_cast<int>(kEsMaxTableFloats / V / 32 * 32);
  } else {
    t.Dt = std::min(D, 32);
    t.Vt = kEsMaxTableFloats / t.Dt;
  }
  const int64_t tiles = (V + t.Vt - 1) / t.Vt * ((D + t.Dt - 1) / t.Dt);
  t.tiles = static_cast<int>(std::min<int64_t>(tiles, INT32_MAX));
  return t;
}

// Blocks over the rows: 2 per SM, fewer where the partial tables (one (V, D) table per block)
// would pass kEsMaxPartialFloats.
int es_blocks(int64_t rows, int D, int Va, int Vb) {
  const int64_t table = (int64_t(Va) + Vb) * D;
  const int64_t by_rows = std::min<int64_t>((rows + 1023) / 1024, kEsMaxBlocks);
  return static_cast<int>(std::max<int64_t>(1, std::min(by_rows, kEsMaxPartialFloats / table)));
}

void es_check(int D, int Va, int Vb, const char* what) {
  PF_CHECK(D >= 1 && Va >= 1 && Vb >= 1, what << ": needs D >= 1 and tables of >= 1 row, got Va = " << Va
                                              << ", Vb = " << Vb << ", D = " << D);
}

// ---- embedding_sum backward on the tensor cores (16-bit g) -----------------------------------
//
// The stacked table gradient is a one-hot GEMM: with E the (V × rows) matrix whose column r has
// ones at rows ia[r] and Va + ib[r mod S] (V = Va + Vb; an index outside its table gives no one),
//   [dA; dB] = E · g    M = V, N = D, K = rows.
// E is never stored: each warp builds its m16n8k16 A fragments from the step's 16 indices in
// registers (1.0 and 0.0 are exact in bf16 and fp16, so every product is an exact g value) and
// takes g, the B operand, from shared memory with ldmatrix.trans. A block streams consecutive
// 64-row tiles of g (128 columns, blockIdx.y picks them) through a kEsMmaStages-deep cp.async
// ring; warp w owns columns 16w … 16w + 15 and holds the accumulators of every m-tile of them.
// Consecutive rows have neighbouring distances and relative positions, so a 16-row step touches
// a few m-tiles of the table; the warp skips the others (a warp-uniform mask of the step's rows).
// Each block writes its fp32 partial table; embedding_sum_table_sum_kernel adds them in order.
constexpr int kEsMmaRows = 64;   // rows of g per stage (4 k-steps of 16)
constexpr int kEsMmaCols = 128;  // columns of g per block: 8 warps of 16
constexpr int kEsMmaThreads = kEsMmaCols / 16 * 32;
constexpr int kEsMmaStages = 4;              // 3 tiles (48 KB) in flight per block, 2 blocks per SM
constexpr int kEsMmaPitch = kEsMmaCols + 8;  // ldmatrix rows 272 bytes apart: no bank conflicts
constexpr int kEsMmaMaxTiles = 9;            // m-tiles of 16 table rows a warp keeps: 72 accumulators
constexpr int kEsMmaMaxRows = 16 * kEsMmaMaxTiles;
// 2 blocks per SM on H100 and H200 (132 SMs): a constant, so the sums' order (and the result's
// bits) does not depend on the card.
constexpr int kEsMmaBlocks = 264;
constexpr size_t kEsMmaSmemBytes =
    size_t(kEsMmaStages) * (size_t(kEsMmaRows) * kEsMmaPitch * 2 + 2 * kEsMmaRows * sizeof(int32_t));

// The bits of 1.0 in the mma operand type.
template <class GT>
constexpr uint32_t es_one() {
  return std::is_same_v<GT, bf16> ? 0x3F80u : 0x3C00u;
}

// g:(rows, D) 16-byte aligned, D a multiple of 8, Va + Vb ≤ 16·MT → partial:(gridDim.x, Va + Vb, D)
template <class GT, int MT>
__global__ void __launch_bounds__(kEsMmaThreads, 2)
    embedding_sum_backward_mma_kernel(const GT* g, const int32_t* ia, const int32_t* ib, float* partial,
                                      int64_t rows, int64_t S, int D, int Va, int Vb,
                                      int64_t tiles_per_block) {
  extern __shared__ __align__(16) unsigned char es_smem[];
  GT* s_g = reinterpret_cast<GT*>(es_smem);  // [stage][kEsMmaRows][kEsMmaPitch]
  int32_t* s_idx =
      reinterpret_cast<int32_t*>(s_g + kEsMmaStages * kEsMmaRows * kEsMmaPitch);  // [stage][a|b][row]
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int V = Va + Vb, d0 = blockIdx.y * kEsMmaCols, dn = min(kEsMmaCols, D - d0);
  const int64_t n_tiles = (rows + kEsMmaRows - 1) / kEsMmaRows;
  const int64_t t0 = blockIdx.x * tiles_per_block;
  const int64_t count = max(int64_t{0}, min(n_tiles, t0 + tiles_per_block) - t0);

  // Tile t into stage st: thread (row group tid / 16, chunk tid % 16) copies 8 columns of 4 rows;
  // rows past the end become zeros with index −1 (they add nothing). Columns past D stay stale:
  // they meet only the accumulators of columns that are never written out.
  auto load = [&](int64_t t, int st) {
    const int64_t r0 = t * kEsMmaRows;
    GT* s = s_g + st * kEsMmaRows * kEsMmaPitch;
    const int chunk = tid % 16;
    if (chunk * 8 < dn) {
#pragma unroll
      for (int p = 0; p < kEsMmaRows / 16; ++p) {
        const int r = tid / 16 + 16 * p;
        GT* dst = s + r * kEsMmaPitch + chunk * 8;
        if (r0 + r < rows)
          fb::cp_async_16(dst, g + (r0 + r) * D + d0 + chunk * 8);
        else
          *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
      }
    }
    if (tid < 2 * kEsMmaRows) {
      const int64_t r = r0 + tid % kEsMmaRows;
      int32_t* dst = s_idx + st * 2 * kEsMmaRows + tid;
      if (r >= rows)
        *dst = -1;
      else if (tid < kEsMmaRows)
        fb::cp_async_4(dst, ia + r);
      else
        fb::cp_async_4(dst, ib + r % S);
    }
  };

  float acc[MT][2][4] = {};
  const bool active = warp * 16 < dn;  // a warp whose 16 columns all lie past D only copies
  const int gq = lane / 4, tq = lane % 4;
  constexpr uint32_t one = es_one<GT>();
#pragma unroll
  for (int st = 0; st < kEsMmaStages - 1; ++st) {
    if (st < count) load(t0 + st, st);
    fb::cp_async_commit();
  }
  for (int64_t i = 0; i < count; ++i) {
    fb::cp_async_wait<kEsMmaStages - 2>();
    __syncthreads();  // tile i is in; every warp is done with tile i − 1, whose stage is refilled
    if (i + kEsMmaStages - 1 < count) load(t0 + i + kEsMmaStages - 1, (i + kEsMmaStages - 1) % kEsMmaStages);
    fb::cp_async_commit();
    if (!active) continue;
    const int st = static_cast<int>(i % kEsMmaStages);
    const GT* s = s_g + st * kEsMmaRows * kEsMmaPitch;
    const int32_t* si = s_idx + st * 2 * kEsMmaRows;
#pragma unroll
    for (int ks = 0; ks < kEsMmaRows / 16; ++ks) {
      // This lane's A fragment rows are k = 2tq, 2tq + 1, 2tq + 8, 2tq + 9 of the step: their
      // stacked table rows (−1: none) and the m-tiles any row of the step touches.
      int ra[4], rb[4];
      uint32_t mask = 0;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int k = 16 * ks + 2 * tq + (q & 1) + 8 * (q >> 1);
        const int a = si[k], b = si[kEsMmaRows + k];
        ra[q] = static_cast<unsigned>(a) < static_cast<unsigned>(Va) ? a : -1;
        rb[q] = static_cast<unsigned>(b) < static_cast<unsigned>(Vb) ? Va + b : -1;
        if (ra[q] >= 0) mask |= 1u << (ra[q] / 16);
        if (rb[q] >= 0) mask |= 1u << (rb[q] / 16);
      }
      mask = __reduce_or_sync(0xffffffffu, mask);
      // B fragments of both n8 tiles: matrices (k 0-7 | 8-15) × (n 0-7 | 8-15), rows of g.
      uint32_t bf[4];
      fb::ldsm_x4_t(bf, s + (16 * ks + lane % 16) * kEsMmaPitch + 16 * warp + (lane / 16) * 8);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if (!(mask >> mt & 1u)) continue;
        const int m = 16 * mt + gq;
        auto e = [&](int q, int row) { return ra[q] == row || rb[q] == row ? one : 0u; };
        // A[m][k] = E[m][k]: a0 (m, k 2tq..+1), a1 (m + 8, same k), a2 (m, k + 8), a3 (m + 8, k + 8)
        const uint32_t a[4] = {e(0, m) | e(1, m) << 16, e(0, m + 8) | e(1, m + 8) << 16,
                               e(2, m) | e(3, m) << 16, e(2, m + 8) | e(3, m + 8) << 16};
        fb::mma_16816<GT>(acc[mt][0], a, bf[0], bf[1]);
        fb::mma_16816<GT>(acc[mt][1], a, bf[2], bf[3]);
      }
    }
  }
  if (!active) return;
  // Accumulator (m-tile mt, n-tile nt): rows 16mt + gq (+ 8), columns 8nt + 2tq, + 1.
  float* out = partial + int64_t(blockIdx.x) * V * D;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int c = d0 + 16 * warp + 8 * nt + 2 * tq;
      if (c >= D) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int m = 16 * mt + gq + 8 * h;
        if (m < V)
          *reinterpret_cast<float2*>(out + int64_t(m) * D + c) =
              make_float2(acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
      }
    }
}

// The tensor-core backward's grid: blockIdx.x takes consecutive runs of tiles_per_block row tiles
// (kEsMmaBlocks / column tiles of them, fewer where the partial tables would pass
// kEsMaxPartialFloats), blockIdx.y the column tiles of kEsMmaCols.
struct EsMmaGrid {
  int blocks, col_tiles;
  int64_t tiles_per_block;
};
EsMmaGrid es_mma_grid(int64_t rows, int D, int Va, int Vb) {
  const int col_tiles = (D + kEsMmaCols - 1) / kEsMmaCols;
  const int64_t n_tiles = std::max<int64_t>(1, (rows + kEsMmaRows - 1) / kEsMmaRows);
  const int64_t table = (int64_t(Va) + Vb) * D;
  const int64_t want = std::min<int64_t>(
      {n_tiles, std::max(1, kEsMmaBlocks / col_tiles), std::max<int64_t>(1, kEsMaxPartialFloats / table)});
  const int64_t per = (n_tiles + want - 1) / want;
  return {static_cast<int>((n_tiles + per - 1) / per), col_tiles, per};
}

// Calls f(T{}) with the mma operand type of 16-bit g: bf16 for BF16, __half for F16.
template <class F>
void dispatch_16bit(ScalarType t, F&& f) {
  if (t == ScalarType::BF16)
    f(bf16{});
  else
    f(__half{});
}
}  // namespace

bool pair_bias_fits(int C, int H) {
  return C >= 1 && H >= 1 && (is_narrow(C, H) || pair_bias_smem_bytes(C, H) <= max_smem_bytes());
}

void pair_bias_forward(ScalarType zt, ScalarType pt, const void* z, const void* gamma, const void* beta,
                       const void* w, void* out, int64_t B, int64_t N, int64_t M, int C, int H, double eps) {
  check_sizes(C, H, "pair_bias_forward");
  const bool pbf = param_is_bf16(pt, "pair_bias_forward");
  const int64_t rows = B * N * M;
  if (rows == 0) return;
  const unsigned grid =
      static_cast<unsigned>(std::min<int64_t>((rows + kThreads - 1) / kThreads, kMaxBlocksFwd));
  dispatch_dtype(zt, "pair_bias_forward", [&](auto t) {
    using T = decltype(t);
    if (takes_lanes(C, H)) {
      dispatch_lanes(C, H, [&](auto l, auto k, auto hm, auto) {
        constexpr int L = decltype(l)::value, K = decltype(k)::value, HM = decltype(hm)::value;
        auto kernel = pair_bias_forward_lanes_kernel<T, L, K, HM>;
        // As many blocks as run at once (each warp then takes an even share of the batches and
        // prefetches across them), fewer for few rows.
        const int sms = sm_count();
        int per_sm = 0;
        PF_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kPbLaneThreads, 0));
        const unsigned lgrid = static_cast<unsigned>(std::max<int64_t>(
            1, std::min<int64_t>((rows + kPbLaneThreads - 1) / kPbLaneThreads, int64_t(sms) * per_sm)));
        kernel<<<lgrid, kPbLaneThreads, 0, cur_stream()>>>(static_cast<const T*>(z), gamma, beta, w, pbf,
                                                           static_cast<T*>(out), rows, N * M, C, H,
                                                           static_cast<float>(eps));
        PF_CUDA_CHECK_LAUNCH("pair_bias_forward_lanes_kernel");
      });
      return;
    }
    if (!is_narrow(C, H)) {
      auto kernel = pair_bias_forward_wide_kernel<T>;
      const size_t smem = wide_forward_smem_floats(C, H) * sizeof(float);
      allow_smem(kernel, smem);
      kernel<<<grid, kThreads, smem, cur_stream()>>>(static_cast<const T*>(z), gamma, beta, w, pbf,
                                                     static_cast<T*>(out), rows, N * M, C, H,
                                                     static_cast<float>(eps));
      PF_CUDA_CHECK_LAUNCH("pair_bias_forward_wide_kernel");
      return;
    }
    dispatch_width(C, H, [&](auto cm, auto hm) {
      pair_bias_forward_kernel<T, decltype(cm)::value, decltype(hm)::value>
          <<<grid, kThreads, 0, cur_stream()>>>(static_cast<const T*>(z), gamma, beta, w, pbf,
                                                static_cast<T*>(out), rows, N * M, C, H,
                                                static_cast<float>(eps));
      PF_CUDA_CHECK_LAUNCH("pair_bias_forward_kernel");
    });
  });
}

size_t pair_bias_backward_workspace_bytes(int64_t B, int64_t N, int64_t M, int C, int H) {
  return static_cast<size_t>(backward_blocks(B * N * M)) * (H * C + 2 * C) * sizeof(float);
}

void pair_bias_backward(ScalarType zt, ScalarType pt, const void* g, const void* z, const void* gamma,
                        const void* beta, const void* w, void* dz, void* dgamma, void* dbeta, void* dw,
                        int64_t B, int64_t N, int64_t M, int C, int H, double eps, bool accumulate_dz,
                        void* workspace) {
  check_sizes(C, H, "pair_bias_backward");
  const bool pbf = param_is_bf16(pt, "pair_bias_backward");
  const int64_t rows = B * N * M;
  const bool want_params = dgamma || dbeta || dw;
  const int NP = H * C + 2 * C;
  if (rows == 0) {  // no pairs: the parameter gradients are zero
    if (dw) memset_zero(dw, size_t(H) * C * (pbf ? 2 : 4));
    if (dgamma) memset_zero(dgamma, size_t(C) * (pbf ? 2 : 4));
    if (dbeta) memset_zero(dbeta, size_t(C) * (pbf ? 2 : 4));
    return;
  }
  const int blocks = static_cast<int>(backward_blocks(rows));
  float* partial = want_params ? static_cast<float*>(workspace) : nullptr;
  dispatch_dtype(zt, "pair_bias_backward", [&](auto t) {
    using T = decltype(t);
    const bool acc = dz != nullptr && accumulate_dz;
    if (takes_lanes(C, H)) {
      dispatch_lanes(C, H, [&](auto l, auto k, auto hm, auto ws) {
        auto kernel = pair_bias_backward_lanes_kernel<T, decltype(l)::value, decltype(k)::value,
                                                      decltype(hm)::value, decltype(ws)::value>;
        const size_t smem = pair_bias_smem_bytes(C, H);
        allow_smem(kernel, smem);
        kernel<<<blocks, kPbLaneThreads, smem, cur_stream()>>>(
            static_cast<const T*>(g), static_cast<const T*>(z), gamma, beta, w, pbf, static_cast<T*>(dz), acc,
            partial, rows, N * M, C, H, static_cast<float>(eps));
        PF_CUDA_CHECK_LAUNCH("pair_bias_backward_lanes_kernel");
      });
      return;
    }
    if (!is_narrow(C, H)) {
      auto kernel = pair_bias_backward_wide_kernel<T>;
      const size_t smem = pair_bias_smem_bytes(C, H);
      allow_smem(kernel, smem);
      kernel<<<blocks, kThreads, smem, cur_stream()>>>(static_cast<const T*>(g), static_cast<const T*>(z),
                                                       gamma, beta, w, pbf, static_cast<T*>(dz), acc, partial,
                                                       rows, N * M, C, H, static_cast<float>(eps));
      PF_CUDA_CHECK_LAUNCH("pair_bias_backward_wide_kernel");
      return;
    }
    dispatch_width(C, H, [&](auto cm, auto hm) {
      constexpr int CM = decltype(cm)::value, HM = decltype(hm)::value;
      auto kernel = pair_bias_backward_kernel<T, CM, HM>;
      const size_t smem = sizeof(float) * (size_t(kThreads) * HM + 2 * size_t(kThreads) * (C + 1));
      allow_smem(kernel, smem);
      kernel<<<blocks, kThreads, smem, cur_stream()>>>(static_cast<const T*>(g), static_cast<const T*>(z),
                                                       gamma, beta, w, pbf, static_cast<T*>(dz), acc, partial,
                                                       rows, N * M, C, H, static_cast<float>(eps));
      PF_CUDA_CHECK_LAUNCH("pair_bias_backward_kernel");
    });
  });
  if (!want_params) return;
  auto sum = [&](auto p) {
    using P = decltype(p);
    pair_bias_param_sum_kernel<P><<<NP, 128, 0, cur_stream()>>>(
        partial, blocks, H, C, static_cast<P*>(dw), static_cast<P*>(dgamma), static_cast<P*>(dbeta));
    PF_CUDA_CHECK_LAUNCH("pair_bias_param_sum_kernel");
  };
  if (pbf)
    sum(bf16{});
  else
    sum(float{});
}

void embedding_sum_forward(ScalarType tt, ScalarType ot, const void* a, const int32_t* ia, const void* b,
                           const int32_t* ib, void* out, int64_t rows, int64_t S, int D, int Va, int Vb) {
  es_check(D, Va, Vb, "embedding_sum_forward");
  PF_CHECK(S >= 1 && rows % S == 0,
           "embedding_sum_forward: " << S << " broadcast indices do not divide " << rows << " rows");
  if (rows == 0) return;
  const unsigned grid = grid_for(rows * D, 256);
  dispatch_dtype(tt, "embedding_sum_forward (tables)", [&](auto t) {
    using TT = decltype(t);
    dispatch_dtype(ot, "embedding_sum_forward (output)", [&](auto o) {
      using OT = decltype(o);
      embedding_sum_forward_kernel<TT, OT>
          <<<grid, 256, 0, cur_stream()>>>(static_cast<const TT*>(a), ia, static_cast<const TT*>(b), ib,
                                           static_cast<OT*>(out), rows, S, D, Va, Vb);
      PF_CUDA_CHECK_LAUNCH("embedding_sum_forward_kernel");
    });
  });
}

bool embedding_sum_fits(int D, int Va, int Vb) {
  return D >= 1 && Va >= 1 && Vb >= 1 && int64_t(Va) + Vb <= kEsMaxRows &&
         (int64_t(Va) + Vb) * D <= INT32_MAX && es_tile(D, Va, Vb).tiles <= 65535;
}

bool embedding_sum_backward_on_tensor_cores(ScalarType gt, int D, int Va, int Vb) {
  return (gt == ScalarType::BF16 || gt == ScalarType::F16) && embedding_sum_fits(D, Va, Vb) && D % 8 == 0 &&
         int64_t(Va) + Vb <= kEsMmaMaxRows && (D + kEsMmaCols - 1) / kEsMmaCols <= 65535;
}

// The larger of the two kernels' partial tables: the dtype of g is not known here.
size_t embedding_sum_backward_workspace_bytes(int64_t rows, int D, int Va, int Vb) {
  int64_t blocks = es_blocks(rows, D, Va, Vb);
  if (embedding_sum_backward_on_tensor_cores(ScalarType::BF16, D, Va, Vb))
    blocks = std::max<int64_t>(blocks, es_mma_grid(rows, D, Va, Vb).blocks);
  return static_cast<size_t>(blocks) * (int64_t(Va) + Vb) * D * sizeof(float);
}

void embedding_sum_backward(ScalarType gt, ScalarType tt, const void* g, const int32_t* ia, const int32_t* ib,
                            void* da, void* db, int64_t rows, int64_t S, int D, int Va, int Vb,
                            void* workspace) {
  es_check(D, Va, Vb, "embedding_sum_backward");
  PF_CHECK(embedding_sum_fits(D, Va, Vb), "embedding_sum_backward: tables of Va + Vb = "
                                              << int64_t(Va) + Vb << " rows of D = " << D
                                              << " are past the kernel's " << kEsMaxRows
                                              << " rows (ops::embedding_sum runs the unfused chain)");
  PF_CHECK(S >= 1 && rows % S == 0,
           "embedding_sum_backward: " << S << " broadcast indices do not divide " << rows << " rows");
  const int P = (Va + Vb) * D;
  float* partial = static_cast<float*>(workspace);
  int blocks = 0;
  if (embedding_sum_backward_on_tensor_cores(gt, D, Va, Vb) && reinterpret_cast<uintptr_t>(g) % 16 == 0) {
    const EsMmaGrid grid = es_mma_grid(rows, D, Va, Vb);
    blocks = grid.blocks;
    dispatch_16bit(gt, [&](auto t) {
      using GT = decltype(t);
      auto kernel = embedding_sum_backward_mma_kernel<GT, kEsMmaMaxTiles>;
      allow_smem(kernel, kEsMmaSmemBytes);
      kernel<<<dim3(grid.blocks, grid.col_tiles), kEsMmaThreads, kEsMmaSmemBytes, cur_stream()>>>(
          static_cast<const GT*>(g), ia, ib, partial, rows, S, D, Va, Vb, grid.tiles_per_block);
      PF_CUDA_CHECK_LAUNCH("embedding_sum_backward_mma_kernel");
    });
  } else {
    const EsTile tile = es_tile(D, Va, Vb);
    blocks = es_blocks(rows, D, Va, Vb);
    const int64_t tile_floats = int64_t(tile.Vt) * tile.Dt;
    // As many warps (≤ 4) as the shared memory holds tiles for.
    const int warps = static_cast<int>(std::min<int64_t>(4, (192 * 1024) / (tile_floats * 4)));
    const size_t smem = size_t(warps) * tile_floats * sizeof(float);
    const int64_t per_block = (rows + blocks - 1) / blocks;
    dispatch_dtype(gt, "embedding_sum_backward", [&](auto t) {
      using GT = decltype(t);
      auto kernel = embedding_sum_backward_kernel<GT>;
      allow_smem(kernel, smem);
      kernel<<<dim3(blocks, tile.tiles), warps * 32, smem, cur_stream()>>>(
          static_cast<const GT*>(g), ia, ib, partial, rows, S, D, Va, Vb, per_block, tile.Vt, tile.Dt);
      PF_CUDA_CHECK_LAUNCH("embedding_sum_backward_kernel");
    });
  }
  dispatch_dtype(tt, "embedding_sum_backward (tables)", [&](auto t) {
    using TT = decltype(t);
    embedding_sum_table_sum_kernel<TT>
        <<<P, 128, 0, cur_stream()>>>(partial, blocks, Va, D, static_cast<TT*>(da), static_cast<TT*>(db));
    PF_CUDA_CHECK_LAUNCH("embedding_sum_table_sum_kernel");
  });
}

}  // namespace pf::kernels::cuda
