#include "kernels/cuda/softmax.h"

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/reduce.h"

namespace pf::kernels::cuda {

namespace {

constexpr int kThreads = 256;  // 8 warps, one row per warp

template <class T>
__global__ void softmax_forward_kernel(const T* x, T* y, int64_t M, int64_t C) {
  const int lane = threadIdx.x % 32;
  for (int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; row < M;
       row += int64_t(gridDim.x) * (blockDim.x / 32)) {
    const T* xr = x + row * C;
    float mx = -INFINITY;
    for (int64_t c = lane; c < C; c += 32) mx = fmaxf(mx, to_f(xr[c]));
    mx = warp_max(mx);
    float s = 0;
    for (int64_t c = lane; c < C; c += 32) s += expf(to_f(xr[c]) - mx);
    const float inv = 1.0f / warp_sum(s);
    T* yr = y + row * C;
    for (int64_t c = lane; c < C; c += 32) yr[c] = from_f<T>(expf(to_f(xr[c]) - mx) * inv);
  }
}

template <class T>
__global__ void softmax_backward_kernel(const T* y, const T* dy, T* dx, int64_t M, int64_t C) {
  const int lane = threadIdx.x % 32;
  for (int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; row < M;
       row += int64_t(gridDim.x) * (blockDim.x / 32)) {
    const T *yr = y + row * C, *gr = dy + row * C;
    float s = 0;
    for (int64_t c = lane; c < C; c += 32) s += to_f(yr[c]) * to_f(gr[c]);
    s = warp_sum(s);
    T* dxr = dx + row * C;
    for (int64_t c = lane; c < C; c += 32) dxr[c] = from_f<T>(to_f(yr[c]) * (to_f(gr[c]) - s));
  }
}

template <class T>
__global__ void cross_entropy_forward_kernel(const T* logits, const int32_t* labels, float* lse,
                                             float* row_loss, int64_t M, int64_t K) {
  const int lane = threadIdx.x % 32;
  for (int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; row < M;
       row += int64_t(gridDim.x) * (blockDim.x / 32)) {
    const T* xr = logits + row * K;
    float mx = -INFINITY;
    for (int64_t c = lane; c < K; c += 32) mx = fmaxf(mx, to_f(xr[c]));
    mx = warp_max(mx);
    float s = 0;
    for (int64_t c = lane; c < K; c += 32) s += expf(to_f(xr[c]) - mx);
    s = warp_sum(s);
    if (lane == 0) {
      const float l = mx + logf(s);
      const int32_t y = labels[row];
      lse[row] = l;
      row_loss[row] = (y >= 0 && y < K) ? l - to_f(xr[y]) : NAN;
    }
  }
}

__device__ __forceinline__ float load_scalar(const void* p, ScalarType t) {
  return t == ScalarType::F64    ? static_cast<float>(*static_cast<const double*>(p))
         : t == ScalarType::BF16 ? __bfloat162float(*static_cast<const bf16*>(p))
                                 : *static_cast<const float*>(p);
}

template <class T>
__global__ void cross_entropy_backward_kernel(const T* logits, const int32_t* labels, const float* lse,
                                              ScalarType g_t, const void* g, T* dlogits, int64_t M,
                                              int64_t K) {
  const float scale = load_scalar(g, g_t) / static_cast<float>(M);
  const int64_t n = M * K;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / K, c = i % K;
    const float p = expf(to_f(logits[i]) - lse[row]);
    dlogits[i] = from_f<T>(scale * (p - (labels[row] == c ? 1.0f : 0.0f)));
  }
}

template <class T>
__global__ void count_correct_kernel(const T* logits, const int32_t* labels, int64_t M, int64_t K,
                                     int* counts) {
  int correct = 0, bad = 0;
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < M;
       row += int64_t(gridDim.x) * blockDim.x) {
    const T* xr = logits + row * K;
    int64_t best = 0;
    float bv = to_f(xr[0]);
    for (int64_t c = 1; c < K; ++c) {
      const float v = to_f(xr[c]);
      if (v > bv) bv = v, best = c;  // first maximum, as the CPU kernel
    }
    const int32_t y = labels[row];
    bad += (y < 0 || y >= K);
    correct += best == y;
  }
  correct = warp_sum(correct);
  bad = warp_sum(bad);
  if (threadIdx.x % 32 == 0) {
    atomicAdd(counts, correct);
    atomicAdd(counts + 1, bad);
  }
}

unsigned row_grid(int64_t M) { return grid_for(M, kThreads / 32); }

}  // namespace

void softmax_forward(ScalarType t, const void* x, void* y, int64_t M, int64_t C) {
  if (M == 0 || C == 0) return;
  dispatch_dtype(t, "softmax_forward", [&](auto tag) {
    using T = decltype(tag);
    softmax_forward_kernel<T>
        <<<row_grid(M), kThreads, 0, cur_stream()>>>(static_cast<const T*>(x), static_cast<T*>(y), M, C);
    PF_CUDA_CHECK_LAUNCH("softmax_forward");
  });
}

void softmax_backward(ScalarType t, const void* y, const void* dy, void* dx, int64_t M, int64_t C) {
  if (M == 0 || C == 0) return;
  dispatch_dtype(t, "softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    softmax_backward_kernel<T><<<row_grid(M), kThreads, 0, cur_stream()>>>(
        static_cast<const T*>(y), static_cast<const T*>(dy), static_cast<T*>(dx), M, C);
    PF_CUDA_CHECK_LAUNCH("softmax_backward");
  });
}

void cross_entropy_forward(ScalarType t, const void* logits, const int32_t* labels, float* lse,
                           float* row_loss, ScalarType loss_t, void* loss, int64_t M, int64_t K) {
  dispatch_dtype(t, "cross_entropy_forward", [&](auto tag) {
    using T = decltype(tag);
    cross_entropy_forward_kernel<T><<<row_grid(M), kThreads, 0, cur_stream()>>>(static_cast<const T*>(logits),
                                                                                labels, lse, row_loss, M, K);
    PF_CUDA_CHECK_LAUNCH("cross_entropy_forward");
  });
  sum(ScalarType::F32, row_loss, M, loss_t, loss, 1.0 / static_cast<double>(M));
}

void cross_entropy_backward(ScalarType t, const void* logits, const int32_t* labels, const float* lse,
                            ScalarType g_t, const void* g, void* dlogits, int64_t M, int64_t K) {
  dispatch_dtype(t, "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    cross_entropy_backward_kernel<T><<<grid_for(M * K, 256), 256, 0, cur_stream()>>>(
        static_cast<const T*>(logits), labels, lse, g_t, g, static_cast<T*>(dlogits), M, K);
    PF_CUDA_CHECK_LAUNCH("cross_entropy_backward");
  });
}

void count_correct(ScalarType t, const void* logits, const int32_t* labels, int64_t M, int64_t K,
                   int* counts) {
  dispatch_dtype(t, "count_correct", [&](auto tag) {
    using T = decltype(tag);
    count_correct_kernel<T>
        <<<grid_for(M, 256), 256, 0, cur_stream()>>>(static_cast<const T*>(logits), labels, M, K, counts);
    PF_CUDA_CHECK_LAUNCH("count_correct");
  });
}

}  // namespace pf::kernels::cuda
