// Deterministic mode: see deterministic.h for what it changes.
#include "framework/deterministic.h"

#include <atomic>

namespace pf {

namespace {
std::atomic<bool> g_deterministic{false};
}  // namespace

bool deterministic() { return g_deterministic.load(std::memory_order_relaxed); }
void set_deterministic(bool on) { g_deterministic.store(on, std::memory_order_relaxed); }

DeterministicGuard::DeterministicGuard(bool on) : previous_(deterministic()) { set_deterministic(on); }
DeterministicGuard::~DeterministicGuard() { set_deterministic(previous_); }

}  // namespace pf
