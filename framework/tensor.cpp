#include "framework/tensor.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "framework/allocator.h"
#include "framework/autograd.h"
#include "kernels/cpu/convert.h"
#ifdef PF_WITH_CUDA
#include "framework/ops/common.h"  // scalar_type_of
#include "kernels/cuda/context.h"
#include "kernels/cuda/elementwise.h"
#endif

namespace pf {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I32: return 4;
    case DType::U8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::I32: return "int32";
    case DType::U8: return "uint8";
  }
  return "?";
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

bool is_floating(DType t) { return t != DType::I32 && t != DType::U8; }

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    PF_CHECK(da == db || da == 1 || db == 1,
             "shapes " << shape_str(a) << " and " << shape_str(b) << " do not broadcast");
    out[i] = std::max(da, db);
  }
  return out;
}

Storage::Storage(size_t bytes_, Device device_) : bytes(bytes_), device(device_) {
  data = device_alloc(device, bytes);
}

Storage::~Storage() { device_free(device, data, bytes); }

// ---------------------------------------------------------------------------------------------
// creation

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) PF_CHECK(d >= 0, "negative dimension in shape " << shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape;
  impl->dtype = dtype;
  impl->device = device;
  impl->storage = std::make_shared<Storage>(shape_numel(shape) * dtype_size(dtype), device);
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

namespace {

// Reads element i of a host buffer of type `t` as double.
double load_as_double(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F64: return static_cast<const double*>(p)[i];
    case DType::BF16: return kernels::cpu::bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::F16: return kernels::cpu::half_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::I32: return static_cast<const int32_t*>(p)[i];
    case DType::U8: return static_cast<const uint8_t*>(p)[i];
  }
  return 0;
}

void store_from_double(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::F64: static_cast<double*>(p)[i] = v; break;
    case DType::BF16:
      static_cast<uint16_t*>(p)[i] = kernels::cpu::float_to_bf16(static_cast<float>(v));
      break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = kernels::cpu::float_to_half(static_cast<float>(v)); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::U8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); break;
  }
}

// Converting copy between host buffers; same-type copies are a memcpy.
void convert_host(void* dst, DType dt, const void* src, DType st, int64_t n) {
  if (dt == st) {
    std::memcpy(dst, src, n * dtype_size(dt));
    return;
  }
  if (dt == DType::F32 && st == DType::F64) {
    auto* d = static_cast<float*>(dst);
    auto* s = static_cast<const double*>(src);
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(s[i]);
    return;
  }
  if (dt == DType::F64 && st == DType::F32) {
    auto* d = static_cast<double*>(dst);
    auto* s = static_cast<const float*>(src);
    for (int64_t i = 0; i < n; ++i) d[i] = s[i];
    return;
  }
  for (int64_t i = 0; i < n; ++i) store_from_double(dst, dt, i, load_as_double(src, st, i));
}

}  // namespace

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, DType dtype, Device device) {
  PF_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
           "from_vector: " << values.size() << " values for shape " << shape_str(shape));
  Tensor host = empty(shape, dtype, Device::CPU);
  convert_host(host.data_ptr(), dtype, values.data(), dtype_of<T>(), shape_numel(shape));
  return device == Device::CPU ? host : host.to(device);
}

template Tensor Tensor::from_vector<float>(const std::vector<float>&, const Shape&, DType, Device);
template Tensor Tensor::from_vector<double>(const std::vector<double>&, const Shape&, DType, Device);
template Tensor Tensor::from_vector<int32_t>(const std::vector<int32_t>&, const Shape&, DType, Device);
template Tensor Tensor::from_vector<uint8_t>(const std::vector<uint8_t>&, const Shape&, DType, Device);

// ---------------------------------------------------------------------------------------------
// description

void Tensor::check_defined(const char* what) const {
  PF_CHECK(impl_ != nullptr, what << " on an undefined tensor");
}

