// Reverse-mode automatic differentiation.
//
// Each differentiable op builds its result with make_result(out, name, inputs, backward): when
// grad mode is on and some input requires grad, the result gets a Node holding the inputs (the
// graph's edges) and a closure that maps the result's gradient to one gradient per input.
// run_backward() orders the graph topologically, calls each closure once, adds gradients that
// reach a tensor along several paths, and accumulates (+=) into the leaves' grad(). Each closure
// is released right after it runs, so the activations it saved are freed during the backward;
// a second backward through the same graph is an error.
//
// Rules for op authors:
// - Capture what the backward needs by value; capture the op's own output only as
//   out.detach() (capturing `out` itself would make a reference cycle).
// - Return an undefined Tensor for an input that gets no gradient; otherwise a tensor with the
//   input's exact shape, dtype and device.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "framework/tensor.h"

namespace pf {

struct Node {
  using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out)>;
  std::string name;            // the op, for messages ("layernorm", "attention", ...)
  std::vector<Tensor> inputs;  // edges to the inputs, in the order the closure returns grads
  BackwardFn backward;         // null once it has run (saved tensors freed)
};

bool grad_enabled();

// Disables graph recording in its scope (evaluation, optimizer updates, finite differences).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// True when an op on these inputs must record a Node.
bool needs_grad(const std::vector<Tensor>& inputs);

// Attaches a Node to `out` if needs_grad(inputs); returns `out` either way.
Tensor make_result(Tensor out, const char* name, std::vector<Tensor> inputs, Node::BackwardFn backward);

// Backward from `root` (called by Tensor::backward).
void run_backward(const Tensor& root, const Tensor& grad_output);

// Called by run_backward with each leaf of the graph as soon as its gradient is final for this
// backward (every node that consumes it has run), in that order; the leaf's grad() may be
// undefined when no gradient reached it. Lets data-parallel training start reducing gradients
// while the rest of the backward runs (framework/distributed.h).
using LeafGradHook = std::function<void(const Tensor& leaf)>;
// Installs `hook` for the backward passes run in its scope on this thread.
class LeafGradHookGuard {
 public:
  explicit LeafGradHookGuard(LeafGradHook hook);
  ~LeafGradHookGuard();
  LeafGradHookGuard(const LeafGradHookGuard&) = delete;
  LeafGradHookGuard& operator=(const LeafGradHookGuard&) = delete;

 private:
  LeafGradHook previous_;
};

}  // namespace pf
