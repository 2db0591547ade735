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
// - Gradients returned by a plain closure may alias (add's backward hands its gradient to both
//   inputs): autograd never writes into them. It adds a later arrival for the same tensor into
//   a fresh sum, and further arrivals into that sum in place (it owns it).
//
// Adding into the running sum (make_result_into). A tensor used by many ops (the pair
// representation, read by every layer) gets one gradient per use; an op whose kernel can add
// (+=) as cheaply as it writes (=) saves the sum's extra pass by adding into the buffer autograd
// already holds. Its closure gets, per input, `into[i]`: the gradient sum autograd holds for
// input i so far when autograd owns it exclusively (a sum it made, or a fresh gradient of another
// make_result_into op), else undefined (no gradient yet, a leaf, or one an op handed in, which
// may alias). The closure returns per input one of
//   - undefined: no gradient for this input;
//   - into[i] itself, after adding its gradient into it (+=): nothing is left to add;
//   - a fresh tensor that nothing else refers to (as a plain closure would, but never an alias
//     of grad_out or of a saved tensor): autograd takes it over and may add later arrivals into
//     it in place.
// into[i] has the input's shape, dtype and device; the closure must not keep it. An op that
// cannot add into a given buffer (its kernel wants another layout) returns a fresh gradient.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "framework/tensor.h"

namespace pf {

struct Node {
  using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out)>;
  // into: one per input, the gradient sum the closure may add into (see the rules above).
  using BackwardIntoFn =
      std::function<std::vector<Tensor>(const Tensor& grad_out, const std::vector<Tensor>& into)>;
  std::string name;              // the op, for messages ("layernorm", "attention", ...)
  std::vector<Tensor> inputs;    // edges to the inputs, in the order the closure returns grads
  BackwardFn backward;           // one of the two is set; both null once it has run (saved
  BackwardIntoFn backward_into;  // tensors freed)
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

// The same for an op whose closure may add into the gradient sums autograd owns (the rules above).
Tensor make_result_into(Tensor out, const char* name, std::vector<Tensor> inputs,
                        Node::BackwardIntoFn backward);

// Backward from `root` (called by Tensor::backward).
void run_backward(const Tensor& root, const Tensor& grad_output);

// How the gradients of graph tensors reaching one tensor along several paths were summed, over
// the last run_backward on this thread (tests and profiles read it).
struct BackwardSums {
  int64_t fresh = 0;     // sums allocated by autograd (first two arrivals, neither owned)
  int64_t in_place = 0;  // arrivals autograd added into a sum it owns
  int64_t by_op = 0;     // arrivals an op added into the sum itself (make_result_into)
};
BackwardSums last_backward_sums();

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
