// The time split: see profile.h for what is recorded and how it is charged.
#include "framework/profile.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <string_view>

#include "framework/anomaly.h"

#ifdef PF_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda/context.h"
#include "kernels/cuda/cuda_check.h"
#endif

namespace pf::profile {

namespace {

using Clock = std::chrono::steady_clock;

// One mark: a CUDA event (GPU profile) or a host time (CPU profile).
struct Mark {
  void* event = nullptr;
  Clock::time_point host{};
};

struct Record {
  const char* category;
  bool backward;
  bool closed = false;
  Mark start, end;
};

struct State {
  std::mutex mu;
  Device device = Device::CUDA;
  std::vector<Record> records;     // open and finished, not yet collected
  std::vector<void*> free_events;  // recycled CUDA events
  std::map<std::string, Row> totals;
};

State& state() {
  static State* s = new State;  // never destroyed: scopes may close during static teardown
  return *s;
}

std::atomic<bool> g_on{false};

struct ThreadState {
  int depth = 0;                   // open scopes on this thread (outermost records)
  const char* category = nullptr;  // the category the outermost scope resolved
};
thread_local ThreadState t_state;

// A scope inside the pair representation's module scope ("pair": its lookups and sums) belongs
// to "pair_features", one inside a layer's "pair_norm" or "pair_proj" to "pair_bias"; null
// outside both.
const char* pair_module_category() {
  const std::string path = anomaly::current_scope();
  size_t begin = 0;
  while (begin <= path.size()) {
    size_t end = path.find('.', begin);
    if (end == std::string::npos) end = path.size();
    const std::string_view part = std::string_view(path).substr(begin, end - begin);
    if (part == "pair") return "pair_features";
    if (part.rfind("pair_", 0) == 0) return "pair_bias";
    begin = end + 1;
  }
  return nullptr;
}

// ---- the marks of the device's clock: CUDA events on the GPU, host time on the CPU -------------

// Takes a mark now (stream order on the GPU). Called with the state's lock held.
Mark take_mark(State& s) {
  Mark m;
#ifdef PF_WITH_CUDA
  if (s.device == Device::CUDA) {
    cudaEvent_t ev;
    if (s.free_events.empty()) {
      PF_CUDA_CHECK(cudaEventCreate(&ev));
    } else {
      ev = static_cast<cudaEvent_t>(s.free_events.back());
      s.free_events.pop_back();
    }
    PF_CUDA_CHECK(cudaEventRecord(ev, static_cast<cudaStream_t>(kernels::cuda::stream())));
    m.event = ev;
    return m;
  }
#endif
  m.host = Clock::now();
  return m;
}

// Waits until the device has taken every mark queued so far (the GPU's events); host marks are
// taken at once.
void wait_for_marks(Device device) {
#ifdef PF_WITH_CUDA
  if (device == Device::CUDA) kernels::cuda::synchronize();
#endif
  (void)device;
}

// The time between a record's two marks.
double elapsed_ms(const Record& r, Device device) {
#ifdef PF_WITH_CUDA
  if (device == Device::CUDA) {
    float ms = 0;
    PF_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(r.start.event),
                                       static_cast<cudaEvent_t>(r.end.event)));
    return ms;
  }
#endif
  (void)device;
  return std::chrono::duration<double, std::milli>(r.end.host - r.start.host).count();
}

// ---- records ------------------------------------------------------------------------------------

// Opens a record; returns its index.
int open_record(const char* category, bool backward) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  Record r{category, backward};
  r.start = take_mark(s);
  s.records.push_back(r);
  return static_cast<int>(s.records.size()) - 1;
}

void close_record(int index) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  Record& r = s.records[index];
  r.end = take_mark(s);
  r.closed = true;
}

// Times the closure of timed(): a backward record of `category`, outermost on its thread.
class BackwardScope {
 public:
  explicit BackwardScope(const char* category) {
    if (!g_on.load(std::memory_order_relaxed)) return;
    if (t_state.depth++ > 0) {
      record_ = -2;
      return;
    }
    t_state.category = category;
    record_ = open_record(category, true);
  }
  ~BackwardScope() {
    if (record_ == -1) return;
    --t_state.depth;
    if (record_ >= 0) close_record(record_);
  }

