// The one CUDA context of the framework: device 0, one stream on which all work is queued, and a
// cuBLAS handle bound to that stream. Created on first use, never destroyed before exit.
//
// Convention (stated once, here): every kernel of kernels/cuda except the flash-bias ones (which
// take an explicit stream) queues its work on stream(); nothing synchronises unless its comment
// says so. Pointers are device pointers; sizes are elements unless a name ends in _bytes.
//
// This header is plain C++ (no CUDA types): framework code includes it under PF_WITH_CUDA only.
#pragma once
#include <cstddef>

#include "kernels/flash_bias_params.h"

namespace pf::kernels::cuda {

void* stream();         // the cudaStream_t, as void* (cast it in .cu files)
void* cublas_handle();  // the cublasHandle_t bound to stream()
void synchronize();     // waits for all work on stream(); surfaces asynchronous errors

// Stream-ordered copies (host memory may be pageable; device→host synchronises).
void copy_host_to_device(void* dst, const void* src, size_t bytes);
void copy_device_to_host(void* dst, const void* src, size_t bytes);
void copy_device_to_device(void* dst, const void* src, size_t bytes);
void memset_zero(void* dst, size_t bytes);

// Raw device memory (the framework's caching allocator sits on top of these).
void* raw_malloc(size_t bytes);  // nullptr when the device is out of memory
void raw_free(void* ptr);
void memory_info(size_t* free_bytes, size_t* total_bytes);  // of the device (cudaMemGetInfo)

}  // namespace pf::kernels::cuda