const Shape& Tensor::shape() const {
  check_defined("shape()");
  return impl_->shape;
}

int64_t Tensor::size(int dim) const {
  const int n = ndim();
  const int d = dim < 0 ? dim + n : dim;
  PF_CHECK(d >= 0 && d < n, "dimension " << dim << " out of range for shape " << shape_str(shape()));
  return impl_->shape[d];
}

int64_t Tensor::numel() const { return shape_numel(shape()); }

DType Tensor::dtype() const {
  check_defined("dtype()");
  return impl_->dtype;
}

Device Tensor::device() const {
  check_defined("device()");
  return impl_->device;
}

std::string Tensor::str() const {
  if (!impl_) return "undefined";
  return std::string(dtype_name(dtype())) + shape_str(shape()) + " " + device_name(device());
}

void* Tensor::data_ptr() {
  check_defined("data_ptr()");
  return static_cast<char*>(impl_->storage->data) + impl_->offset;
}

const void* Tensor::data_ptr() const {
  check_defined("data_ptr()");
  return static_cast<const char*>(impl_->storage->data) + impl_->offset;
}

template <class T>
T* Tensor::data() {
  PF_CHECK(dtype() == dtype_of<T>(),
           "data<" << dtype_name(dtype_of<T>()) << ">() on a " << dtype_name(dtype()) << " tensor");
  PF_CHECK(device() == Device::CPU, "host access to a " << str() << " tensor");
  return static_cast<T*>(data_ptr());
}

template <class T>
const T* Tensor::data() const {
  return const_cast<Tensor*>(this)->data<T>();
}

template float* Tensor::data<float>();
template double* Tensor::data<double>();
template int32_t* Tensor::data<int32_t>();
template uint8_t* Tensor::data<uint8_t>();
template const float* Tensor::data<float>() const;
template const double* Tensor::data<double>() const;
template const int32_t* Tensor::data<int32_t>() const;
template const uint8_t* Tensor::data<uint8_t>() const;

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = device() == Device::CPU ? *this : to(Device::CPU);
  std::vector<T> out(numel());
  convert_host(out.data(), dtype_of<T>(), host.data_ptr(), dtype(), numel());
  return out;
}

template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<uint8_t> Tensor::to_vector<uint8_t>() const;

double Tensor::item() const {
  PF_CHECK(numel() == 1, "item() needs one element, tensor is " << str());
  return to_vector<double>()[0];
}

// ---------------------------------------------------------------------------------------------
// conversion

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor out = empty(shape(), dtype(), dev);
  copy_bytes(out.data_ptr(), dev, data_ptr(), device(), nbytes());
  return out;
}

Tensor Tensor::to(DType t) const {
  if (t == dtype()) return *this;
  Tensor out = empty(shape(), t, device());
  out.copy_(*this);
  return out;
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  copy_bytes(out.data_ptr(), device(), data_ptr(), device(), nbytes());
  return out;
}

Tensor Tensor::detach() const {
  check_defined("detach()");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->offset = impl_->offset;
  impl->shape = impl_->shape;
  impl->dtype = impl_->dtype;
  impl->device = impl_->device;
  impl->name = impl_->name;
  return Tensor(std::move(impl));
}

Tensor Tensor::view(const Shape& new_shape) const {
  PF_CHECK(shape_numel(new_shape) == numel(),
           "view " << shape_str(new_shape) << " of a tensor of shape " << shape_str(shape()));
  Tensor out = detach();
  out.impl_->shape = new_shape;
  return out;
}

Tensor Tensor::select(int64_t i) const {
  PF_CHECK(ndim() >= 1 && i >= 0 && i < size(0),
           "select " << i << " of a tensor of shape " << shape_str(shape()));
  Tensor out = detach();
  out.impl_->shape.erase(out.impl_->shape.begin());
  out.impl_->offset += static_cast<size_t>(i) * out.nbytes();
  return out;
}

