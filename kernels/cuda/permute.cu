#include "kernels/cuda/permute.h"

#include <vector>

#include "kernels/cpu/strided.h"
#include "kernels/cuda/common.cuh"

namespace pf::kernels::cuda {

namespace {

struct CopyGeom {
  int ndim;
  int64_t shape[cpu::kMaxDims];   // of out, merged, outermost first
  int64_t stride[cpu::kMaxDims];  // of x along those dims
};

template <class E>
__global__ void strided_copy_kernel(const E* x, E* out, CopyGeom g, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rem = i, off = 0;
    for (int d = g.ndim - 1; d >= 0; --d) {
      off += (rem % g.shape[d]) * g.stride[d];
      rem /= g.shape[d];
    }
    out[i] = x[off];
  }
}

// Swaps the last two dims of x viewed as (batch, R, C) through 32×32 shared-memory tiles, so
// both the reads and the writes are coalesced. out is (batch, C, R). Tiles of R on grid.x (up
// to 2³¹−1 blocks: the pair bias has R = N² rows), of C on grid.y and batches on grid.z (up to
// 65535 each); each block strides over the tiles a smaller grid leaves.
template <class E>
__global__ void transpose_kernel(const E* x, E* out, int64_t batch, int64_t R, int64_t C) {
  __shared__ E tile[32][33];
  const int64_t tiles_r = (R + 31) / 32, tiles_c = (C + 31) / 32;
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z)
    for (int64_t tc = blockIdx.y; tc < tiles_c; tc += gridDim.y)
      for (int64_t tr = blockIdx.x; tr < tiles_r; tr += gridDim.x) {
        const int64_t r0 = tr * 32, c0 = tc * 32;
        const E* xb = x + b * R * C;
        E* ob = out + b * R * C;
        for (int k = threadIdx.y; k < 32; k += blockDim.y) {
          const int64_t r = r0 + k, c = c0 + threadIdx.x;
          if (r < R && c < C) tile[k][threadIdx.x] = xb[r * C + c];
        }
        __syncthreads();
        for (int k = threadIdx.y; k < 32; k += blockDim.y) {
          const int64_t c = c0 + k, r = r0 + threadIdx.x;
          if (r < R && c < C) ob[c * R + r] = tile[threadIdx.x][k];
        }
        __syncthreads();  // the tile is refilled by the next iteration
      }
}

template <class F>
void dispatch_elem(size_t elem_size, F&& f) {
  switch (elem_size) {
    case 1: f(uint8_t{}); return;
    case 2: f(uint16_t{}); return;
    case 4: f(uint32_t{}); return;
    case 8: f(uint64_t{}); return;
  }
  PF_FAIL("CUDA copy: element size " << elem_size << " bytes, expected 1, 2, 4 or 8");
}

}  // namespace

void strided_copy(const void* x, const int64_t* x_stride, void* out, const int64_t* shape, int ndim,
                  size_t elem_size) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  if (n == 0) return;
  std::vector<int64_t> out_stride(ndim);
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    out_stride[d] = s;
    s *= shape[d];
  }
  const int64_t* strides[2] = {x_stride, out_stride.data()};
  const auto it = cpu::make_strided_iter<2>(shape, ndim, strides);
  CopyGeom g{};
  g.ndim = it.ndim;
  for (int d = 0; d < it.ndim; ++d) {
    g.shape[d] = it.shape[d];
    g.stride[d] = it.stride[0][d];
  }
  dispatch_elem(elem_size, [&](auto tag) {
    using E = decltype(tag);
    strided_copy_kernel<E>
        <<<grid_for(n, 256), 256, 0, cur_stream()>>>(static_cast<const E*>(x), static_cast<E*>(out), g, n);
    PF_CUDA_CHECK_LAUNCH("strided_copy");
  });
}

void permute(const void* x, const int64_t* shape, int ndim, const int* perm, void* out, size_t elem_size) {
  PF_CHECK(ndim <= cpu::kMaxDims, "permute of " << ndim << " dims, at most " << cpu::kMaxDims);
  int64_t n = 1, xs[cpu::kMaxDims], oshape[cpu::kMaxDims], ostride[cpu::kMaxDims];
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    xs[d] = s;
    s *= shape[d];
  }
  for (int i = 0; i < ndim; ++i) {
    oshape[i] = shape[perm[i]];
    ostride[i] = xs[perm[i]];
    n *= oshape[i];
  }
  if (n == 0) return;
  // (…, R, C) → (…, C, R) with the leading dims kept: the tiled transpose. The pair bias
  // (B,N,N,H) → (B,H,N,N) is this with R = N·N, C = H.
  int keep = 0;
  while (keep < ndim && perm[keep] == keep) ++keep;
  bool swap_two_groups = false;
  int64_t R = 1, C = 1;
  if (keep < ndim) {
    // perm[keep..] must be (j, j+1, …, ndim−1, keep, …, j−1): a rotation of the trailing dims
    const int j = perm[keep];
    swap_two_groups = j > keep;
    for (int i = keep; i < ndim && swap_two_groups; ++i) {
      const int want = i - keep < ndim - j ? j + (i - keep) : keep + (i - keep - (ndim - j));
      swap_two_groups = perm[i] == want;
    }
    if (swap_two_groups) {
      for (int d = keep; d < j; ++d) R *= shape[d];
      for (int d = j; d < ndim; ++d) C *= shape[d];
    }
  }
  dispatch_elem(elem_size, [&](auto tag) {
    using E = decltype(tag);
    if (swap_two_groups) {
      int64_t batch = 1;
      for (int d = 0; d < keep; ++d) batch *= shape[d];
      const dim3 grid(static_cast<unsigned>(std::min<int64_t>((R + 31) / 32, 2147483647)),
                      static_cast<unsigned>(std::min<int64_t>((C + 31) / 32, 65535)),
                      static_cast<unsigned>(std::min<int64_t>(batch, 65535)));
      transpose_kernel<E><<<grid, dim3(32, 8), 0, cur_stream()>>>(static_cast<const E*>(x),
                                                                  static_cast<E*>(out), batch, R, C);
    } else {
      CopyGeom g{};
      g.ndim = ndim;
      for (int d = 0; d < ndim; ++d) {
        g.shape[d] = oshape[d];
        g.stride[d] = ostride[d];
      }
      strided_copy_kernel<E>
          <<<grid_for(n, 256), 256, 0, cur_stream()>>>(static_cast<const E*>(x), static_cast<E*>(out), g, n);
    }
    PF_CUDA_CHECK_LAUNCH("permute");
  });
}

}  // namespace pf::kernels::cuda
