// Anomaly mode (train.detect_anomaly): finds the first op, forward or backward, that produced a
// non-finite value, and names it with its shape and the layer it belongs to:
//
//   non-finite value (nan) in the forward of 'layernorm': output [32, 64, 64, 16] in
//   layers.1.pair_norm (first at flat index 0)
//
// How it works (stated once, here):
// - make_result (framework/autograd.cpp) calls check_forward on every op's output, and wraps
//   the op's backward closure with checked_backward, which checks every input gradient the
//   closure returns. Both do nothing unless the mode is on; the first failure is a pf::Error.
// - Layer names come from a thread-local stack of module scopes: every module's forward opens its
//   own scope first (nn::Module::scope(), the name its parent registered it under), so the names
//   joined by '.' are the parameter prefixes of docs/DESIGN.md §4 ("layers.1.pair_norm"). An op
//   outside any module is "the top level".
// - A backward is named by the scope its op was recorded in during the forward.
// - Only floating-point tensors are checked; a CUDA tensor is copied to the host to be checked
//   (the mode is for finding a bug, not for speed).
#pragma once
#include <string>
#include <utility>

#include "framework/autograd.h"

namespace pf::anomaly {

bool enabled();
void set_enabled(bool on);  // process-wide

// Turns the mode on or off for its lifetime and restores the previous setting.
class EnableGuard {
 public:
  explicit EnableGuard(bool on);
  ~EnableGuard();
  EnableGuard(const EnableGuard&) = delete;
  EnableGuard& operator=(const EnableGuard&) = delete;

 private:
  bool previous_;
};

// One module scope on this thread's stack: `name`, or "name.index" when index >= 0
// ("layers", 1 → "layers.1"); an empty name adds nothing. `name` must outlive the scope (string
// literals and a module's own name do).
class Scope {
 public:
  explicit Scope(const char* name, int index = -1);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
};

// f() run inside Scope(name[, index]); returns what f returns.
template <class F>
auto in_scope(const char* name, F&& f) {
  Scope s(name);
  return std::forward<F>(f)();
}
template <class F>
auto in_scope(const char* name, int index, F&& f) {
  Scope s(name, index);
  return std::forward<F>(f)();
}

// The current scope path ("layers.1.pair_norm"), "" at the top level.
std::string current_scope();

// If the mode is on and `out` holds a NaN or an infinity: a pf::Error naming the op, the
// shape and the current scope.
void check_forward(const Tensor& out, const char* op);

// If the mode is on: `fn` wrapped so that each gradient it returns is checked, naming the op,
// the input, its shape and the scope of the forward (captured now). Otherwise `fn` itself.
Node::BackwardFn checked_backward(Node::BackwardFn fn, const char* op);
Node::BackwardIntoFn checked_backward(Node::BackwardIntoFn fn, const char* op);

// The first non-finite element of a floating tensor: its flat index, or -1 if all are finite
// (and for non-floating tensors). `what` receives "nan" or "inf".
int64_t first_non_finite(const Tensor& t, std::string* what = nullptr);

}  // namespace pf::anomaly
