#include "kernels/cuda/layernorm.h"

#include "kernels/cuda/common.cuh"

namespace pf::kernels::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kMaxBlocks = 264;  // 2 per SM on H100: enough to stream, few partials to add

// G lanes per row (G = 32 for C ≥ 32, 16 for C ≥ 16, else 8): a warp normalises
// 32/G rows at once. Lane l of a row handles columns l, l+G, ...
template <class T, class W, int G>
__global__ void layernorm_forward_kernel(const T* x, const W* w, const W* b, T* y, float* mean, float* rstd,
                                         int64_t M, int C, float eps) {
  const int lane = threadIdx.x % G;
  const int64_t groups = int64_t(gridDim.x) * (blockDim.x / G);
  // The loop runs while the warp's first row exists, so every lane of a warp joins each shuffle;
  // a lane past the end works on the last row and writes nothing.
  const int64_t first_in_warp = (threadIdx.x / G) % (32 / G);
  for (int64_t r0 = blockIdx.x * int64_t(blockDim.x / G) + threadIdx.x / G; r0 - first_in_warp < M;
       r0 += groups) {
    const bool active = r0 < M;
    const int64_t row = active ? r0 : M - 1;
    const T* xr = x + row * C;
    float s = 0;
    for (int c = lane; c < C; c += G) s += to_f(xr[c]);
    const float mu = warp_sum(s, G) / C;
    float v = 0;
    for (int c = lane; c < C; c += G) {
      const float d = to_f(xr[c]) - mu;
      v += d * d;
    }
    const float r = rsqrtf(warp_sum(v, G) / C + eps);
    if (!active) continue;
    T* yr = y + row * C;
    for (int c = lane; c < C; c += G) yr[c] = from_f<T>((to_f(xr[c]) - mu) * r * to_f(w[c]) + to_f(b[c]));
    if (lane == 0) {
      mean[row] = mu;
      rstd[row] = r;
    }
  }
}

// dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)), dx̂ = dy·w;  dw = Σ_rows dy·x̂,  db = Σ_rows dy.
// Each row group keeps its own dw/db columns in shared memory (no two lanes share a column);
// the block adds its groups in order and writes one partial row per block to the workspace.
template <class T, class W, int G>
__global__ void layernorm_backward_kernel(const T* dy, const T* x, const W* w, const float* mean,
                                          const float* rstd, T* dx, float* partial, int64_t M, int C,
                                          bool want_dwdb) {
  extern __shared__ float acc[];  // [groups][2][C]
  const int ngroups = blockDim.x / G, group = threadIdx.x / G, lane = threadIdx.x % G;
  float* dw_acc = acc + group * 2 * C;
  float* db_acc = dw_acc + C;
  if (want_dwdb)
    for (int c = lane; c < C; c += G) dw_acc[c] = db_acc[c] = 0;
  const int64_t first_in_warp = group % (32 / G);  // as in the forward: whole warps loop
  for (int64_t r0 = blockIdx.x * int64_t(ngroups) + group; r0 - first_in_warp < M;
       r0 += int64_t(gridDim.x) * ngroups) {
    const bool active = r0 < M;
    const int64_t row = active ? r0 : M - 1;
    const T* xr = x + row * C;
    const T* dyr = dy + row * C;
    const float mu = mean[row], r = rstd[row];
    float s1 = 0, s2 = 0;
    for (int c = lane; c < C; c += G) {
      const float xh = (to_f(xr[c]) - mu) * r, g = to_f(dyr[c]);
      const float dxh = __fmul_rn(g, to_f(w[c]));  // rounded as in the dx loop (no FMA)
      s1 += dxh;
      s2 += dxh * xh;
      if (want_dwdb && active) {
        dw_acc[c] += g * xh;
        db_acc[c] += g;
      }
    }
    if (dx) {
      const float m1 = warp_sum(s1, G) / C, m2 = warp_sum(s2, G) / C;
      if (!active) continue;
      T* dxr = dx + row * C;
      for (int c = lane; c < C; c += G) {
        const float xh = (to_f(xr[c]) - mu) * r;
        // the same rounded dx̂ as in the sums: C = 1 gives dx̂ − m1 = 0 exactly, as it must
        dxr[c] = from_f<T>(r * (__fmul_rn(to_f(dyr[c]), to_f(w[c])) - m1 - xh * m2));
      }
    }
  }
  if (!want_dwdb) return;
  __syncthreads();  // dw_acc of every group complete
  for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) {
    float t = 0;
    for (int gi = 0; gi < ngroups; ++gi) t += acc[gi * 2 * C + c];
    partial[blockIdx.x * 2 * C + c] = t;
  }
}

// dw, db: one warp per column, lane l adding the blocks' partials l, l + 32, ... and the lanes
// then added by shuffles (a fixed order). One thread per column walking all 264 partials took
// 36 µs per call, latency-bound (kernels/cuda/NOTES.md).
constexpr int kFinalizeWarps = 8;
template <class W>
__global__ void layernorm_dwdb_finalize_kernel(const float* partial, int blocks, int C, W* dw, W* db) {
  const int c = blockIdx.x * kFinalizeWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (c >= C) return;  // whole warps leave together
  float sw = 0, sb = 0;
  for (int k = lane; k < blocks; k += 32) {
    sw += partial[int64_t(k) * 2 * C + c];
    sb += partial[int64_t(k) * 2 * C + C + c];
  }
  sw = warp_sum(sw);
  sb = warp_sum(sb);
  if (lane != 0) return;
  if (dw) dw[c] = from_f<W>(sw);
  if (db) db[c] = from_f<W>(sb);
}

