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

// Shares the stop request with the processes forked after this call (the --gpus launcher and its
// workers): a signal delivered to any one of them — `kill` of the launcher alone, say — makes
// interrupt_signal() report it in all, while each process still counts only the signals it
// received itself (a second one to the same process ends that process). Needs an InterruptGuard;
// ends with it.
void share_interrupts_with_children();

// The signal received since the guard was installed (SIGINT or SIGTERM), 0 if none; with
// share_interrupts_with_children, also one received by a process sharing the request.
int interrupt_signal();
// 128 + interrupt_signal().
int interrupt_exit_code();
// "SIGINT" / "SIGTERM".
const char* interrupt_name(int sig);

}  // namespace pf
