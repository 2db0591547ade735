#include "framework/checkpoint.h"

namespace pf {

void write_tensors(H5Writer& w, const std::string& group, const nn::NamedTensors& tensors) {
  for (const auto& [name, t] : tensors) {
    const std::string path = group + "/" + name;
    if (t.dtype() == DType::F64) {
      const auto host = t.to_vector<double>();
      w.write_dataset(path, host.data(), t.shape());
    } else {  // F32 master weights; bf16/fp16 tensors are widened
      const auto host = t.to_vector<float>();
      w.write_dataset(path, host.data(), t.shape());
    }
  }
}

void read_tensors(const H5Reader& r, const std::string& group, const nn::NamedTensors& tensors) {
  for (const auto& [name, t] : tensors) {
    const std::string path = group + "/" + name;
    PF_CHECK(r.has(path), "file " << r.path() << ": missing dataset '" << path << "'");
    const auto values = r.read_double(path, t.shape());
    Tensor dst = t;
    dst.copy_(Tensor::from_vector(values, t.shape(), t.dtype()).to(t.device()));
  }
}

}  // namespace pf
