// `train --gradcheck`: the model's gradients against finite differences.
#pragma once
#include "framework/config.h"

namespace pf::run {

// Finite-difference check (float64, CPU) of every parameter's gradient on a tiny batch.
int gradcheck(const Config& cfg);

}  // namespace pf::run
