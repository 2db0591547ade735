// Checked cuBLAS calls: a failure names the call, the cuBLAS status and file:line as a pf::Error.
#pragma once
#include <cublas_v2.h>

#include "kernels/check.h"

#define PF_CUBLAS_CHECK(call)                                                                    \
  do {                                                                                           \
    cublasStatus_t pf_cublas_st_ = (call);                                                       \
    if (pf_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                                  \
      PF_FAIL("cuBLAS call failed: " #call ": " << cublasGetStatusName(pf_cublas_st_) << " ("    \
                                                << cublasGetStatusString(pf_cublas_st_) << ")"); \
  } while (0)
