#include "framework/precision.h"

namespace pf {

namespace {
thread_local DType g_autocast = DType::F32;
}

DType autocast_dtype() { return g_autocast; }
bool autocast_enabled() { return g_autocast == DType::BF16 || g_autocast == DType::F16; }

AutocastGuard::AutocastGuard(DType dtype) : previous_(g_autocast) {
  PF_CHECK(is_floating(dtype), "AutocastGuard: a floating dtype, got " << dtype_name(dtype));
  g_autocast = dtype == DType::BF16 || dtype == DType::F16 ? dtype : DType::F32;
}

AutocastGuard::~AutocastGuard() { g_autocast = previous_; }

}  // namespace pf
