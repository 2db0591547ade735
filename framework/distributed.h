// Data-parallel training over the GPUs of one host, through NCCL.
//
// Model: one process per GPU (run/launch.h starts them), every process holds a full replica of
// the model and the optimizer, and takes its slice of each global batch. After the backward the
// replicas' gradients are averaged with NCCL all-reduces, so every replica applies the same
// update and the replicas stay identical: the result is the model one GPU would train on the
// same global batch (up to the rounding of a different summation order).
//
// Conventions (stated once, here):
// - rank r of world W drives the process's CUDA device 0 (the launcher gives each process one
//   visible GPU) and talks to the others through one NCCL communicator.
// - Collectives run on their own CUDA stream. GradientSync starts a bucket's all-reduce as soon
//   as the backward has finished every gradient in it (framework/autograd.h, LeafGradHookGuard),
//   so communication overlaps the rest of the backward; finish() makes the compute stream wait
//   for the last one. Gradients are reduced in place; nothing else touches them meanwhile.
// - NVLink multicast (NVLS) is never switched on here: NCCL_NVLS_ENABLE is left to the user, and
//   the launcher sets it to 0 unless the user set it (shared machines).
// - Built without NCCL (no library found, or no CUDA), every entry point fails with one line
//   saying so; nothing silently falls back to a single GPU.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "framework/autograd.h"
#include "framework/tensor.h"

namespace pf::dist {

bool nccl_available();  // this build has NCCL

// The 128 opaque bytes that let W processes find each other (ncclUniqueId).
using UniqueId = std::array<char, 128>;
UniqueId new_unique_id();  // made by one process, handed to all (run/launch.h)

class Communicator {
 public:
  // Joins the group of `world` processes as `rank` (collective: every rank must call it).
  Communicator(int world, int rank, const UniqueId& id);
  // A group of one process (the 1-GPU path of data-parallel training; tests).
  static std::unique_ptr<Communicator> single();
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }

  // Σ over ranks of x, in place, ordered after the work queued on the compute stream so far
  // (the compute stream waits for it). x: a CUDA tensor of F32, F64 or BF16.
  void all_reduce_sum_(Tensor& x);
  // Σ over ranks of a few host numbers (metrics, counts): synchronous.
  void all_reduce_sum(std::vector<double>& values);
  void barrier();

  struct Impl;
  Impl* impl() const { return impl_.get(); }

 private:
  int world_ = 1, rank_ = 0;
  std::unique_ptr<Impl> impl_;
};

// Averages the gradients of `params` over the ranks during the backward.
//   GradientSync sync(comm, params, bucket_bytes);
//   { LeafGradHookGuard hook = sync.backward_hook(); loss.backward(); }  // buckets start as
//   sync.finish();                                         // their gradients finish; grads = mean
// Buckets hold parameters in reverse registration order (about the order the backward finishes
// them) up to bucket_bytes each; every rank must register the same parameters in the same order.
class GradientSync {
 public:
  GradientSync(Communicator& comm, std::vector<Tensor> params, size_t bucket_bytes = 4 << 20);
  ~GradientSync();
  // The hook for one backward (framework/autograd.h): keep it alive around loss.backward().
  LeafGradHookGuard backward_hook();
  // All of it: loss.backward() under the hook, then finish().
  void backward(const Tensor& loss);
  // Starts any bucket the backward left unfinished (a parameter without a gradient in this
  // graph: its gradient stays undefined on every rank), then waits for all buckets on the compute
  // stream and divides by the world size.
  void finish();
  int buckets() const { return static_cast<int>(buckets_.size()); }

 private:
  struct Bucket {
    std::vector<int> params;  // indices into params_
    int pending = 0;
    bool started = false;
  };
  void grad_ready(const Tensor& leaf);
  void start(Bucket& b);

  Communicator& comm_;
  std::vector<Tensor> params_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_;                     // param index -> bucket
  std::unordered_map<const void*, int> index_of_;  // a parameter's TensorImpl -> its index
};

}  // namespace pf::dist
