#include "framework/optim.h"

#include <algorithm>
#include <cmath>

#include "framework/profile.h"
#include "kernels/cpu/adamw.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/adamw.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/elementwise.h"
#endif

namespace pf::optim {

namespace {

// One parameter's share of an AdamW update: its tensors and its own weight decay.
struct AdamWSlot {
  const std::string& name;
  Tensor p, g, m, v;
  double weight_decay;
};

// One update of every slot (on the CPU) at step s; s.weight_decay is unused (each slot has its
// own).
void launch_adamw_cpu(std::vector<AdamWSlot>& slots, const kernels::cpu::AdamWStep& s) {
  for (AdamWSlot& a : slots) {
    kernels::cpu::AdamWStep sa = s;
    sa.weight_decay = a.weight_decay;
    if (a.p.dtype() == DType::F32) {
      kernels::cpu::adamw_update(a.p.data<float>(), a.g.data<float>(), a.m.data<float>(), a.v.data<float>(),
                                 a.p.numel(), sa);
    } else if (a.p.dtype() == DType::F64) {
      kernels::cpu::adamw_update(a.p.data<double>(), a.g.data<double>(), a.m.data<double>(),
                                 a.v.data<double>(), a.p.numel(), sa);
    } else {
      PF_FAIL("AdamW: parameter '" << a.name << "' has dtype " << dtype_name(a.p.dtype())
                                   << ", expected float32 or float64 master weights");
    }
  }
}

bool on_gpu(const std::vector<Tensor>& params) {
  return !params.empty() && params[0].device() == Device::CUDA;
}

#ifdef PF_WITH_CUDA
// The defined gradients of params, for the kernels that take many tensors in one launch.
std::vector<kernels::cuda::TensorRef> gpu_grads(const std::vector<Tensor>& params) {
  std::vector<kernels::cuda::TensorRef> out;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    PF_CHECK(g.device() == Device::CUDA && (g.dtype() == DType::F32 || g.dtype() == DType::BF16),
             "clip_grad_norm: gradients must all be float32/bfloat16 on the GPU, got " << g.str());
    out.push_back({g.dtype() == DType::F32 ? kernels::ScalarType::F32 : kernels::ScalarType::BF16,
                   g.data_ptr(), g.numel()});
  }
  return out;
}
#endif

// Σ‖g‖² over the gradients (CPU).
double total_sum_of_squares(const std::vector<Tensor>& params) {
  double sq = 0;
  for (const Tensor& p : params)
    if (p.grad().defined()) sq += ops::sum_of_squares(p.grad());
  return sq;
}

// g ← g·coef for every gradient (CPU).
void scale_grads(const std::vector<Tensor>& params, double coef) {
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (g.defined()) ops::scale_(g, coef);
  }
}

}  // namespace

AdamW::AdamW(nn::NamedTensors params, std::vector<bool> decay, AdamWOptions opt)
    : params_(std::move(params)), decay_(std::move(decay)), opt_(opt) {
  PF_CHECK(decay_.size() == params_.size(),
           "AdamW: " << decay_.size() << " decay flags for " << params_.size() << " parameters");
  for (const auto& [name, p] : params_) {
    m_.push_back(Tensor::zeros(p.shape(), p.dtype(), p.device()));
    v_.push_back(Tensor::zeros(p.shape(), p.dtype(), p.device()));
  }
  if (!params_.empty() && params_[0].second.device() == Device::CUDA) {
    t_dev_ = Tensor::zeros({}, DType::F64, Device::CUDA);
    scratch_ = Tensor::zeros({64}, DType::U8, Device::CUDA);
    step_lr_ = Tensor::zeros({}, DType::F64, Device::CUDA);
    go_one_ = Tensor::full({}, 1.0, DType::I32, Device::CUDA);
  }
}

void AdamW::step(double lr) {
  if (t_dev_.defined()) {  // GPU: the device update with this lr and go = 1
    step_lr_.fill_(lr);
    step(step_lr_, go_one_);
    return;
  }
  const profile::Scope ps("optimizer");
  ++t_;
  std::vector<AdamWSlot> slots;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i].second;
    Tensor g = p.grad();
    if (!g.defined()) continue;
    PF_CHECK(p.device() == Device::CPU, "AdamW: parameter '" << params_[i].first << "' is on "
                                                             << device_name(p.device())
                                                             << ", the optimizer was made for the CPU");
    slots.push_back({params_[i].first, p, g, m_[i], v_[i], decay_[i] ? opt_.weight_decay : 0.0});
  }
  launch_adamw_cpu(slots, {lr, opt_.beta1, opt_.beta2, opt_.eps, 0.0, t_});
}

