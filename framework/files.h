// Files that appear whole or not at all, written by runs that may share a directory.
//
//   const std::string tmp = temp_path_for("data/chain_train.h5");  // data/chain_train.h5.tmp.4711.9f3a…
//   ... write tmp ...
//   if (!publish_new(tmp, "data/chain_train.h5")) { /* another process published it first */ }
//
// Conventions:
// - Every temp file is `<path>.tmp.<pid>.<16 random hex digits>`: two processes (or two writers
//   in one) never share one, so neither can rename or remove the other's.
// - publish_new is an atomic rename that never replaces: a file already at the destination
//   (another run won the race) is left as it is and the temp file is removed.
// - is_temp_path recognises these names (a run holding its directory's lock removes the ones a
//   killed process left behind).
#pragma once
#include <string>

namespace pf {

std::string temp_path_for(const std::string& path);
bool is_temp_path(const std::string& path);

// Moves `tmp` to `path` unless `path` exists. true: published; false: `path` was already there
// (tmp removed). Any other failure is a pf::Error naming both paths and the reason.
bool publish_new(const std::string& tmp, const std::string& path);

}  // namespace pf
