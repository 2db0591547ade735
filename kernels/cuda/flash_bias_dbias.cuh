// The bias gradient's stores, shared by the portable and the Hopper backward: one pair of dB
// values in the bias's dtype, and the sum of a thread-block cluster's fp32 dS tiles (dB of a bias
// shared by the cluster's (b, h) pairs) read through distributed shared memory.
#pragma once
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/flash_bias_warp.cuh"
#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda::fb {

// Writes (or adds) one pair of dB values (dS at columns j, j + 1 of row i) of the bias's dtype.
__device__ __forceinline__ void store_dbias_pair(char* row, int kind, int j, int Nk, float x, float y,
                                                 bool accumulate, bool vec) {
  if (kind == int(ScalarType::F32)) {
    float* r = reinterpret_cast<float*>(row);
    if (vec && j + 1 < Nk) {
      float2 v = make_float2(x, y);
      if (accumulate) {
        const float2 o = load_pair(r + j);
        v.x += o.x;
        v.y += o.y;
      }
      *reinterpret_cast<float2*>(r + j) = v;
    } else {
      if (j < Nk) r[j] = accumulate ? r[j] + x : x;
      if (j + 1 < Nk) r[j + 1] = accumulate ? r[j + 1] + y : y;
    }
  } else if (kind == int(ScalarType::F16)) {
    __half* r = reinterpret_cast<__half*>(row);
    if (vec && j + 1 < Nk) {
      if (accumulate) {
        const float2 o = load_pair(r + j);
        x += o.x;
        y += o.y;
      }
      store_pair(r + j, x, y);
    } else {
      if (j < Nk) r[j] = __float2half_rn(accumulate ? __half2float(r[j]) + x : x);
      if (j + 1 < Nk) r[j + 1] = __float2half_rn(accumulate ? __half2float(r[j + 1]) + y : y);
    }
  } else {
    __nv_bfloat16* r = reinterpret_cast<__nv_bfloat16*>(row);
    if (vec && j + 1 < Nk) {
      if (accumulate) {
        const float2 o = load_pair(r + j);
        x += o.x;
        y += o.y;
      }
      store_pair(r + j, x, y);
    } else {
      if (j < Nk) r[j] = __float2bfloat16_rn(accumulate ? __bfloat162float(r[j]) + x : x);
      if (j + 1 < Nk) r[j + 1] = __float2bfloat16_rn(accumulate ? __bfloat162float(r[j + 1]) + y : y);
    }
  }
}

// Split cluster barrier (sm_90): arrive publishes this thread's shared-memory writes to the
// cluster, wait blocks until every thread of every CTA in the cluster has arrived.
// The host picks kCluster only on devices of compute capability 9.0 or newer.
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void cluster_arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

// The cluster's dB sum: this CTA (cluster rank `rank` of G) sums rows r ≡ rank (mod G) of the G
// CTAs' fp32 dS tiles (BM × BN) in rank order — the same order whatever the timing — and writes
// them to dB (bias dtype, = or +=). tile_at(r, c): this CTA's address of the tile's four floats
// at row r, columns c … c + 3 (c a multiple of 4; the same offset in every CTA of the cluster).
// dbias: the shared dB slice.
template <int BM, int BN, int kNThreads, class TileAt>
__device__ __forceinline__ void reduce_dbias_cluster(TileAt tile_at, int rank, int G, char* dbias,
                                                     int64_t row_stride, int belt, int kind, int m0, int n0,
                                                     int Nq, int Nk, bool accumulate, bool vec, int tid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  constexpr int kQuads = BN / 4;
  const int rows = (BM - rank + G - 1) / G;
  for (int idx = tid; idx < rows * kQuads; idx += kNThreads) {
    const int r = rank + (idx / kQuads) * G, c = (idx % kQuads) * 4;
    const int i = m0 + r, j = n0 + c;
    if (i >= Nq || j >= Nk) continue;
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int qr = 0; qr < G; ++qr) {
      const float4 v =
          *reinterpret_cast<const float4*>(cluster.map_shared_rank(tile_at(r, c), qr));
      sum.x += v.x;
      sum.y += v.y;
      sum.z += v.z;
      sum.w += v.w;
    }
    char* row = dbias + int64_t(i) * row_stride * belt;
    store_dbias_pair(row, kind, j, Nk, sum.x, sum.y, accumulate, vec);
    store_dbias_pair(row, kind, j + 2, Nk, sum.z, sum.w, accumulate, vec);
  }
#else
  __trap();
#endif
}

}  // namespace pf::kernels::cuda::fb