template <class F>
void dispatch_lanes(int64_t C, F&& f) {
  if (C >= 32)
    f(std::integral_constant<int, 32>{});
  else if (C >= 16)
    f(std::integral_constant<int, 16>{});
  else
    f(std::integral_constant<int, 8>{});
}

// (xt, wt) ∈ {(F32,F32), (BF16,F32), (BF16,BF16)}
template <class F>
void dispatch_xw(ScalarType xt, ScalarType wt, const char* what, F&& f) {
  PF_CHECK(wt == xt || wt == ScalarType::F32, what << ": weights must be float32 or have x's dtype "
                                                   << scalar_type_name(xt) << ", got "
                                                   << scalar_type_name(wt));
  dispatch_dtype(xt, what, [&](auto xtag) {
    using T = decltype(xtag);
    if (wt == ScalarType::F32)
      f(T{}, float{});
    else
      f(T{}, T{});
  });
}

int backward_blocks(int64_t M) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (M + 7) / 8)));
}

}  // namespace

void layernorm_forward(ScalarType xt, ScalarType wt, const void* x, const void* w, const void* b, void* y,
                       float* mean, float* rstd, int64_t M, int64_t C, double eps) {
  PF_CHECK(C >= 1 && C <= INT32_MAX, "layernorm_forward: C must be in [1, 2^31), got " << C);
  if (M == 0) return;
  dispatch_xw(xt, wt, "layernorm_forward", [&](auto xtag, auto wtag) {
    using T = decltype(xtag);
    using W = decltype(wtag);
    dispatch_lanes(C, [&](auto g) {
      constexpr int G = decltype(g)::value;
      const int64_t rows_per_block = kThreads / G;
      const unsigned grid =
          static_cast<unsigned>(std::min<int64_t>((M + rows_per_block - 1) / rows_per_block, 65535));
      layernorm_forward_kernel<T, W, G><<<grid, kThreads, 0, cur_stream()>>>(
          static_cast<const T*>(x), static_cast<const W*>(w), static_cast<const W*>(b), static_cast<T*>(y),
          mean, rstd, M, static_cast<int>(C), static_cast<float>(eps));
    });
    PF_CUDA_CHECK_LAUNCH("layernorm_forward");
  });
}

size_t layernorm_backward_workspace_bytes(int64_t M, int64_t C) {
  return static_cast<size_t>(backward_blocks(M)) * 2 * C * sizeof(float);
}

void layernorm_backward(ScalarType xt, ScalarType wt, const void* dy, const void* x, const void* w,
                        const float* mean, const float* rstd, void* dx, void* dw, void* db, int64_t M,
                        int64_t C, void* workspace) {
  PF_CHECK(C >= 1 && C <= INT32_MAX, "layernorm_backward: C must be in [1, 2^31), got " << C);
  const bool want_dwdb = dw != nullptr || db != nullptr;
  dispatch_xw(xt, wt, "layernorm_backward", [&](auto xtag, auto wtag) {
    using T = decltype(xtag);
    using W = decltype(wtag);
    if (M == 0) {  // empty sums
      if (dw) memset_zero(dw, C * sizeof(W));
      if (db) memset_zero(db, C * sizeof(W));
      return;
    }
    const int blocks = backward_blocks(M);
    dispatch_lanes(C, [&](auto g) {
      constexpr int G = decltype(g)::value;
      // Each row group keeps 2·C sums in shared memory: past what kThreads / G groups may have
      // (C > 7264 at 227 KB), one group (a warp) per block (C ≤ 29056).
      const size_t group_smem = want_dwdb ? 2 * size_t(C) * sizeof(float) : 0;
      const int threads = size_t(kThreads / G) * group_smem <= max_smem_bytes() ? kThreads : G;
      const size_t smem = size_t(threads / G) * group_smem;
      PF_CHECK(smem <= max_smem_bytes(), "layernorm_backward: the sums of dw and db over C = "
                                             << C << " columns need " << smem
                                             << " bytes of shared memory, the device allows "
                                             << max_smem_bytes());
      allow_smem(layernorm_backward_kernel<T, W, G>, smem);
      layernorm_backward_kernel<T, W, G><<<blocks, threads, smem, cur_stream()>>>(
          static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const W*>(w), mean, rstd,
          static_cast<T*>(dx), static_cast<float*>(workspace), M, static_cast<int>(C), want_dwdb);
    });
    PF_CUDA_CHECK_LAUNCH("layernorm_backward");
    if (want_dwdb) {
      layernorm_dwdb_finalize_kernel<W>
          <<<static_cast<unsigned>((C + kFinalizeWarps - 1) / kFinalizeWarps), kFinalizeWarps * 32, 0,
             cur_stream()>>>(static_cast<const float*>(workspace), blocks, static_cast<int>(C),
                             static_cast<W*>(dw), static_cast<W*>(db));
      PF_CUDA_CHECK_LAUNCH("layernorm_dwdb_finalize");
    }
  });
}

}  // namespace pf::kernels::cuda
