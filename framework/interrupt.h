// Graceful stops on SIGINT and SIGTERM (Ctrl-C, `kill`, a batch system's notice).
//
//   const InterruptGuard guard;              // installs the handlers, restores the old ones at exit
//   while (...) { step(); if (interrupt_signal()) { checkpoint(); return interrupt_exit_code(); } }
//
// The first signal only raises a flag: the training loop finishes its step, writes a checkpoint
// and exits with 128 + signal (130 for SIGINT, 143 for SIGTERM). A second signal while it does
// so ends the process at once with the signal's default action; what is on disk then is the
// last good checkpoint (checkpoints are written to a temp file and renamed).
#pragma once

namespace pf {

class InterruptGuard {
 public:
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
};

// The signal received since the guard was installed (SIGINT or SIGTERM), 0 if none.
int interrupt_signal();
// 128 + interrupt_signal().
int interrupt_exit_code();
// "SIGINT" / "SIGTERM".
const char* interrupt_name(int sig);

}  // namespace pf
