#include "kernels/cuda/fused.h"

#include "kernels/cuda/common.cuh"

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

template <class T, int CM>
__device__ __forceinline__ void store_row(T* p, int C, const float (&v)[CM]) {
  constexpr int kPer = 16 / sizeof(T);
  if (C == CM && reinterpret_cast<uintptr_t>(p) % 16 == 0) {
#pragma unroll
    for (int k = 0; k < CM / kPer; ++k) {
      uint4 u;
      T* e = reinterpret_cast<T*>(&u);
#pragma unroll
      for (int q = 0; q < kPer; ++q) e[q] = from_f<T>(v[k * kPer + q]);
      reinterpret_cast<uint4*>(p)[k] = u;
    }
  } else {
#pragma unroll
    for (int c = 0; c < CM; ++c)
      if (c < C) p[c] = from_f<T>(v[c]);
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
    pair_bias_forward_kernel(const T* z, const void* gamma, const void* beta, const void* w,
                             bool pbf, T* out, int64_t rows, int64_t NM, int C, int H, float eps) {
  __shared__ __align__(16) float wg[HM][CM];  // W·γ, zero past (H, C)
  __shared__ float wb[HM];                    // W·β
  for (int i = threadIdx.x; i < HM * CM; i += blockDim.x) {
    const int h = i / CM, c = i % CM;
    wg[h][c] = h < H && c < C ? load_param(w, pbf, h * C + c) * load_param(gamma, pbf, c) : 0.f;
  }
  if (threadIdx.x < HM) {
    float s = 0;
    if (static_cast<int>(threadIdx.x) < H)
      for (int c = 0; c < C; ++c)
        s += load_param(w, pbf, threadIdx.x * C + c) * load_param(beta, pbf, c);
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
    pair_bias_backward_kernel(const T* g, const T* z, const void* gamma, const void* beta,
                              const void* w, bool pbf, T* dz, float* partial, int64_t rows,
                              int64_t NM, int C, int H, float eps) {
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
  for (int64_t base = blockIdx.x * int64_t(kThreads); base < rows;
       base += int64_t(gridDim.x) * kThreads) {
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
__global__ void pair_bias_param_sum_kernel(const float* partial, int blocks, int H, int C, P* dw,
                                           P* dgamma, P* dbeta) {
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

int64_t backward_blocks(int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>((rows + kThreads - 1) / kThreads, kMaxBlocksBwd));
}

void check_sizes(int C, int H, const char* what) {
  PF_CHECK(C >= 1 && C <= kPairBiasMaxC && H >= 1 && H <= kPairBiasMaxH,
           what << ": the CUDA kernel takes 1 <= C <= " << kPairBiasMaxC
                << " channels and 1 <= H <= " << kPairBiasMaxH << " heads, got C = " << C
                << ", H = " << H);
}

// Calls f(std::integral_constant<int, CM>{}, std::integral_constant<int, HM>{}) for the
// smallest compiled (CM, HM) that holds (C, H).
template <class F>
void dispatch_width(int C, int H, F&& f) {
  auto with_h = [&](auto cm) {
    if (H <= 8) f(cm, std::integral_constant<int, 8>{});
    else f(cm, std::integral_constant<int, 16>{});
  };
  if (C <= 16) with_h(std::integral_constant<int, 16>{});
  else if (C <= 32) with_h(std::integral_constant<int, 32>{});
  else with_h(std::integral_constant<int, 64>{});
}

bool param_is_bf16(ScalarType pt, const char* what) {
  PF_CHECK(pt == ScalarType::F32 || pt == ScalarType::BF16,
           what << ": parameters must be float32 or bfloat16, got " << scalar_type_name(pt));
  return pt == ScalarType::BF16;
}


// ---- embedding_sum ---------------------------------------------------------------------------

constexpr int kEsMaxTableFloats = 12288;   // (Va + Vb)·D per warp: 48 KB of shared memory
constexpr int kEsMaxBlocks = 264;          // 2 per SM on H100: partial tables to add stay few
constexpr int kEsRowsPerStep = 8;          // rows a warp loads before adding them (loads in flight)

template <class T>
__device__ __forceinline__ float load_any(const T* p, int64_t i) { return to_f(p[i]); }

// One output element per thread: out[r, c] = A[ia[r], c] + B[ib[r mod S], c].
template <class TT, class OT>
__global__ void embedding_sum_forward_kernel(const TT* a, const int32_t* ia, const TT* b,
                                             const int32_t* ib, OT* out, int64_t rows, int64_t S,
                                             int D, int Va, int Vb) {
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

// Each warp owns a private (Va + Vb, D) table in shared memory and adds its rows into it in
// row order, lane l taking columns l, l + 32, ...: no two lanes touch one address, no atomics.
// The block's warps are then added in warp order into one partial table per block.
template <class GT>
__global__ void embedding_sum_backward_kernel(const GT* g, const int32_t* ia, const int32_t* ib,
                                              float* partial, int64_t rows, int64_t S, int D,
                                              int Va, int Vb, int64_t rows_per_block) {
  extern __shared__ float tables[];  // [warps][(Va + Vb)·D]
  const int P = (Va + Vb) * D, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  for (int i = threadIdx.x; i < warps * P; i += blockDim.x) tables[i] = 0;
  __syncthreads();
  float* acc = tables + warp * P;
  const int64_t begin = blockIdx.x * rows_per_block;
  const int64_t end = min(rows, begin + rows_per_block);
  // Warp w takes steps of kEsRowsPerStep consecutive rows, every warps-th step.
  for (int64_t r0 = begin + int64_t(warp) * kEsRowsPerStep; r0 < end;
       r0 += int64_t(warps) * kEsRowsPerStep) {
    int va[kEsRowsPerStep], vb[kEsRowsPerStep];
#pragma unroll
    for (int k = 0; k < kEsRowsPerStep; ++k) {
      const int64_t r = r0 + k;
      const bool in = r < end;
      va[k] = in ? ia[r] : -1;
      vb[k] = in ? ib[r % S] : -1;
    }
    for (int c = lane; c < D; c += 32) {
      float v[kEsRowsPerStep];
#pragma unroll
      for (int k = 0; k < kEsRowsPerStep; ++k)
        v[k] = r0 + k < end ? load_any(g, (r0 + k) * D + c) : 0.f;
#pragma unroll
      for (int k = 0; k < kEsRowsPerStep; ++k) {  // in row order
        if (va[k] >= 0 && va[k] < Va) acc[va[k] * D + c] += v[k];
        if (vb[k] >= 0 && vb[k] < Vb) acc[(Va + vb[k]) * D + c] += v[k];
      }
    }
  }
  __syncthreads();
  for (int o = threadIdx.x; o < P; o += blockDim.x) {
    float s = 0;
    for (int w = 0; w < warps; ++w) s += tables[w * P + o];
    partial[int64_t(blockIdx.x) * P + o] = s;
  }
}

// dA, dB: output o is the fixed-order sum over the blocks' partial tables (one block per o).
template <class TT>
__global__ void embedding_sum_table_sum_kernel(const float* partial, int blocks, int Va, int D,
                                               TT* da, TT* db) {
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

int es_blocks(int64_t rows) {
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>((rows + 1023) / 1024, kEsMaxBlocks)));
}

void es_check(int D, int Va, int Vb, const char* what) {
  PF_CHECK(D >= 1 && Va >= 1 && Vb >= 1 && int64_t(Va + Vb) * D <= kEsMaxTableFloats,
           what << ": the CUDA kernel keeps both tables per warp in shared memory, (Va + Vb)·D <= "
                << kEsMaxTableFloats << ", got Va = " << Va << ", Vb = " << Vb << ", D = " << D);
}
}  // namespace

void pair_bias_forward(ScalarType zt, ScalarType pt, const void* z, const void* gamma,
                       const void* beta, const void* w, void* out, int64_t B, int64_t N, int64_t M,
                       int C, int H, double eps) {
  check_sizes(C, H, "pair_bias_forward");
  const bool pbf = param_is_bf16(pt, "pair_bias_forward");
  const int64_t rows = B * N * M;
  if (rows == 0) return;
  const unsigned grid = static_cast<unsigned>(
      std::min<int64_t>((rows + kThreads - 1) / kThreads, kMaxBlocksFwd));
  dispatch_dtype(zt, "pair_bias_forward", [&](auto t) {
    using T = decltype(t);
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

void pair_bias_backward(ScalarType zt, ScalarType pt, const void* g, const void* z,
                        const void* gamma, const void* beta, const void* w, void* dz, void* dgamma,
                        void* dbeta, void* dw, int64_t B, int64_t N, int64_t M, int C, int H,
                        double eps, void* workspace) {
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
    dispatch_width(C, H, [&](auto cm, auto hm) {
      constexpr int CM = decltype(cm)::value, HM = decltype(hm)::value;
      auto kernel = pair_bias_backward_kernel<T, CM, HM>;
      const size_t smem = sizeof(float) * (size_t(kThreads) * HM + 2 * size_t(kThreads) * (C + 1));
      if (smem > 48 * 1024)
        PF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
      kernel<<<blocks, kThreads, smem, cur_stream()>>>(
          static_cast<const T*>(g), static_cast<const T*>(z), gamma, beta, w, pbf,
          static_cast<T*>(dz), partial, rows, N * M, C, H, static_cast<float>(eps));
      PF_CUDA_CHECK_LAUNCH("pair_bias_backward_kernel");
    });
  });
  if (!want_params) return;
  auto sum = [&](auto p) {
    using P = decltype(p);
    pair_bias_param_sum_kernel<P>
        <<<NP, 128, 0, cur_stream()>>>(partial, blocks, H, C, static_cast<P*>(dw),
                                       static_cast<P*>(dgamma), static_cast<P*>(dbeta));
    PF_CUDA_CHECK_LAUNCH("pair_bias_param_sum_kernel");
  };
  if (pbf) sum(bf16{});
  else sum(float{});
}


void embedding_sum_forward(ScalarType tt, ScalarType ot, const void* a, const int32_t* ia,
                           const void* b, const int32_t* ib, void* out, int64_t rows, int64_t S,
                           int D, int Va, int Vb) {
  es_check(D, Va, Vb, "embedding_sum_forward");
  PF_CHECK(S >= 1 && rows % S == 0, "embedding_sum_forward: " << S
                                                              << " broadcast indices do not divide "
                                                              << rows << " rows");
  if (rows == 0) return;
  const unsigned grid = grid_for(rows * D, 256);
  dispatch_dtype(tt, "embedding_sum_forward (tables)", [&](auto t) {
    using TT = decltype(t);
    dispatch_dtype(ot, "embedding_sum_forward (output)", [&](auto o) {
      using OT = decltype(o);
      embedding_sum_forward_kernel<TT, OT><<<grid, 256, 0, cur_stream()>>>(
          static_cast<const TT*>(a), ia, static_cast<const TT*>(b), ib, static_cast<OT*>(out),
          rows, S, D, Va, Vb);
      PF_CUDA_CHECK_LAUNCH("embedding_sum_forward_kernel");
    });
  });
}

size_t embedding_sum_backward_workspace_bytes(int64_t rows, int D, int Va, int Vb) {
  return static_cast<size_t>(es_blocks(rows)) * (Va + Vb) * D * sizeof(float);
}

void embedding_sum_backward(ScalarType gt, ScalarType tt, const void* g, const int32_t* ia,
                            const int32_t* ib, void* da, void* db, int64_t rows, int64_t S, int D,
                            int Va, int Vb, void* workspace) {
  es_check(D, Va, Vb, "embedding_sum_backward");
  PF_CHECK(
      S >= 1 && rows % S == 0,
      "embedding_sum_backward: " << S << " broadcast indices do not divide " << rows << " rows");
  const int P = (Va + Vb) * D;
  const int blocks = es_blocks(rows);
  // As many warps (≤ 4) as the shared memory holds tables for.
  const int warps = static_cast<int>(std::min<int64_t>(4, (192 * 1024) / (int64_t(P) * 4)));
  const size_t smem = size_t(warps) * P * sizeof(float);
  float* partial = static_cast<float*>(workspace);
  const int64_t per_block = (rows + blocks - 1) / blocks;
  dispatch_dtype(gt, "embedding_sum_backward", [&](auto t) {
    using GT = decltype(t);
    auto kernel = embedding_sum_backward_kernel<GT>;
    if (smem > 48 * 1024)
      PF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
    kernel<<<blocks, warps * 32, smem, cur_stream()>>>(static_cast<const GT*>(g), ia, ib, partial,
                                                       rows, S, D, Va, Vb, per_block);
    PF_CUDA_CHECK_LAUNCH("embedding_sum_backward_kernel");
  });
  dispatch_dtype(tt, "embedding_sum_backward (tables)", [&](auto t) {
    using TT = decltype(t);
    embedding_sum_table_sum_kernel<TT><<<P, 128, 0, cur_stream()>>>(
        partial, blocks, Va, D, static_cast<TT*>(da), static_cast<TT*>(db));
    PF_CUDA_CHECK_LAUNCH("embedding_sum_table_sum_kernel");
  });
}

}  // namespace pf::kernels::cuda
