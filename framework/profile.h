// Where a training step's time goes: a per-category time split, off by default.
//
//   profile::Scope s("gemm");               // in an op's forward: times the work queued in scope
//   make_result(y, "linear", {x, w, b}, profile::timed([=](const Tensor& g) { ... }));
//                                           // the op's backward closure, timed as "gemm" too
//
// How it works (stated once, here):
// - While profiling is on, the outermost Scope on the thread records a start and an end mark:
//   CUDA events on the framework's one stream (kernels/cuda/context.h) when the profile's device
//   is the GPU, host clock readings on the CPU. Nested scopes add nothing, so an op built from
//   other ops (or a module that opens a scope around several ops) is charged once, to the
//   outermost category. The span between the two GPU marks is stream time: it includes time the
//   GPU waited for the host to queue the scope's work, so launch-bound steps show up as such.
// - Categories are short names chosen by the caller ("attention", "gemm", "layernorm",
//   "elementwise", "softmax_loss", "pair_bias", "optimizer", "data", ...). A scope opened inside
//   the pair representation's module scope (framework/anomaly.h: "pair") is charged to
//   "pair_features", one inside a layer's "pair_norm" or "pair_proj" to "pair_bias", whatever its
//   op is: the pair tensors' costs stand apart from the rest of the step, and from each other.
// - Each record goes to the forward or the backward column: backward when it runs inside a
//   closure wrapped by timed() (the closure is charged to the category its forward resolved),
//   or when grad mode is off (in a training step: the gradient sums of run_backward).
//   Optimizer and data scopes are opened with grad mode on or off; they have one column each.
// - Off (the default), a Scope is one branch on a relaxed atomic and timed() returns the closure
//   unchanged. set_enabled() is for between steps, not inside one.
// - collect() waits for the device and folds the finished records into per-category totals;
//   report() returns them and reset() clears them. Call collect() now and then (each step) so
//   that the record buffer stays small.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "framework/autograd.h"

namespace pf::profile {

bool enabled();
// Turns profiling on for work on `device` (CUDA: events on the stream; CPU: host clock) or off.
void set_enabled(bool on, Device device = Device::CUDA);

class Scope {
 public:
  explicit Scope(const char* category);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  int record_ = -1;  // index of this scope's record, -1 when it records nothing
};

// `fn` wrapped so that, while profiling is on, its run is timed in the backward column of the
// category that the current (outermost) forward scope resolved; `fn` itself when off or when
// no scope is open.
Node::BackwardFn timed(Node::BackwardFn fn);
Node::BackwardIntoFn timed(Node::BackwardIntoFn fn);

// Waits for the recorded work and adds it into the totals (cheap when nothing is pending).
void collect();

struct Row {
  std::string category;
  double fwd_ms = 0, bwd_ms = 0;  // totals since the last reset()
  int64_t fwd_calls = 0, bwd_calls = 0;
};
// The totals, largest first (collects first).
std::vector<Row> report();
void reset();

// A table: per category ms per step (forward, backward, total) and % of `step_ms`, the measured
// time of one step; a last line "untracked" holds step_ms minus everything attributed.
std::string table(const std::vector<Row>& rows, int steps, double step_ms);

}  // namespace pf::profile