void Tensor::copy_(const Tensor& src) {
  PF_CHECK(src.numel() == numel(), "copy_ of " << src.str() << " into " << str());
  if (src.dtype() == dtype()) {
    copy_bytes(data_ptr(), device(), src.data_ptr(), src.device(), nbytes());
    return;
  }
  PF_CHECK(device() == Device::CPU && src.device() == Device::CPU,
           "converting copy between devices: " << src.str() << " into " << str()
                                               << " (convert on one device first)");
  convert_host(data_ptr(), dtype(), src.data_ptr(), src.dtype(), numel());
}

void Tensor::fill_(double value) {
  if (device() == Device::CPU) {
    const int64_t n = numel();
    if (dtype() == DType::F32) {
      float* p = data<float>();
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(value);
    } else {
      for (int64_t i = 0; i < n; ++i) store_from_double(data_ptr(), dtype(), i, value);
    }
    return;
  }
#ifdef PF_WITH_CUDA
  // On the device, without an upload (so that a fill can be captured in a CUDA graph): zeros by
  // memset, float values by the fill kernel, which rounds as the host conversion does.
  if (value == 0.0 && !std::signbit(value)) {
    kernels::cuda::memset_zero(data_ptr(), nbytes());
    return;
  }
  if (dtype() == DType::F32 || dtype() == DType::F64 || dtype() == DType::BF16) {
    kernels::cuda::fill(ops::detail::scalar_type_of(dtype()), data_ptr(), value, numel());
    return;
  }
#endif
  Tensor host = full(shape(), value, dtype(), Device::CPU);
  copy_bytes(data_ptr(), device(), host.data_ptr(), Device::CPU, nbytes());
}

void Tensor::set_data(const Tensor& src) {
  check_defined("set_data()");
  PF_CHECK(src.defined(), "set_data() from an undefined tensor");
  impl_->storage = src.impl_->storage;
  impl_->offset = src.impl_->offset;
  impl_->shape = src.impl_->shape;
  impl_->dtype = src.impl_->dtype;
  impl_->device = src.impl_->device;
}

// ---------------------------------------------------------------------------------------------
// autograd hooks

bool Tensor::requires_grad() const { return impl_ && impl_->requires_grad; }

Tensor& Tensor::requires_grad_(bool on) {
  check_defined("requires_grad_()");
  PF_CHECK(!impl_->grad_fn, "requires_grad_ on a non-leaf tensor (" << str() << ")");
  PF_CHECK(!on || is_floating(dtype()), "requires_grad_ on a " << dtype_name(dtype()) << " tensor");
  impl_->requires_grad = on;
  return *this;
}

bool Tensor::is_leaf() const { return !impl_ || !impl_->grad_fn; }

Tensor Tensor::grad() const {
  check_defined("grad()");
  return impl_->grad;
}

void Tensor::set_grad(const Tensor& g) {
  check_defined("set_grad()");
  PF_CHECK(!g.defined() || g.shape() == shape(),
           "gradient of shape " << shape_str(g.shape()) << " for a tensor of shape " << shape_str(shape()));
  impl_->grad = g;
}

void Tensor::zero_grad() {
  check_defined("zero_grad()");
  impl_->grad = Tensor();
}

const std::shared_ptr<Node>& Tensor::grad_fn() const {
  check_defined("grad_fn()");
  return impl_->grad_fn;
}

void Tensor::set_grad_fn(std::shared_ptr<Node> node) {
  check_defined("set_grad_fn()");
  impl_->grad_fn = std::move(node);
  impl_->requires_grad = impl_->grad_fn != nullptr;
}

void Tensor::backward(const Tensor& grad_output) const { run_backward(*this, grad_output); }

const std::string& Tensor::name() const {
  check_defined("name()");
  return impl_->name;
}

Tensor& Tensor::set_name(const std::string& n) {
  check_defined("set_name()");
  impl_->name = n;
  return *this;
}

}  // namespace pf
