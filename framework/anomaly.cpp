// Anomaly mode: see anomaly.h for what is checked and how layers are named.
#include "framework/anomaly.h"

#include <atomic>
#include <cmath>
#include <vector>

namespace pf::anomaly {

namespace {

std::atomic<bool> g_enabled{false};

struct Frame {
  const char* name;
  int index;  // -1: none
};
thread_local std::vector<Frame> t_scopes;

std::string scope_text(const std::string& scope) {
  return scope.empty() ? "at the top level (outside any module)" : "in " + scope;
}

template <class T>
int64_t scan(const T* p, int64_t n, std::string* what) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) {
      if (what) *what = std::isnan(p[i]) ? "nan" : "inf";
      return i;
    }
  return -1;
}

}  // namespace

bool enabled() { return g_enabled.load(std::memory_order_relaxed); }
void set_enabled(bool on) { g_enabled.store(on, std::memory_order_relaxed); }

EnableGuard::EnableGuard(bool on) : previous_(enabled()) { set_enabled(on); }
EnableGuard::~EnableGuard() { set_enabled(previous_); }

// Pushed whether or not the mode is on, so that switching it on mid-forward keeps the stack
// balanced; a push is two words.
Scope::Scope(const char* name, int index) { t_scopes.push_back({name, index}); }
Scope::~Scope() { t_scopes.pop_back(); }

std::string current_scope() {
  std::string out;
  for (const Frame& f : t_scopes) {
    if (f.name[0] == '\0' && f.index < 0) continue;  // an unnamed module's scope adds nothing
    if (!out.empty()) out += '.';
    out += f.name;
    if (f.index >= 0) out += "." + std::to_string(f.index);
  }
  return out;
}

int64_t first_non_finite(const Tensor& t, std::string* what) {
  if (!t.defined() || !is_floating(t.dtype()) || t.numel() == 0) return -1;
  if (t.device() == Device::CPU && t.dtype() == DType::F32) return scan(t.data<float>(), t.numel(), what);
  if (t.device() == Device::CPU && t.dtype() == DType::F64) return scan(t.data<double>(), t.numel(), what);
  const std::vector<double> host = t.to_vector<double>();  // CUDA, bf16, fp16
  return scan(host.data(), static_cast<int64_t>(host.size()), what);
}

namespace {
// " (first at flat index k, [i0, i1, …])": the multi-index names the slice (a stacked op's
// leading dim is its layer)
std::string first_at(const Shape& shape, int64_t at) {
  std::string idx;
  int64_t rest = at;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    const int64_t n = shape[d] > 0 ? shape[d] : 1;
    idx = std::to_string(rest % n) + (idx.empty() ? "" : ", ") + idx;
    rest /= n;
  }
  return " (first at flat index " + std::to_string(at) + (shape.size() > 1 ? ", [" + idx + "]" : "") + ")";
}
}  // namespace

void check_forward(const Tensor& out, const char* op) {
  if (!enabled()) return;
  std::string what;
  const int64_t at = first_non_finite(out, &what);
  if (at >= 0)
    PF_FAIL("non-finite value (" << what << ") in the forward of '" << op << "': output "
                                 << shape_str(out.shape()) << " " << scope_text(current_scope())
                                 << first_at(out.shape(), at));
}

namespace {
// fn (a Node::BackwardFn or BackwardIntoFn) wrapped so that its gradients are checked.
template <class Fn>
Fn checked(Fn fn, const char* op) {
  if (!enabled()) return fn;
  return [fn = std::move(fn), op, scope = current_scope()](const auto&... args) {
    std::vector<Tensor> grads = fn(args...);
    for (size_t i = 0; i < grads.size(); ++i) {
      std::string what;
      const int64_t at = first_non_finite(grads[i], &what);
      if (at >= 0)
        PF_FAIL("non-finite value (" << what << ") in the backward of '" << op << "': gradient of input " << i
                                     << " " << shape_str(grads[i].shape()) << " " << scope_text(scope)
                                     << first_at(grads[i].shape(), at));
    }
    return grads;
  };
}
}  // namespace

Node::BackwardFn checked_backward(Node::BackwardFn fn, const char* op) { return checked(std::move(fn), op); }
Node::BackwardIntoFn checked_backward(Node::BackwardIntoFn fn, const char* op) {
  return checked(std::move(fn), op);
}

}  // namespace pf::anomaly