 private:
  int record_ = -1;
};

}  // namespace

bool enabled() { return g_on.load(std::memory_order_relaxed); }

void set_enabled(bool on, Device device) {
  if (on) {
#ifndef PF_WITH_CUDA  // build configuration: without CUDA, a GPU profile has no clock to read
    PF_CHECK(device == Device::CPU, "profile: a GPU profile needs a build with CUDA");
#endif
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    PF_CHECK(s.records.empty() || s.device == device,
             "profile: records of another device are pending; reset() before switching to "
                 << device_name(device));
    s.device = device;
  }
  g_on.store(on, std::memory_order_relaxed);
}

Scope::Scope(const char* category) {
  if (!g_on.load(std::memory_order_relaxed)) return;
  if (t_state.depth++ > 0) {  // nested: charged to the outermost scope
    record_ = -2;
    return;
  }
  const char* pair = pair_module_category();
  const char* cat = pair ? pair : category;
  t_state.category = cat;
  record_ = open_record(cat, !grad_enabled());
}

Scope::~Scope() {
  if (record_ == -1) return;
  --t_state.depth;
  if (record_ >= 0) close_record(record_);
}

namespace {
// fn (a Node::BackwardFn or BackwardIntoFn) timed as timed() says.
template <class Fn>
Fn timed_closure(Fn fn) {
  if (!g_on.load(std::memory_order_relaxed) || t_state.depth == 0) return fn;
  const char* category = t_state.category;
  return [fn = std::move(fn), category](const auto&... args) {
    BackwardScope s(category);
    return fn(args...);
  };
}
}  // namespace

Node::BackwardFn timed(Node::BackwardFn fn) { return timed_closure(std::move(fn)); }
Node::BackwardIntoFn timed(Node::BackwardIntoFn fn) { return timed_closure(std::move(fn)); }

void collect() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.records.empty()) return;
  wait_for_marks(s.device);
  for (const Record& r : s.records)
    PF_CHECK(r.closed, "profile::collect: a '" << r.category
                                               << "' scope is still open (collect "
                                                  "between steps, outside every scope)");
  for (const Record& r : s.records) {
    Row& row = s.totals[r.category];
    row.category = r.category;
    const double ms = elapsed_ms(r, s.device);
    if (r.backward) {
      row.bwd_ms += ms;
      ++row.bwd_calls;
    } else {
      row.fwd_ms += ms;
      ++row.fwd_calls;
    }
    if (r.start.event) s.free_events.push_back(r.start.event);
    if (r.end.event) s.free_events.push_back(r.end.event);
  }
  s.records.clear();
}

std::vector<Row> report() {
  collect();
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  std::vector<Row> rows;
  for (const auto& [name, row] : s.totals) rows.push_back(row);
  std::sort(rows.begin(), rows.end(),
            [](const Row& a, const Row& b) { return a.fwd_ms + a.bwd_ms > b.fwd_ms + b.bwd_ms; });
  return rows;
}

void reset() {
  collect();
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.totals.clear();
}

std::string table(const std::vector<Row>& rows, int steps, double step_ms) {
  const double n = std::max(1, steps);
  std::string out;
  char line[160];
  std::snprintf(line, sizeof line, "%-14s %9s %9s %9s %7s %8s\n", "category", "fwd ms", "bwd ms", "total ms",
                "% step", "calls");
  out += line;
  double sum = 0;
  for (const Row& r : rows) {
    const double f = r.fwd_ms / n, b = r.bwd_ms / n;
    sum += f + b;
    std::snprintf(line, sizeof line, "%-14s %9.3f %9.3f %9.3f %6.1f%% %8.1f\n", r.category.c_str(), f, b,
                  f + b, 100.0 * (f + b) / step_ms, double(r.fwd_calls + r.bwd_calls) / n);
    out += line;
  }
  std::snprintf(line, sizeof line, "%-14s %9s %9s %9.3f %6.1f%%\n", "untracked", "", "", step_ms - sum,
                100.0 * (step_ms - sum) / step_ms);
  out += line;
  std::snprintf(line, sizeof line, "%-14s %9s %9s %9.3f %6.1f%%\n", "step", "", "", step_ms, 100.0);
  out += line;
  return out;
}

}  // namespace pf::profile
