// Hopper (sm_90a) building blocks as thin PTX wrappers: mbarriers, the tensor-memory accelerator
// (TMA: cp.async.bulk.tensor), warpgroup matrix multiply (wgmma) and its shared-memory matrix
// descriptors, and register re-balancing between warpgroups (setmaxnreg).
//
// Only translation units compiled for sm_90a include this (kernels/cuda/*_sm90a.cu and the
// tests of these parts); the portable kernels never see it.
//
// Shared-memory tiles are written by TMA with a 64- or 128-byte swizzle and read by wgmma (through
// a descriptor of the same swizzle) or by plain loads (through swizzled_offset). A tile of R rows
// whose rows are `kSwizzle` bytes (one swizzle atom wide) is stored row after row; inside each
// group of 8 rows, the 16-byte chunk c of row r is stored at chunk c ^ (r % 8) (128 B) or
// c ^ ((r / 2) % 4) (64 B, the pattern repeats every 512 bytes). Tiles start at 1024-byte
// boundaries so the pattern's phase is the address's.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace pf::kernels::cuda::sm90 {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier -----------------------------------------------------------------------------------

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

// Makes the initialised barriers visible to the async proxy (TMA) before first use.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// One arrival that also announces `bytes` of TMA transactions for the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

// Waits until the phase with parity `parity` has completed (a fresh barrier counts its
// "previous" phase, parity 1, as completed).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// ---- TMA ----------------------------------------------------------------------------------------

__device__ __forceinline__ void tma_prefetch_descriptor(const void* tmap) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(tmap)) : "memory");
}

// One box of a 4-d tensor map at coordinates (c0 innermost … c3) into shared memory; completes
// as transaction bytes on `bar`. Out-of-range elements are filled with zeros.
__device__ __forceinline__ void tma_load_4d(void* smem_dst, const void* tmap, uint64_t* bar, int c0, int c1, int c2,
                                            int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];" ::"r"(smem_addr(smem_dst)),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// ---- wgmma --------------------------------------------------------------------------------------

// Shared-memory matrix descriptor for a tile written by TMA with swizzle `kSwizzle` bytes (64 or
// 128; rows of exactly kSwizzle bytes).
//   K-major operand (rows = M or N, the row holds K): stride byte offset = 8 rows; the leading
//     byte offset is unused (1).
//   MN-major operand (rows = K, the row holds MN): stride byte offset = 8 K-rows; leading byte
//     offset = from one kSwizzle-byte column block of MN to the next (`lbo_bytes`).
template <int kSwizzle>
__device__ __forceinline__ uint64_t make_desc(const void* tile, uint32_t lbo_bytes = 16) {
  static_assert(kSwizzle == 64 || kSwizzle == 128, "swizzle of 64 or 128 bytes");
  constexpr uint64_t kMode = kSwizzle == 128 ? 1 : 2;
  const uint64_t sbo = 8 * kSwizzle;
  return uint64_t((smem_addr(tile) & 0x3FFFF) >> 4) | (uint64_t((lbo_bytes & 0x3FFFF) >> 4) << 16) |
         (uint64_t(sbo >> 4) << 32) | (kMode << 62);
}

// Descriptor start address moved by `bytes` (multiple of 16) inside the swizzle atom: the K step.
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// Keeps the compiler from moving reads or writes of accumulator registers across wgmma fences.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// ---- registers ----------------------------------------------------------------------------------

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
}

// ---- swizzled plain reads -----------------------------------------------------------------------

// Byte offset of (row r, byte b of the row) in a tile of kSwizzle-byte rows written by TMA.
template <int kSwizzle>
__device__ __forceinline__ uint32_t swizzled_offset(int r, int b) {
  static_assert(kSwizzle == 64 || kSwizzle == 128, "swizzle of 64 or 128 bytes");
  const int chunk = b >> 4;
  const int phase = kSwizzle == 128 ? (r & 7) : ((r >> 1) & 3);
  return uint32_t(r * kSwizzle + (((chunk ^ phase) << 4) | (b & 15)));
}

}  // namespace pf::kernels::cuda::sm90
