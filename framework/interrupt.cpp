#include "framework/interrupt.h"

#include <signal.h>
#include <sys/mman.h>

#include <csignal>

#include "kernels/check.h"

namespace pf {

namespace {

volatile std::sig_atomic_t g_signal = 0;         // received by this process
volatile std::sig_atomic_t* g_shared = nullptr;  // the request shared with forked processes
struct sigaction g_old_int, g_old_term;

void on_signal(int sig) {
  if (g_signal != 0) {  // the second: stop now, as if no handler were there
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return;
  }
  g_signal = sig;
  if (g_shared != nullptr) *g_shared = sig;
}

}  // namespace

InterruptGuard::InterruptGuard() {
  g_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // system calls under way (writes, waits) go on
  ::sigaction(SIGINT, &sa, &g_old_int);
  ::sigaction(SIGTERM, &sa, &g_old_term);
}

InterruptGuard::~InterruptGuard() {
  ::sigaction(SIGINT, &g_old_int, nullptr);
  ::sigaction(SIGTERM, &g_old_term, nullptr);
  if (g_shared != nullptr) {
    void* page = const_cast<std::sig_atomic_t*>(g_shared);
    g_shared = nullptr;
    ::munmap(page, sizeof(std::sig_atomic_t));
  }
}

void share_interrupts_with_children() {
  if (g_shared != nullptr) return;
  // one anonymous shared page: the same memory in every process forked from here on
  void* page =
      ::mmap(nullptr, sizeof(std::sig_atomic_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  PF_CHECK(page != MAP_FAILED, "cannot share the stop request with the workers: mmap failed");
  auto* shared = static_cast<volatile std::sig_atomic_t*>(page);
  *shared = g_signal;
  g_shared = shared;
}

int interrupt_signal() { return g_signal != 0 ? g_signal : g_shared != nullptr ? *g_shared : 0; }

int interrupt_exit_code() { return 128 + interrupt_signal(); }

const char* interrupt_name(int sig) {
  return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal";
}

}  // namespace pf
