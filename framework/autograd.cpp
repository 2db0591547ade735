#include "framework/autograd.h"

#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "framework/anomaly.h"
#include "framework/ops.h"

namespace pf {

namespace {
thread_local bool g_grad_enabled = true;
}

bool grad_enabled() { return g_grad_enabled; }

NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

namespace {
// out with a Node of `name` over `inputs` whose closure `set` installs, if needs_grad(inputs).
template <class Set>
Tensor attach_node(Tensor out, const char* name, std::vector<Tensor> inputs, Set&& set) {
  anomaly::check_forward(out, name);  // anomaly mode only (framework/anomaly.h)
  if (!needs_grad(inputs)) return out;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->inputs = std::move(inputs);
  set(*node);
  out.set_grad_fn(std::move(node));
  return out;
}
}  // namespace

Tensor make_result(Tensor out, const char* name, std::vector<Tensor> inputs, Node::BackwardFn backward) {
  return attach_node(std::move(out), name, std::move(inputs),
                     [&](Node& n) { n.backward = anomaly::checked_backward(std::move(backward), name); });
}

Tensor make_result_into(Tensor out, const char* name, std::vector<Tensor> inputs,
                        Node::BackwardIntoFn backward) {
  return attach_node(std::move(out), name, std::move(inputs), [&](Node& n) {
    n.backward_into = anomaly::checked_backward(std::move(backward), name);
  });
}

namespace {

// Nodes reachable from root, each after every node that consumes its output. The list owns
// them: the backward releases each node's edges as it goes, which may drop the last other owner.
std::vector<std::shared_ptr<Node>> topological_order(const std::shared_ptr<Node>& root_ptr) {
  Node* root = root_ptr.get();
  std::vector<std::shared_ptr<Node>> order;
  std::unordered_set<Node*> visited;
  // Iterative post-order DFS (graphs of deep models would overflow a recursive one).
  std::vector<std::pair<std::shared_ptr<Node>, size_t>> stack{{root_ptr, 0}};
  visited.insert(root);
  while (!stack.empty()) {
    auto& [node, next] = stack.back();
    if (next < node->inputs.size()) {
      const Tensor& in = node->inputs[next++];
      if (in.defined() && in.grad_fn()) {
        const std::shared_ptr<Node>& child = in.grad_fn();
        if (visited.insert(child.get()).second) stack.push_back({child, 0});
      }
    } else {
      order.push_back(node);
      stack.pop_back();
    }
  }
  return {order.rbegin(), order.rend()};  // root first
}

thread_local BackwardSums t_sums;

// The gradient sum of one graph tensor (the output of a node) while the backward runs. `owned`:
// nothing else refers to `sum` (autograd made it, or a make_result_into op returned it fresh),
// so later arrivals are added into it in place and make_result_into ops may add into it.
struct Flow {
  Tensor sum;
  bool owned = false;
};

// Gradients flowing through the graph may alias each other (add's backward hands the same
// tensor to both inputs), so a sum of two of them is a fresh tensor; a sum autograd owns takes
// further arrivals in place. `g_owned`: g is a fresh gradient of a make_result_into op. A leaf's
// gradient is its own buffer (cloned on first arrival) so that += across backward calls and
// in-place updates such as clipping never touch another tensor.
void accumulate_flow(Flow& slot, Tensor g, bool g_owned) {
  if (!slot.sum.defined()) {
    slot = {std::move(g), g_owned};
  } else if (slot.owned || g_owned) {  // add into the one autograd owns
    if (!slot.owned) std::swap(slot.sum, g);
    ops::add_(slot.sum, g);
    slot.owned = true;
    ++t_sums.in_place;
  } else {
    slot = {ops::add(slot.sum, g), true};
    ++t_sums.fresh;
  }
}

LeafGradHook& leaf_hook() {
  thread_local LeafGradHook hook;
  return hook;
}

// For each node of `order`, the leaves (requiring grad) that no later node consumes.
std::vector<std::vector<Tensor>> leaves_by_last_consumer(const std::vector<std::shared_ptr<Node>>& order) {
  std::unordered_map<const TensorImpl*, size_t> last;
  for (size_t k = 0; k < order.size(); ++k)
    for (const Tensor& in : order[k]->inputs)
      if (in.defined() && !in.grad_fn() && in.requires_grad()) last[in.impl()] = k;
  std::vector<std::vector<Tensor>> out(order.size());
  std::unordered_map<const TensorImpl*, bool> seen;
  for (size_t k = 0; k < order.size(); ++k)
    for (const Tensor& in : order[k]->inputs)
      if (in.defined() && !in.grad_fn() && in.requires_grad() && last[in.impl()] == k && !seen[in.impl()]) {
        seen[in.impl()] = true;
        out[k].push_back(in);
      }
  return out;
}

void accumulate_leaf(Tensor& slot, const Tensor& g) {
  if (!slot.defined()) {
    slot = g.clone();
  } else {
    ops::add_(slot, g);
  }
}

}  // namespace

void run_backward(const Tensor& root, const Tensor& grad_output) {
  PF_CHECK(root.defined(), "backward() on an undefined tensor");
  Tensor seed = grad_output;
  if (!seed.defined()) {
    PF_CHECK(root.numel() == 1,
             "backward() without a gradient needs a scalar, got shape " << shape_str(root.shape()));
    seed = Tensor::full(root.shape(), 1.0, root.dtype(), root.device());
  }
  PF_CHECK(seed.shape() == root.shape(), "backward(): gradient of shape " << shape_str(seed.shape())
                                                                          << " for a tensor of shape "
                                                                          << shape_str(root.shape()));
  if (!root.grad_fn()) {  // a leaf: its gradient is the seed itself
    PF_CHECK(root.requires_grad(), "backward() on a tensor that does not require grad");
    Tensor g = root.grad();
    accumulate_leaf(g, seed);
    const_cast<Tensor&>(root).set_grad(g);
    return;
  }
  NoGradGuard no_grad;  // gradients are not themselves differentiated
  t_sums = {};
  std::unordered_map<Node*, Flow> grads;
  grads[root.grad_fn().get()] = {seed, false};
  const std::vector<std::shared_ptr<Node>> order = topological_order(root.grad_fn());
  // With a leaf hook: the leaves whose last consumer is node k, reported once k has run.
  std::vector<std::vector<Tensor>> finished_after;
  if (leaf_hook()) finished_after = leaves_by_last_consumer(order);
  for (size_t k = 0; k < order.size(); ++k) {
    const auto report_leaves = [&] {
      if (!finished_after.empty())
        for (const Tensor& leaf : finished_after[k]) leaf_hook()(leaf);
    };
    Node* node = order[k].get();
    auto it = grads.find(node);
    if (it == grads.end()) {  // no gradient flows here
      report_leaves();
      continue;
    }
    Tensor g = std::move(it->second.sum);
    grads.erase(it);
    PF_CHECK(
        node->backward != nullptr || node->backward_into != nullptr,
        "backward through '" << node->name << "' a second time: its saved tensors were freed by the first");
    // For a make_result_into op: the sums it may add into (owned ones only).
    std::vector<Tensor> into;
    if (node->backward_into) {
      into.resize(node->inputs.size());
      for (size_t i = 0; i < into.size(); ++i) {
        const Tensor& input = node->inputs[i];
        if (!input.defined() || !input.grad_fn() || !input.requires_grad()) continue;
        auto at = grads.find(input.grad_fn().get());
        if (at != grads.end() && at->second.owned) into[i] = at->second.sum;
      }
    }
    std::vector<Tensor> in_grads = node->backward_into ? node->backward_into(g, into) : node->backward(g);
    node->backward = nullptr;  // frees the saved activations
    node->backward_into = nullptr;
    PF_CHECK(in_grads.size() == node->inputs.size(), "op '" << node->name << "' returned " << in_grads.size()
                                                            << " gradients for " << node->inputs.size()
                                                            << " inputs");
    for (size_t i = 0; i < in_grads.size(); ++i) {
      Tensor& input = node->inputs[i];
      const Tensor& gi = in_grads[i];
      if (!gi.defined() || !input.defined() || !input.requires_grad()) continue;
      PF_CHECK(gi.shape() == input.shape(), "op '" << node->name << "' returned a gradient of shape "
                                                   << shape_str(gi.shape()) << " for input " << i
                                                   << " of shape " << shape_str(input.shape()));
      if (input.grad_fn()) {
        if (!into.empty() && into[i].defined() && gi.impl() == into[i].impl()) {
          ++t_sums.by_op;  // the op added into the sum itself
          continue;
        }
        accumulate_flow(grads[input.grad_fn().get()], gi, !into.empty());
      } else {
        Tensor leaf_grad = input.grad();
        accumulate_leaf(leaf_grad, gi);
        input.set_grad(leaf_grad);
      }
    }
    node->inputs.clear();
    report_leaves();
  }
}

BackwardSums last_backward_sums() { return t_sums; }

LeafGradHookGuard::LeafGradHookGuard(LeafGradHook hook) : previous_(std::move(leaf_hook())) {
  leaf_hook() = std::move(hook);
}

LeafGradHookGuard::~LeafGradHookGuard() { leaf_hook() = std::move(previous_); }

}  // namespace pf
