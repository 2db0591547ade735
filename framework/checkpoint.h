// Named tensors to and from HDF5 groups — the mechanism under checkpoints (DESIGN §5):
// /model/<name> with the parameter's shape ([out, in] for weights) and dtype, /optim/<name>.
// Files are written through H5Writer, so a checkpoint appears atomically (temp file + rename).
#pragma once
#include <string>

#include "framework/h5io.h"
#include "framework/nn.h"

namespace pf {

// Writes each tensor as dataset group/<name> (float32 or float64 as the tensor is).
void write_tensors(H5Writer& w, const std::string& group, const nn::NamedTensors& tensors);

// Reads group/<name> into each tensor in place (converted to its dtype and device). A missing
// dataset or a shape mismatch is an error naming the file, the dataset and both shapes.
void read_tensors(const H5Reader& r, const std::string& group, const nn::NamedTensors& tensors);

}  // namespace pf
