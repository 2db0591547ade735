#include "kernels/cpu/permute.h"

#include <cstring>

#include "kernels/check.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/strided.h"

namespace pf::kernels::cpu {

namespace {

// Tile edge of the blocked transpose: a 32×32 tile of 4-byte elements is 4 KiB, so a source
// and a destination tile sit in L1 together.
constexpr int64_t kTile = 32;

template <class E>
void copy_typed(const E* x, E* out, const StridedIter<1>& it) {
  const int nd = it.ndim;
  const int64_t inner_stride = it.stride[0][nd - 1];
  // If the innermost output dim is not the unit-stride dim of x but another dim j is, reading
  // along the output row strides through memory. A blocked transpose of dims (j, last) then
  // reads and writes whole cache lines: (B,N,N,H) → (B,H,N,N) is exactly this case.
  int j = -1;
  if (inner_stride != 1 && nd >= 2)
    for (int d = 0; d < nd - 1; ++d)
      if (it.stride[0][d] == 1) j = d;
  if (j < 0) {
    parallel_strided_runs(it, [&](int64_t pos, const int64_t* off, int64_t n, const int64_t* st) {
      const E* px = x + off[0];
      E* po = out + pos;
      if (st[0] == 1) {
        std::memcpy(po, px, n * sizeof(E));
      } else if (st[0] == 0) {
        const E v = *px;
        for (int64_t i = 0; i < n; ++i) po[i] = v;
      } else {
        for (int64_t i = 0; i < n; ++i) po[i] = px[i * st[0]];
      }
    });
    return;
  }
  // Out dims as (outer..., J, middle..., L): iterate over every dim except j and the last with an
  // odometer (as "slices"), and transpose a (shape[j] × shape[L]) panel within each slice.
  const int64_t nj = it.shape[j], nl = it.shape[nd - 1];
  const int64_t sl = inner_stride;  // x stride along L; x stride along j is 1
  int64_t out_stride[kMaxDims];
  out_stride[nd - 1] = 1;
  for (int d = nd - 2; d >= 0; --d) out_stride[d] = out_stride[d + 1] * it.shape[d + 1];
  int64_t slices = 1;
  for (int d = 0; d < nd - 1; ++d)
    if (d != j) slices *= it.shape[d];
  const int64_t out_j = out_stride[j];
  parallel_range(slices, nj * nl, [&](int64_t sb, int64_t se) {
    for (int64_t s = sb; s < se; ++s) {
      // decode slice index s over the dims other than j and the last
      int64_t rem = s, xo = 0, oo = 0;
      for (int d = nd - 2; d >= 0; --d) {
        if (d == j) continue;
        const int64_t id = rem % it.shape[d];
        rem /= it.shape[d];
        xo += id * it.stride[0][d];
        oo += id * out_stride[d];
      }
      const E* px = x + xo;
      E* po = out + oo;
      for (int64_t a0 = 0; a0 < nj; a0 += kTile) {
        const int64_t a1 = std::min(nj, a0 + kTile);
        for (int64_t b0 = 0; b0 < nl; b0 += kTile) {
          const int64_t b1 = std::min(nl, b0 + kTile);
          for (int64_t a = a0; a < a1; ++a)
            for (int64_t b = b0; b < b1; ++b) po[a * out_j + b] = px[a + b * sl];
        }
      }
    }
  });
}

}  // namespace

void strided_copy(const void* x, const int64_t* x_stride, void* out, const int64_t* shape, int ndim,
                  size_t elem_size) {
  const int64_t* strides[1] = {x_stride};
  const StridedIter<1> it = make_strided_iter<1>(shape, ndim, strides);
  if (it.numel() == 0) return;
  switch (elem_size) {
    case 1: return copy_typed(static_cast<const uint8_t*>(x), static_cast<uint8_t*>(out), it);
    case 2: return copy_typed(static_cast<const uint16_t*>(x), static_cast<uint16_t*>(out), it);
    case 4: return copy_typed(static_cast<const uint32_t*>(x), static_cast<uint32_t*>(out), it);
    case 8: return copy_typed(static_cast<const uint64_t*>(x), static_cast<uint64_t*>(out), it);
  }
  PF_FAIL("strided_copy: element size " << elem_size << " bytes, expected 1, 2, 4 or 8");
}

void permute(const void* x, const int64_t* shape, int ndim, const int* perm, void* out, size_t elem_size) {
  PF_CHECK(ndim <= kMaxDims, "permute of " << ndim << " dims, at most " << kMaxDims);
  int64_t x_stride[kMaxDims], out_shape[kMaxDims], stride_of_out[kMaxDims];
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    x_stride[d] = s;
    s *= shape[d];
  }
  for (int i = 0; i < ndim; ++i) {
    out_shape[i] = shape[perm[i]];
    stride_of_out[i] = x_stride[perm[i]];
  }
  strided_copy(x, stride_of_out, out, out_shape, ndim, elem_size);
}

}  // namespace pf::kernels::cpu
