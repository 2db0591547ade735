#include "framework/gradcheck.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "framework/autograd.h"
#include "framework/ops.h"
#include "framework/random.h"

namespace pf {

namespace {

// Σ out ∘ W in double (W empty: out is the scalar L itself).
double weighted_total(const Tensor& out, const std::vector<double>& w) {
  PF_CHECK(out.defined(), "gradcheck: loss() returned an undefined tensor");
  if (w.empty()) return out.item();
  PF_CHECK(static_cast<size_t>(out.numel()) == w.size(),
           "gradcheck: loss() changed shape between calls, now " << out.str());
  const std::vector<double> v = out.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i] * w[i];
  return s;
}

// The flat indices to check: all, or `count` distinct ones drawn with rng (sorted).
std::vector<int64_t> pick_indices(int64_t n, int64_t count, Rng& rng) {
  std::vector<int64_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  if (count <= 0 || count >= n) return all;
  for (int64_t i = 0; i < count; ++i) std::swap(all[i], all[rng.randint(i, n)]);  // partial shuffle
  all.resize(count);
  std::sort(all.begin(), all.end());
  return all;
}

}  // namespace

std::vector<GradcheckEntry> gradcheck(const std::function<Tensor()>& loss,
                                      const std::vector<std::pair<std::string, Tensor>>& params,
                                      const GradcheckOptions& opt) {
  PF_CHECK(opt.eps > 0, "gradcheck: eps must be > 0, got " << opt.eps);
  for (const auto& [name, p] : params) {
    PF_CHECK(p.defined(), "gradcheck: param '" << name << "' is undefined");
    PF_CHECK(p.dtype() == DType::F64 && p.device() == Device::CPU,
             "gradcheck: param '" << name << "' must be a float64 CPU tensor, got " << p.str());
    PF_CHECK(p.is_leaf() && p.requires_grad(),
             "gradcheck: param '" << name << "' must be a leaf that requires grad");
  }
  Rng rng(opt.seed);

  // Analytic: one backward of L = Σ out∘W.
  auto clear_grads = [&] {
    for (const auto& np : params) Tensor(np.second).zero_grad();  // a handle to the same tensor
  };
  clear_grads();
  std::vector<double> w;
  double magnitude = 0;  // Σ|out∘W| (|L| for a scalar): the scale of L's rounding errors
  {
    Tensor out = loss();
    PF_CHECK(out.defined(), "gradcheck: loss() returned an undefined tensor");
    PF_CHECK(out.dtype() == DType::F64, "gradcheck: loss() must return float64, got " << out.str());
    PF_CHECK(out.requires_grad(), "gradcheck: loss() " << out.str() << " does not depend on any param");
    const std::vector<double> v = out.to_vector<double>();
    if (out.numel() == 1) {
      magnitude = std::abs(v[0]);
      out.backward(Tensor::full(out.shape(), 1.0, DType::F64));
    } else {
      w.resize(out.numel());
      for (double& x : w) x = rng.normal();
      for (size_t i = 0; i < v.size(); ++i) magnitude += std::abs(v[i] * w[i]);
      out.backward(Tensor::from_vector(w, out.shape(), DType::F64));
    }
  }
  // The resolution of one central difference: L carries rounding errors of ~2⁻⁵²·magnitude
  // (times the depth of the computation, here allowed up to 1000), divided by the step 2·eps.
  const double resolution = 1e3 * std::ldexp(magnitude, -52) / opt.eps;
  std::vector<std::vector<double>> analytic;
  for (const auto& [name, p] : params) {
    const Tensor g = p.grad();
    analytic.push_back(g.defined() ? g.to_vector<double>() : std::vector<double>(p.numel(), 0.0));
  }
  clear_grads();

  // Numeric: central differences, without recording graphs.
  NoGradGuard no_grad;
  std::vector<GradcheckEntry> entries;
  for (size_t k = 0; k < params.size(); ++k) {
    Tensor p = params[k].second;
    double* x = p.data<double>();
    const std::vector<int64_t> idx = pick_indices(p.numel(), opt.max_elements, rng);
    double diff2 = 0, num2 = 0, ana2 = 0, max_abs = 0;
    for (int64_t i : idx) {
      const double orig = x[i];
      // The steps as represented: (orig + eps) − (orig − eps) is exact, 2·eps may not be.
      const double xp = orig + opt.eps, xm = orig - opt.eps;
      double lp, lm;
      try {
        x[i] = xp;
        lp = weighted_total(loss(), w);
        x[i] = xm;
        lm = weighted_total(loss(), w);
      } catch (...) {
        x[i] = orig;
        throw;
      }
      x[i] = orig;  // the same bits as before
      const double numeric = (lp - lm) / (xp - xm);
      const double a = analytic[k][i];
      diff2 += (a - numeric) * (a - numeric);
      num2 += numeric * numeric;
      ana2 += a * a;
      max_abs = std::max(max_abs, std::abs(a - numeric));
    }
    GradcheckEntry e;
    e.name = params[k].first;
    e.checked = static_cast<int64_t>(idx.size());
    const double denom = std::sqrt(std::max(num2, ana2));
    // Both gradients below what central differences resolve count as both zero: a gradient that
    // is exactly zero in exact arithmetic (a bias before a shift-invariant softmax) otherwise
    // compares rounding noise with rounding noise and reports 1.
    const double floor = resolution * std::sqrt(static_cast<double>(idx.size()));
    e.rel_error = denom <= floor ? 0.0 : std::sqrt(diff2) / denom;
    e.max_abs_error = max_abs;
    entries.push_back(e);
  }
  clear_grads();
  return entries;
}

}  // namespace pf
