// Tensor maps of the flash-bias operands for the Hopper kernels (host side; only the sm_90a
// translation units include this), and the shared memory a block may opt into.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_attr.h"
#include "kernels/cuda/tma.h"
#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda::fb90 {

// Bytes of one swizzled row of a (…, D) 16-bit operand tile: one panel holds min(2D, 128) bytes
// of every row (64 columns at most); D = 128 tiles are two panels side by side.
constexpr int panel_bytes(int D) { return 2 * D < 128 ? 2 * D : 128; }

// A (B,N,H,D) operand of 16-bit elements as the 4-d map {D, N, H, B}; a box is one panel wide
// and `box_rows` rows of N, swizzled by the panel's width.
inline CUtensorMap bnhd_map(const void* ptr, const BNHDStrides& s, int B, int N, int H, int D, bool bf16,
                            int box_rows) {
  const uint64_t dims[4] = {uint64_t(D), uint64_t(N), uint64_t(H), uint64_t(B)};
  const uint64_t strides[3] = {uint64_t(s.row) * 2, uint64_t(s.head) * 2, uint64_t(s.batch) * 2};
  const uint32_t box[4] = {uint32_t(panel_bytes(D) / 2), uint32_t(box_rows), 1, 1};
  return make_tensor_map_4d(ptr, 2, bf16, dims, strides, box, panel_bytes(D));
}

// A (B|1, H|1, Nq, Nk) tensor — a bias, its gradient or an fp32 accumulator of it — as the 4-d map
// {Nk, Nq, H|1, B|1} (a zero batch or head stride broadcasts: that dim has extent 1); a box is
// 128 bytes of a row (128-byte swizzle) × `box_rows` rows.
inline CUtensorMap pair_map(const void* ptr, int elt, bool bf16, int B, int H, int Nq, int Nk,
                            int64_t batch_stride, int64_t head_stride, int64_t row_stride, int box_rows) {
  const bool shared_b = batch_stride == 0, shared_h = head_stride == 0;
  // a broadcast dim has extent 1: its stride is never used (any valid value)
  const uint64_t plane = uint64_t(row_stride) * elt * uint64_t(Nq);
  const uint64_t dims[4] = {uint64_t(Nk), uint64_t(Nq), shared_h ? 1u : uint64_t(H),
                            shared_b ? 1u : uint64_t(B)};
  const uint64_t strides[3] = {uint64_t(row_stride) * elt, shared_h ? plane : uint64_t(head_stride) * elt,
                               shared_b ? plane : uint64_t(batch_stride) * elt};
  const uint32_t box[4] = {uint32_t(128 / elt), uint32_t(box_rows), 1, 1};
  return make_tensor_map_4d(ptr, elt, bf16, dims, strides, box, 128);
}

// The order of a Hopper kernel's CTAs over (tile, h, b) in a one-dimensional grid. The dims a bias
// is shared over vary fastest, so the CTAs that read the same bias tile (and, in the backward, add
// into the same dB accumulator tile) run at the same time and meet in L2 instead of each going to
// DRAM; then the tiles of one (b, h), which share their Q, K, V and dO; then the other dims.
struct CtaOrder {
  int n_tiles = 0, H = 0, B = 0;
  int inner_b = 0, inner_h = 0;  // the bias is shared over the batch / the heads

  int ctas() const { return n_tiles * H * B; }
  __device__ __forceinline__ void decode(int lin, int& tile, int& h, int& b) const {
    if (inner_b) {
      b = lin % B;
      lin /= B;
    }
    if (inner_h) {
      h = lin % H;
      lin /= H;
    }
    tile = lin % n_tiles;
    lin /= n_tiles;
    if (!inner_h) {
      h = lin % H;
      lin /= H;
    }
    if (!inner_b) b = lin;
  }
};

inline CtaOrder cta_order(int n_tiles, int H, int B, bool has_bias, bool shared_b, bool shared_h) {
  CtaOrder o;
  o.n_tiles = n_tiles;
  o.H = H;
  o.B = B;
  o.inner_b = has_bias && shared_b && B > 1;
  o.inner_h = has_bias && shared_h && H > 1;
  return o;
}

}  // namespace pf::kernels::cuda::fb90
