// Finite-difference gradient checks: one mechanism for a single op, a module or the whole model.
//
// loss() computes a tensor from `params` (it reads them: captured by reference, or owned by a
// module). The checker differentiates the scalar
//     L = Σ loss() ∘ W      with a fixed random W of loss()'s shape   (L = loss() if it is scalar)
// by one backward (the analytic gradient) and by central differences, element by element:
//     ∂L/∂x ≈ (L(x + eps) − L(x − eps)) / (2·eps),
// moving x in place and writing its original bits back afterwards. Params must be float64 CPU
// leaves that require grad. On return their values are unchanged and their grads are cleared.
//
// Float64 with eps = 1e-6: the central difference's truncation error is O(eps²·|f'''|) ≈ 1e-12
// and its rounding error is O(ε_64·|L|/eps) ≈ 1e-10·|L| per element, so an honest gradient of
// size O(1) shows a relative error around 1e-9 while a wrong one shows O(1). A gradient much
// smaller than |L| is resolved correspondingly worse (relative error ~1e-10·|L|/|∂L/∂x|).
// Where both the analytic and the numeric gradient of a param lie below the rounding level
// (1000·2⁻⁵²·Σ|loss()∘W| / eps per element) they count as both zero: rel_error = 0.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "framework/tensor.h"

namespace pf {

struct GradcheckOptions {
  double eps = 1e-6;
  int64_t max_elements = 0;  // per param: 0 = all; else a seeded random subset of this size
  uint64_t seed = 0;         // for W and the subsets
};

struct GradcheckEntry {
  std::string name;
  int64_t checked = 0;  // elements compared
  double rel_error = 0;  // ‖analytic − numeric‖₂ / max(‖numeric‖₂, ‖analytic‖₂); 0 if both 0
                         // (both below the finite-difference resolution, see above)
  double max_abs_error = 0;  // max |analytic − numeric|
};

// One entry per param, in order.
std::vector<GradcheckEntry> gradcheck(const std::function<Tensor()>& loss,
                                      const std::vector<std::pair<std::string, Tensor>>& params,
                                      const GradcheckOptions& opt = {});

}  // namespace pf
