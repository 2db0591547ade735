// Device selection and the environment report (`train --check-env`).
#pragma once
#include <string>

#include "framework/tensor.h"

namespace pf::run {

// "auto" → cuda when the build has CUDA and a GPU is present, else cpu; "cuda" without them is an
// error naming what is missing.
Device resolve_device(const std::string& requested);

// The dtype of the weights for train.precision on `device`: fp32 and fp64 as named; bf16 (CUDA
// only) keeps fp32 master weights under a bf16 autocast.
DType precision_dtype(const std::string& precision, Device device);

// Prints what the build and the machine have: CPU threads, CUDA toolkit, driver, GPU.
int check_env();

}  // namespace pf::run
