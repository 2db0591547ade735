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

namespace detail {
// An error is one line: control characters from echoed input (a newline in a config value, raw
// bytes of a file read as text) are written as escapes, "\n" or "\x1b".
inline std::string one_line(const std::string& s) {
  static const char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (u < 0x20 || u == 0x7f)
      out += {'\\', 'x', hex[u >> 4], hex[u & 15]};
    else
      out += c;
  }
  return out;
}
}  // namespace detail

// The length of the well-formed UTF-8 sequence at s[i] (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF; 1 for ASCII), 0 if there is none. Paths and config values
// may hold any bytes; the text formats that carry them (JSON, YAML) need to know which are UTF-8.
inline size_t utf8_length(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u; };
  const unsigned c = b(0);
  const auto cont = [&](size_t k) { return (b(k) & 0xc0) == 0x80; };
  if (i < s.size() && c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    const unsigned lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    return b(1) >= lo && b(1) <= hi && cont(2) ? 3 : 0;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    const unsigned lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    return b(1) >= lo && b(1) <= hi && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

inline bool is_utf8(const std::string& s) {
  for (size_t i = 0, n; i < s.size(); i += n)
    if ((n = utf8_length(s, i)) == 0) return false;
  return true;
}

// A value echoed in an error line, cut to a readable length: the first `max` bytes and "…(N
// bytes)" after them, so a megabyte-long path or override does not fill the terminal.
inline std::string echo(const std::string& s, size_t max = 96) {
  if (s.size() <= max) return s;
  size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80) --cut;  // not inside a UTF-8 char
  return s.substr(0, cut) + "…(" + std::to_string(s.size()) + " bytes)";
}

struct Error : std::runtime_error {
  explicit Error(const std::string& what) : std::runtime_error(detail::one_line(what)) {}
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
#define PF_FAIL(msg)                                                                          \
  do {                                                                                        \
    std::ostringstream pf_fail_os_;                                                           \
    pf_fail_os_ << msg << " [" << ::pf::detail::basename(__FILE__) << ":" << __LINE__ << "]"; \
    throw ::pf::Error(pf_fail_os_.str());                                                     \
  } while (0)

#define PF_CHECK(cond, msg)                                   \
  do {                                                        \
    if (!(cond)) PF_FAIL("check failed: " #cond ": " << msg); \
  } while (0)
