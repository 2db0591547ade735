#include "framework/distributed.h"

#include <cstring>

#include "framework/ops.h"
#include "kernels/check.h"

#ifdef PF_WITH_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>

#include "kernels/cuda/context.h"
#include "kernels/cuda/cuda_check.h"

#define PF_NCCL_CHECK(expr)                                                       \
  do {                                                                            \
    const ncclResult_t pf_nccl_result_ = (expr);                                  \
    if (pf_nccl_result_ != ncclSuccess)                                           \
      PF_FAIL("NCCL: " #expr " failed: " << ncclGetErrorString(pf_nccl_result_)); \
  } while (0)
#endif

namespace pf::dist {

namespace {
[[noreturn, maybe_unused]] void no_nccl(const char* what) {
  PF_FAIL(what << ": this build has no NCCL (it needs the CUDA toolkit and libnccl with nccl.h "
                  "when configuring; see the configure summary)");
}
}  // namespace

#ifdef PF_WITH_NCCL

bool nccl_available() { return true; }

struct Communicator::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;  // collectives
  cudaEvent_t compute_done = nullptr, comm_done = nullptr;
  double* scalars = nullptr;  // device buffer for all_reduce_sum(host values)
  size_t scalars_capacity = 0;

  cudaStream_t compute() const { return static_cast<cudaStream_t>(kernels::cuda::stream()); }
  // The collective stream waits for everything queued on the compute stream so far.
  void after_compute() {
    PF_CUDA_CHECK(cudaEventRecord(compute_done, compute()));
    PF_CUDA_CHECK(cudaStreamWaitEvent(stream, compute_done, 0));
  }
  // The compute stream waits for everything queued on the collective stream so far.
  void before_compute() {
    PF_CUDA_CHECK(cudaEventRecord(comm_done, stream));
    PF_CUDA_CHECK(cudaStreamWaitEvent(compute(), comm_done, 0));
  }
  void create_streams() {
    compute();  // creates the CUDA context (device 0) first
    PF_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    PF_CUDA_CHECK(cudaEventCreateWithFlags(&compute_done, cudaEventDisableTiming));
    PF_CUDA_CHECK(cudaEventCreateWithFlags(&comm_done, cudaEventDisableTiming));
  }
};

UniqueId new_unique_id() {
  ncclUniqueId id;
  PF_NCCL_CHECK(ncclGetUniqueId(&id));
  static_assert(sizeof(id) == sizeof(UniqueId));
  UniqueId out;
  std::memcpy(out.data(), &id, sizeof(id));
  return out;
}

Communicator::Communicator(int world, int rank, const UniqueId& id)
    : world_(world), rank_(rank), impl_(std::make_unique<Impl>()) {
  PF_CHECK(world >= 1 && rank >= 0 && rank < world,
           "Communicator: rank " << rank << " of world " << world << " is not a valid rank");
  impl_->create_streams();
  ncclUniqueId nid;
  std::memcpy(&nid, id.data(), sizeof(nid));
  PF_NCCL_CHECK(ncclCommInitRank(&impl_->comm, world, nid, rank));
}

std::unique_ptr<Communicator> Communicator::single() {
  return std::make_unique<Communicator>(1, 0, new_unique_id());
}

Communicator::~Communicator() {
  if (!impl_) return;
  if (impl_->stream) cudaStreamSynchronize(impl_->stream);
  if (impl_->comm) ncclCommDestroy(impl_->comm);
  if (impl_->scalars) cudaFree(impl_->scalars);
  if (impl_->compute_done) cudaEventDestroy(impl_->compute_done);
  if (impl_->comm_done) cudaEventDestroy(impl_->comm_done);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

namespace {
ncclDataType_t nccl_type(const Tensor& x) {
  switch (x.dtype()) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    default: PF_FAIL("all-reduce: " << x.str() << " is not float32, float64 or bfloat16");
  }
}

// One in-place sum, queued on the collective stream (inside a group or alone).
void queue_all_reduce(Communicator::Impl& c, Tensor& x) {
  PF_CHECK(x.device() == Device::CUDA, "all-reduce: " << x.str() << " must be on the GPU");
  void* p = x.data_ptr();
  PF_NCCL_CHECK(ncclAllReduce(p, p, static_cast<size_t>(x.numel()), nccl_type(x), ncclSum, c.comm, c.stream));
}
}  // namespace

void Communicator::all_reduce_sum_(Tensor& x) {
  impl_->after_compute();
  queue_all_reduce(*impl_, x);
  impl_->before_compute();
}

void Communicator::all_reduce_sum(std::vector<double>& values) {
  if (values.empty()) return;
  Impl& c = *impl_;
  const size_t bytes = values.size() * sizeof(double);
  if (c.scalars_capacity < values.size()) {
    if (c.scalars) PF_CUDA_CHECK(cudaFree(c.scalars));
    PF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&c.scalars), bytes));
    c.scalars_capacity = values.size();
  }
  PF_CUDA_CHECK(cudaMemcpyAsync(c.scalars, values.data(), bytes, cudaMemcpyHostToDevice, c.stream));
  PF_NCCL_CHECK(ncclAllReduce(c.scalars, c.scalars, values.size(), ncclFloat64, ncclSum, c.comm, c.stream));
  PF_CUDA_CHECK(cudaMemcpyAsync(values.data(), c.scalars, bytes, cudaMemcpyDeviceToHost, c.stream));
  PF_CUDA_CHECK(cudaStreamSynchronize(c.stream));
}

