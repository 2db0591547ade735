#include "run/launch.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "framework/interrupt.h"
#include "kernels/check.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/device_info.h"
#endif

namespace pf {

namespace {

// Writes/reads exactly n bytes (pipes may split them).
bool write_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t k = ::write(fd, c, n);
    if (k <= 0) return false;
    c += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

bool read_all(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t k = ::read(fd, c, n);
    if (k <= 0) return false;
    c += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(item);
  return out;
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int count_gpus_in_child() {
#ifdef PF_WITH_CUDA
  int fds[2];
  PF_CHECK(::pipe(fds) == 0, "pipe() failed while counting GPUs");
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  PF_CHECK(pid >= 0, "fork() failed while counting GPUs");
  if (pid == 0) {
    ::close(fds[0]);
    const int n = kernels::cuda::device_info().device_count;
    write_all(fds[1], &n, sizeof n);
    ::_exit(0);
  }
  ::close(fds[1]);
  int n = 0;
  const bool ok = read_all(fds[0], &n, sizeof n);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return ok ? n : 0;
#else
  return 0;
#endif
}

int run_data_parallel(int gpus, const DataParallelWorker& worker) {
  PF_CHECK(gpus >= 1, "--gpus must be >= 1, got " << gpus);
  PF_CHECK(dist::nccl_available(), "--gpus " << gpus
                                             << ": this build has no NCCL, so it trains on one GPU only "
                                                "(configure with the CUDA toolkit and libnccl present)");
  const int visible = count_gpus_in_child();
  PF_CHECK(gpus <= visible, "--gpus " << gpus << ": only " << visible << " GPU" << (visible == 1 ? "" : "s")
                                      << " visible to this process");
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
  const char* env = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::vector<std::string> listed = env ? split_commas(env) : std::vector<std::string>{};

  // Worker 0 sends the id down one pipe per other worker.
  std::vector<int> id_read(gpus, -1), id_write(gpus, -1);
  for (int r = 1; r < gpus; ++r) {
    int fds[2];
    PF_CHECK(::pipe(fds) == 0, "pipe() failed while starting " << gpus << " workers");
    id_read[r] = fds[0];
    id_write[r] = fds[1];
  }
  // SIGINT / SIGTERM to the launcher alone (a batch system's `kill`) reaches the workers too: they
  // stop together after the step under way, with a checkpoint, as one process would.
  share_interrupts_with_children();
  std::fflush(nullptr);
  std::vector<pid_t> pids(gpus, -1);
  for (int r = 0; r < gpus; ++r) {
    const pid_t pid = ::fork();
    PF_CHECK(pid >= 0, "fork() failed for worker " << r);
    if (pid > 0) {
      pids[r] = pid;
      continue;
    }
    // ---- worker r ----
    int code = 1;
    try {
      const std::string dev = r < static_cast<int>(listed.size()) ? listed[r] : std::to_string(r);
      setenv("CUDA_VISIBLE_DEVICES", dev.c_str(), 1);
      if (r > 0 && !std::freopen("/dev/null", "w", stdout)) PF_FAIL("cannot silence stdout");
      dist::UniqueId id;
      if (r == 0) {
        id = dist::new_unique_id();
        for (int k = 1; k < gpus; ++k)
          PF_CHECK(write_all(id_write[k], id.data(), id.size()), "sending the NCCL id to worker " << k);
      } else {
        PF_CHECK(read_all(id_read[r], id.data(), id.size()), "no NCCL id from worker 0 (it failed to start)");
      }
      for (int k = 1; k < gpus; ++k) {
        ::close(id_read[k]);
        ::close(id_write[k]);
      }
      dist::Communicator comm(gpus, r, id);
      code = worker(comm);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %d: error: %s\n", r, e.what());
      code = 1;
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  for (int k = 1; k < gpus; ++k) {
    ::close(id_read[k]);
    ::close(id_write[k]);
  }
  // Wait for all; the first failure stops the others (NCCL peers of a dead rank would hang). A
  // worker that stopped on the shared interrupt (128 + signal) is no failure: the others are
  // finishing the same step and its checkpoint.
  int result = 0, alive = gpus;
  while (alive > 0) {
    int status = 0;
    const pid_t pid = ::wait(&status);
    if (pid < 0) break;
    --alive;
    for (pid_t& p : pids)
      if (p == pid) p = -1;  // reaped
    const int code = exit_code(status);
    const bool interrupted = interrupt_signal() != 0 && code == interrupt_exit_code();
    if (code != 0 && result == 0) {
      result = code;
      if (!interrupted)
        for (pid_t p : pids)
          if (p > 0) ::kill(p, SIGTERM);
    }
  }
  return result;
}

}  // namespace pf
