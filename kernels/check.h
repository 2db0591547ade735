// Checks that explain themselves. Used by every layer (kernels, framework, models, data, train).
//
//   PF_CHECK(q.ndim() == 4, "q must be (B,Nq,H,D), got " << shape_str(q.shape()));
//
// throws pf::Error whose message names the failed expression, file:line and the streamed
// explanation (what was expected and what was found). Programs catch pf::Error at the top,
// print the one line and exit non-zero.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace pf {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
inline const char* basename(const char* path) {
  const char* base = path;
  for (const char* p = path; *p; ++p)
    if (*p == '/') base = p + 1;
  return base;
}
}  // namespace detail

}  // namespace pf

// Fails with a message; `msg` is anything streamable (`"got " << x << ", expected " << y`).
#define PF_FAIL(msg)                                                                    \
  do {                                                                                  \
    std::ostringstream pf_fail_os_;                                                     \
    pf_fail_os_ << msg << " [" << ::pf::detail::basename(__FILE__) << ":" << __LINE__ << "]"; \
    throw ::pf::Error(pf_fail_os_.str());                                               \
  } while (0)

#define PF_CHECK(cond, msg)                                                             \
  do {                                                                                  \
    if (!(cond)) PF_FAIL("check failed: " #cond ": " << msg);                          \
  } while (0)