void Communicator::barrier() {
  std::vector<double> one{1.0};
  all_reduce_sum(one);
}

#else  // no NCCL: every entry point says so

bool nccl_available() { return false; }
struct Communicator::Impl {};
UniqueId new_unique_id() { no_nccl("data-parallel training"); }
Communicator::Communicator(int, int, const UniqueId&) { no_nccl("data-parallel training"); }
std::unique_ptr<Communicator> Communicator::single() { no_nccl("data-parallel training"); }
Communicator::~Communicator() = default;
void Communicator::all_reduce_sum_(Tensor&) { no_nccl("all-reduce"); }
void Communicator::all_reduce_sum(std::vector<double>&) { no_nccl("all-reduce"); }
void Communicator::barrier() { no_nccl("barrier"); }

#endif

// ---- GradientSync ------------------------------------------------------------------------------

GradientSync::GradientSync(Communicator& comm, std::vector<Tensor> params, size_t bucket_bytes)
    : comm_(comm), params_(std::move(params)) {
  // Reverse registration order: the last layers' gradients finish first in the backward.
  size_t filled = bucket_bytes;  // forces a new bucket for the first parameter
  bucket_of_.assign(params_.size(), -1);
  for (int i = static_cast<int>(params_.size()) - 1; i >= 0; --i) {
    const Tensor& p = params_[i];
    PF_CHECK(p.requires_grad(),
             "GradientSync: parameter " << i << " " << p.str() << " does not require grad");
    const size_t bytes = p.nbytes();
    if (filled + bytes > bucket_bytes && filled > 0) {
      buckets_.emplace_back();
      filled = 0;
    }
    buckets_.back().params.push_back(i);
    bucket_of_[i] = static_cast<int>(buckets_.size()) - 1;
    filled += bytes;
    PF_CHECK(index_of_.emplace(p.impl(), i).second, "GradientSync: parameter " << i << " is listed twice");
  }
}

GradientSync::~GradientSync() = default;

LeafGradHookGuard GradientSync::backward_hook() {
  for (Bucket& b : buckets_) {
    b.pending = static_cast<int>(b.params.size());
    b.started = false;
  }
  return LeafGradHookGuard([this](const Tensor& leaf) { grad_ready(leaf); });
}

void GradientSync::backward(const Tensor& loss) {
  {
    const LeafGradHookGuard hook = backward_hook();
    loss.backward();
  }
  finish();
}

void GradientSync::grad_ready(const Tensor& leaf) {
  const auto it = index_of_.find(leaf.impl());
  if (it == index_of_.end()) return;  // a leaf that is not one of ours
  Bucket& b = buckets_[bucket_of_[it->second]];
  if (--b.pending == 0) start(b);
}

void GradientSync::start(Bucket& b) {
  b.started = true;
#ifdef PF_WITH_NCCL
  Communicator::Impl& c = *comm_.impl();
  c.after_compute();
  PF_NCCL_CHECK(ncclGroupStart());
  for (int i : b.params) {
    Tensor g = params_[i].grad();
    if (g.defined()) queue_all_reduce(c, g);
  }
  PF_NCCL_CHECK(ncclGroupEnd());
#else
  no_nccl("gradient all-reduce");
#endif
}

void GradientSync::finish() {
  for (Bucket& b : buckets_)
    if (!b.started) start(b);
#ifdef PF_WITH_NCCL
  comm_.impl()->before_compute();
#endif
  if (comm_.world() == 1) return;
  NoGradGuard no_grad;
  for (Tensor& p : params_) {
    Tensor g = p.grad();
    if (g.defined()) ops::scale_(g, 1.0 / comm_.world());
  }
}

}  // namespace pf::dist
