// The one CUDA context of the framework: device 0, one stream on which all work is queued, and a
// cuBLAS handle bound to that stream with a workspace of its own (set explicitly, so that cuBLAS
// allocates nothing inside a captured CUDA graph). Created on first use, never destroyed before
// exit.
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

// Page-locked host memory (cudaHostAlloc): copies from it to the device are asynchronous.
void* pinned_malloc(size_t bytes);
void pinned_free(void* ptr);  // never throws (destructors call it)

// CUDA graphs of the work queued on stream() (framework/cuda_graph.h holds one; its memory pool
// is the framework allocator's). capture_begin starts capturing stream() (thread-local mode:
// this thread may not call what would synchronise the stream, other threads are not
// restricted); capture_end ends it and returns the instantiated graph (a cudaGraphExec_t), or
// throws with CUDA's reason when the capture was invalidated. capture_abort ends a capture that
// failed on the host side and discards it. While capturing, a host↔device copy of this context,
// a synchronisation or a raw_free is an error that says so (a graph cannot hold them).
bool capturing();
void capture_begin();
void* capture_end();
void capture_abort();
void graph_launch(void* exec);   // queued on stream()
void graph_destroy(void* exec);  // never throws (destructors call it)

}  // namespace pf::kernels::cuda
