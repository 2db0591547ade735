// Tensor maps for the tensor-memory accelerator (see tma.h).
#include "kernels/cuda/tma.h"

#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include "kernels/check.h"

namespace pf::kernels::cuda {

namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t err =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found);
    PF_CHECK(err == cudaSuccess && found == cudaDriverEntryPointSuccess && f != nullptr,
             "make_tensor_map_4d: the driver has no cuTensorMapEncodeTiled (CUDA 12.0 or newer needed): "
                 << cudaGetErrorString(err));
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace

CUtensorMap make_tensor_map_4d(const void* base, int elem_bytes, bool bf16, const uint64_t dims[4],
                               const uint64_t byte_strides[3], const uint32_t box[4], int swizzle_bytes) {
  PF_CHECK(elem_bytes == 2 || elem_bytes == 4,
           "make_tensor_map_4d: element size 2 or 4 bytes, got " << elem_bytes);
  const CUtensorMapDataType type = elem_bytes == 4 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
                                   : bf16          ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                   : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUtensorMapSwizzle swizzle = swizzle_bytes == 128  ? CU_TENSOR_MAP_SWIZZLE_128B
                                     : swizzle_bytes == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
                                     : swizzle_bytes == 32 ? CU_TENSOR_MAP_SWIZZLE_32B
                                                           : CU_TENSOR_MAP_SWIZZLE_NONE;
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  CUtensorMap map{};
  const CUresult r = encode_fn()(&map, type, 4, const_cast<void*>(base), dims, byte_strides, box,
                                 elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                 CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  PF_CHECK(r == CUDA_SUCCESS, "make_tensor_map_4d: the driver refused the tensor map (CUresult "
                                  << int(r) << "): base " << base << ", dims (" << dims[0] << ", " << dims[1]
                                  << ", " << dims[2] << ", " << dims[3] << "), byte strides ("
                                  << byte_strides[0] << ", " << byte_strides[1] << ", " << byte_strides[2]
                                  << "), box (" << box[0] << ", " << box[1] << ", " << box[2] << ", "
                                  << box[3] << "), swizzle " << swizzle_bytes);
  return map;
}

}  // namespace pf::kernels::cuda
