// Tensor: shape, dtype, device and shared storage, plus the autograd hooks.
//
// Conventions (stated once, here):
// - Tensors are dense and row-major (contiguous). Views that keep the element order (reshape,
//   detach) share storage; permute/transpose copy. Kernels therefore always see packed data.
// - Shapes are std::vector<int64_t>; a scalar has shape {} and one element.
// - dtypes: F32 and F64 for computation on the CPU (F64 for gradient checks), BF16/F16 for the
//   GPU's mixed precision, I32 for indices (tokens, labels, bins), U8 for masks.
// - Autograd: a tensor produced by an op while grad mode is on and some input requires grad
//   carries grad_fn (framework/autograd.h). Leaf tensors with requires_grad accumulate their
//   gradient into grad() with +=; gradients of intermediate tensors live only during backward.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/check.h"

namespace pf {

enum class DType : int { F32, F64, BF16, F16, I32, U8 };
enum class Device : int { CPU, CUDA };
using Shape = std::vector<int64_t>;

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* device_name(Device d);
bool is_floating(DType t);
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

// Maps a C++ element type to its DType: dtype_of<float>() == DType::F32.
template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::F32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::F64;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::I32;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::U8;
}

// Owns one allocation on one device (framework/allocator.cpp decides how it is obtained).
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct Node;
struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation (uninitialised / filled) ----
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device device = Device::CPU);
  // Copies host values (converted to `dtype`) into a new tensor of `shape`.
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, DType dtype = dtype_of<T>(),
                            Device device = Device::CPU);

  // ---- description ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  int64_t size(int dim) const;  // negative dims count from the end
  int ndim() const { return static_cast<int>(shape().size()); }
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }
  std::string str() const;  // "float32[32, 64] cpu"

  // ---- data ----
  void* data_ptr();
  const void* data_ptr() const;
  template <class T>
  T* data();  // checks dtype == dtype_of<T>() and device == CPU
  template <class T>
  const T* data() const;
  template <class T>
  std::vector<T> to_vector() const;  // host copy, converted to T
  double item() const;               // the single element, as double

  // ---- conversion (no autograd; use ops for differentiable versions) ----
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor clone() const;
  Tensor detach() const;                  // shares storage, no grad_fn, no requires_grad
  Tensor view(const Shape& shape) const;  // shares storage; same numel; no autograd
  Tensor select(int64_t i) const;         // x[i] along dim 0: shares storage; no autograd
  void copy_(const Tensor& src);          // element-wise copy (same numel), converting dtype
  void fill_(double value);
  // Replaces this tensor's data (storage, shape, dtype, device) with src's, keeping its identity:
  // every handle to it sees the new data. For moving parameters and loading checkpoints.
  void set_data(const Tensor& src);

  // ---- autograd ----
  bool requires_grad() const;
  Tensor& requires_grad_(bool on = true);  // leaves only
  bool is_leaf() const;
  Tensor grad() const;  // undefined until a backward reaches it
  void set_grad(const Tensor& g);
  void zero_grad();  // drops the gradient (the next backward writes it)
  const std::shared_ptr<Node>& grad_fn() const;
  void set_grad_fn(std::shared_ptr<Node> node);
  // Reverse-mode backward from this tensor; grad_output defaults to 1 for a scalar.
  void backward(const Tensor& grad_output = Tensor()) const;

  const std::string& name() const;  // parameter name, for messages
  Tensor& set_name(const std::string& name);

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  void check_defined(const char* what) const;
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  size_t offset = 0;  // bytes into storage
  Shape shape;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;
  std::string name;
};

// Shape of the numpy-style broadcast of a and b, or an error naming both.
Shape broadcast_shapes(const Shape& a, const Shape& b);

}  // namespace pf
