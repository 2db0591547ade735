#include "framework/random.h"

#include <cmath>
#include <functional>
#include <sstream>
#include <vector>

namespace pf {

double Rng::uniform() {
  return static_cast<double>(engine_() >> 11) * 0x1.0p-53;  // the top 53 bits, exactly
}

double Rng::normal() {
  // Box–Muller: u1 in (0, 1] so that log(u1) is finite.
  const double u1 = 1.0 - uniform();
  const double u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

int64_t Rng::randint(int64_t lo, int64_t hi) {
  PF_CHECK(lo < hi, "randint: empty range [" << lo << ", " << hi << ")");
  const uint64_t range = static_cast<uint64_t>(hi - lo);
  // Rejection of the incomplete last block keeps every value equally likely.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % range;
  uint64_t x;
  do {
    x = engine_();
  } while (x >= limit);
  return lo + static_cast<int64_t>(x % range);
}

std::string Rng::state() const {
  std::ostringstream os;
  os << engine_;
  return os.str();
}

void Rng::set_state(const std::string& s) {
  std::istringstream is(s);
  std::mt19937_64 e;
  is >> e;
  PF_CHECK(!is.fail(), "Rng::set_state: the text is not an mt19937_64 state (" << s.size() << " characters)");
  engine_ = e;
}

namespace {
Tensor fill_double(const Shape& shape, DType dtype, const char* what, const std::function<double()>& draw) {
  PF_CHECK(is_floating(dtype), what << ": dtype must be floating, got " << dtype_name(dtype));
  std::vector<double> v(shape_numel(shape));
  for (double& x : v) x = draw();
  return Tensor::from_vector(v, shape, dtype);
}
}  // namespace

Tensor randn(const Shape& shape, Rng& rng, DType dtype) {
  return fill_double(shape, dtype, "randn", [&] { return rng.normal(); });
}

Tensor uniform(const Shape& shape, double lo, double hi, Rng& rng, DType dtype) {
  PF_CHECK(lo <= hi, "uniform: lo " << lo << " > hi " << hi);
  return fill_double(shape, dtype, "uniform", [&] { return rng.uniform(lo, hi); });
}

Tensor randint(const Shape& shape, int lo, int hi, Rng& rng) {
  PF_CHECK(lo < hi, "randint: empty range [" << lo << ", " << hi << ")");
  std::vector<int32_t> v(shape_numel(shape));
  for (int32_t& x : v) x = static_cast<int32_t>(rng.randint(lo, hi));
  return Tensor::from_vector(v, shape, DType::I32);
}

}  // namespace pf
