#include "framework/optim.h"

#include <algorithm>
#include <cmath>
#include <map>

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

// ---- the kernels of the parameters' device: CPU float32/float64, CUDA float32 (bfloat16 grads) --

// One update of every slot (all on `device`) at step s; s.weight_decay is unused (each slot has
// its own). On the GPU, one launch updates many tensors.
void launch_adamw(std::vector<AdamWSlot>& slots, Device device, const kernels::cpu::AdamWStep& s) {
#ifdef PF_WITH_CUDA
  if (device == Device::CUDA) {
    std::vector<kernels::cuda::AdamWTensor> ts;
    for (AdamWSlot& a : slots) {
      PF_CHECK(a.p.dtype() == DType::F32 && a.g.dtype() == DType::F32,
               "AdamW: parameter '" << a.name << "' on the GPU must be float32 master "
                                    << "weights with a float32 gradient, got " << a.p.str()
                                    << " and gradient " << a.g.str());
      ts.push_back({static_cast<float*>(a.p.data_ptr()), static_cast<const float*>(a.g.data_ptr()),
                    static_cast<float*>(a.m.data_ptr()), static_cast<float*>(a.v.data_ptr()), a.p.numel(),
                    a.weight_decay});
    }
    kernels::cuda::adamw_update_many(ts, s);
    return;
  }
#endif
  (void)device;
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

#ifdef PF_WITH_CUDA
bool on_gpu(const std::vector<Tensor>& params) {
  return !params.empty() && params[0].device() == Device::CUDA;
}

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

// Σ‖g‖² over the gradients; on the GPU summed into one device value and read back once.
double total_sum_of_squares(const std::vector<Tensor>& params) {
#ifdef PF_WITH_CUDA
  if (on_gpu(params)) {
    Tensor acc = Tensor::empty({}, DType::F64, Device::CUDA);
    kernels::cuda::memset_zero(acc.data_ptr(), sizeof(double));
    kernels::cuda::sum_of_squares_many(gpu_grads(params), static_cast<double*>(acc.data_ptr()));
    return acc.item();
  }
#endif
  double sq = 0;
  for (const Tensor& p : params)
    if (p.grad().defined()) sq += ops::sum_of_squares(p.grad());
  return sq;
}

// g ← g·coef for every gradient; on the GPU in one launch for many tensors.
void scale_grads(const std::vector<Tensor>& params, double coef) {
#ifdef PF_WITH_CUDA
  if (on_gpu(params)) {
    kernels::cuda::scale_many(gpu_grads(params), coef);
    return;
  }
#endif
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
}

void AdamW::step(double lr) {
  const profile::Scope ps("optimizer");
  ++t_;
  // The parameters with a gradient, by device: each device updates its share together.
  std::map<Device, std::vector<AdamWSlot>> by_device;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i].second;
    Tensor g = p.grad();
    if (!g.defined()) continue;
    by_device[p.device()].push_back(
        {params_[i].first, p, g, m_[i], v_[i], decay_[i] ? opt_.weight_decay : 0.0});
  }
  for (auto& [device, slots] : by_device)
    launch_adamw(slots, device, {lr, opt_.beta1, opt_.beta2, opt_.eps, 0.0, t_});
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
  const profile::Scope ps("optimizer");
  const double sq = total_sum_of_squares(params);
  const double norm = std::sqrt(sq);
  const double coef = max_norm / (norm + 1e-6);
  if (max_norm > 0 && coef < 1.0) scale_grads(params, coef);
  return norm;
}

double lr_at(int64_t step, double lr, double min_lr, int64_t warmup, int64_t total) {
  if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double progress =
      static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double pi = 3.14159265358979323846;
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(pi * std::min(progress, 1.0)));
}

}  // namespace pf::optim
