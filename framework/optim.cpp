#include "framework/optim.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/adamw.h"

namespace pf::optim {

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
  ++t_;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor p = params_[i].second;
    Tensor g = p.grad();
    if (!g.defined()) continue;
    const kernels::cpu::AdamWStep s{lr, opt_.beta1, opt_.beta2, opt_.eps,
                                    decay_[i] ? opt_.weight_decay : 0.0, t_};
    PF_CHECK(p.device() == Device::CPU, "AdamW: CUDA parameters need the CUDA backend");
    if (p.dtype() == DType::F32) {
      kernels::cpu::adamw_update(p.data<float>(), g.data<float>(), m_[i].data<float>(),
                                 v_[i].data<float>(), p.numel(), s);
    } else if (p.dtype() == DType::F64) {
      kernels::cpu::adamw_update(p.data<double>(), g.data<double>(), m_[i].data<double>(),
                                 v_[i].data<double>(), p.numel(), s);
    } else {
      PF_FAIL("AdamW: parameter '" << params_[i].first << "' has dtype " << dtype_name(p.dtype())
                                   << ", expected float32 or float64 master weights");
    }
  }
}

nn::NamedTensors AdamW::state() const {
  nn::NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) out.emplace_back("m." + params_[i].first, m_[i]);
  for (size_t i = 0; i < params_.size(); ++i) out.emplace_back("v." + params_[i].first, v_[i]);
  return out;
}

std::vector<bool> decay_mask(const nn::NamedTensors& params,
                             const std::vector<std::string>& embeddings) {
  std::vector<bool> out;
  for (const auto& [name, p] : params) {
    const bool is_weight = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
    const bool is_embedding =
        std::find(embeddings.begin(), embeddings.end(), name) != embeddings.end();
    out.push_back(is_weight && p.ndim() == 2 && !is_embedding);
  }
  return out;
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  double sq = 0;
  for (const Tensor& p : params)
    if (p.grad().defined()) sq += ops::sum_of_squares(p.grad());
  const double norm = std::sqrt(sq);
  const double coef = max_norm / (norm + 1e-6);
  if (max_norm > 0 && coef < 1.0) {
    for (const Tensor& p : params) {
      Tensor g = p.grad();
      if (g.defined()) ops::scale_(g, coef);
    }
  }
  return norm;
}

double lr_at(int64_t step, double lr, double min_lr, int64_t warmup, int64_t total) {
  if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double progress = static_cast<double>(step - warmup) /
                          static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double pi = 3.14159265358979323846;
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(pi * std::min(progress, 1.0)));
}

}  // namespace pf::optim