void AdamW::step(const Tensor& lr, const Tensor& go) {
  const profile::Scope ps("optimizer");
  PF_CHECK(t_dev_.defined(), "AdamW::step(lr, go) takes GPU parameters; these are on the CPU");
  PF_CHECK(lr.device() == Device::CUDA && lr.dtype() == DType::F64 && lr.numel() == 1 &&
               go.device() == Device::CUDA && go.dtype() == DType::I32 && go.numel() == 1,
           "AdamW::step: lr must be a float64 and go an int32 scalar on the GPU, got " << lr.str() << " and "
                                                                                       << go.str());
#ifdef PF_WITH_CUDA
  std::vector<kernels::cuda::AdamWTensor> ts;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor p = params_[i].second;
    Tensor g = p.grad();
    if (!g.defined()) continue;
    PF_CHECK(p.dtype() == DType::F32 && g.dtype() == DType::F32 && p.device() == Device::CUDA,
             "AdamW: parameter '" << params_[i].first << "' on the GPU must be float32 master "
                                  << "weights with a float32 gradient, got " << p.str() << " and gradient "
                                  << g.str());
    ts.push_back({static_cast<float*>(p.data_ptr()), static_cast<const float*>(g.data_ptr()),
                  static_cast<float*>(m_[i].data_ptr()), static_cast<float*>(v_[i].data_ptr()), p.numel(),
                  decay_[i] ? opt_.weight_decay : 0.0});
  }
  kernels::cuda::adamw_update_many(
      ts, {static_cast<const double*>(lr.data_ptr()), static_cast<const int*>(go.data_ptr()),
           static_cast<double*>(t_dev_.data_ptr()), scratch_.data_ptr(), opt_.beta1, opt_.beta2, opt_.eps});
#endif
}

int64_t AdamW::steps_taken() const { return t_dev_.defined() ? static_cast<int64_t>(t_dev_.item()) : t_; }

void AdamW::set_steps_taken(int64_t t) {
  t_ = t;
  if (t_dev_.defined()) t_dev_.fill_(static_cast<double>(t));
}

nn::NamedTensors AdamW::state() const {
  nn::NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) out.emplace_back("m." + params_[i].first, m_[i]);
  for (size_t i = 0; i < params_.size(); ++i) out.emplace_back("v." + params_[i].first, v_[i]);
  return out;
}

std::vector<bool> decay_mask(const nn::NamedTensors& params, const std::vector<std::string>& embeddings) {
  std::vector<bool> out;
  for (const auto& [name, p] : params) {
    const bool is_weight = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
    const bool is_embedding = std::find(embeddings.begin(), embeddings.end(), name) != embeddings.end();
    out.push_back(is_weight && p.ndim() == 2 && !is_embedding);
  }
  return out;
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  if (on_gpu(params)) return clip_grad_norm_on_device(params, max_norm).to_vector<double>()[0];
  const profile::Scope ps("optimizer");
  const double sq = total_sum_of_squares(params);
  const double norm = std::sqrt(sq);
  const double coef = max_norm / (norm + 1e-6);
  if (max_norm > 0 && coef < 1.0) scale_grads(params, coef);
  return norm;
}

Tensor clip_grad_norm_on_device(const std::vector<Tensor>& params, double max_norm) {
  const profile::Scope ps("optimizer");
  PF_CHECK(on_gpu(params), "clip_grad_norm_on_device takes GPU parameters");
  Tensor norm_coef = Tensor::zeros({2}, DType::F64, Device::CUDA);
#ifdef PF_WITH_CUDA
  double* nc = static_cast<double*>(norm_coef.data_ptr());
  const std::vector<kernels::cuda::TensorRef> grads = gpu_grads(params);
  kernels::cuda::sum_of_squares_many(grads, nc);
  kernels::cuda::clip_coefficient(nc, max_norm);
  if (max_norm > 0) kernels::cuda::scale_many(grads, 1.0, nc + 1);
#else
  (void)max_norm;
#endif
  return norm_coef;
}

Tensor finite_flag(const Tensor& loss, const Tensor& norm) {
  PF_CHECK(loss.device() == Device::CUDA && loss.dtype() == DType::F32 && loss.numel() == 1 &&
               norm.device() == Device::CUDA && norm.dtype() == DType::F64,
           "finite_flag: a float32 loss and a float64 norm on the GPU, got " << loss.str() << " and "
                                                                             << norm.str());
  Tensor go = Tensor::empty({}, DType::I32, Device::CUDA);
#ifdef PF_WITH_CUDA
  kernels::cuda::finite_flag(static_cast<const float*>(loss.data_ptr()),
                             static_cast<const double*>(norm.data_ptr()), static_cast<int*>(go.data_ptr()));
#endif
  return go;
}

double lr_at(int64_t step, double lr, double min_lr, int64_t warmup, int64_t total) {
  if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double progress =
      static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double pi = 3.14159265358979323846;
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(pi * std::min(progress, 1.0)));
}

}  // namespace pf::optim
