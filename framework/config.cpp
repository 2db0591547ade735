// The run configuration: YAML in, validated Config out (conventions in config.h).
//
// One table of keys (name, type, field) drives parsing, the "known keys" lists of error
// messages, config_to_yaml and config_hash, so the four can never disagree.
#include "framework/config.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <unistd.h>

#include "kernels/check.h"

namespace pf {
namespace {

enum class Kind { Int, UInt64, Double, String, Bool };

struct Key {
  const char* name;
  Kind kind;
  void* field;  // int*, uint64_t*, double*, std::string* or bool* according to kind
  // Added after checkpoints existed: config_hash leaves it out while it has its default value.
  bool late = false;
};

struct Section {
  const char* name;  // "" for the top-level keys
  std::vector<Key> keys;
};

// The table, in the order of the structs (and of config_to_yaml).
std::vector<Section> key_table(Config& c) {
  ModelConfig& m = c.model;
  DataConfig& d = c.data;
  TrainConfig& t = c.train;
  return {
      {"model",
       {{"n_types", Kind::Int, &m.n_types},
        {"d_model", Kind::Int, &m.d_model},
        {"n_heads", Kind::Int, &m.n_heads},
        {"n_layers", Kind::Int, &m.n_layers},
        {"d_ff", Kind::Int, &m.d_ff},
        {"c_z", Kind::Int, &m.c_z},
        {"relpos_clip", Kind::Int, &m.relpos_clip},
        {"dist_bins", Kind::Int, &m.dist_bins},
        {"dist_max", Kind::Double, &m.dist_max},
        {"attn_bias", Kind::String, &m.attn_bias, true}}},
      {"data",
       {{"train", Kind::String, &d.train},
        {"val", Kind::String, &d.val},
        {"n_train", Kind::Int, &d.n_train},
        {"n_val", Kind::Int, &d.n_val},
        {"n_res", Kind::Int, &d.n_res},
        {"n_res_min", Kind::Int, &d.n_res_min, true},
        {"n_res_max", Kind::Int, &d.n_res_max, true},
        {"seed", Kind::UInt64, &d.seed},
        {"task", Kind::String, &d.task, true}}},
      {"train",
       {{"steps", Kind::Int, &t.steps},
        {"batch_size", Kind::Int, &t.batch_size},
        {"batch_tokens", Kind::Int, &t.batch_tokens},
        {"lr", Kind::Double, &t.lr},
        {"min_lr", Kind::Double, &t.min_lr},
        {"warmup", Kind::Int, &t.warmup},
        {"weight_decay", Kind::Double, &t.weight_decay},
        {"grad_clip", Kind::Double, &t.grad_clip},
        {"seed", Kind::UInt64, &t.seed},
        {"eval_every", Kind::Int, &t.eval_every},
        {"log_every", Kind::Int, &t.log_every},
        {"checkpoint_every", Kind::Int, &t.checkpoint_every},
        {"precision", Kind::String, &t.precision},
        {"max_bad_steps", Kind::Int, &t.max_bad_steps},
        {"detect_anomaly", Kind::Bool, &t.detect_anomaly},
        {"deterministic", Kind::Bool, &t.deterministic},
        {"cuda_graph", Kind::String, &t.cuda_graph}}},
      {"", {{"device", Kind::String, &c.device}, {"out", Kind::String, &c.out}}},
  };
}

std::string known_list(const Section& s) {
  std::string out;
  for (const Key& k : s.keys) out += (out.empty() ? "" : ", ") + std::string(k.name);
  return out;
}

std::string top_known_list(const std::vector<Section>& table) {
  std::string out;
  for (const Section& s : table) {
    if (*s.name)
      out += (out.empty() ? "" : ", ") + std::string(s.name);
    else
      out += (out.empty() ? "" : ", ") + known_list(s);
  }
  return out;
}

const Section* find_section(const std::vector<Section>& table, const std::string& name) {
  for (const Section& s : table)
    if (name == s.name) return &s;
  return nullptr;
}

const Key* find_key(const Section& s, const std::string& name) {
  for (const Key& k : s.keys)
    if (name == k.name) return &k;
  return nullptr;
}

std::string dotted(const Section& s, const std::string& key) {
  return *s.name ? std::string(s.name) + "." + key : key;
}

// "did you mean 'train.steps'?" for a section key written at the top level.
std::string section_hint(const std::vector<Section>& table, const std::string& key) {
  for (const Section& s : table)
    if (*s.name && find_key(s, key)) return " (did you mean '" + dotted(s, key) + "'?)";
  return "";
}

[[noreturn]] void unknown_key(const std::vector<Section>& table, const Section* section,
                              const std::string& key) {
  if (!section || !*section->name)
    PF_FAIL("config: unknown key '" << echo(key) << "'" << section_hint(table, key)
                                    << " (known: " << top_known_list(table) << ")");
  PF_FAIL("config: unknown key '" << echo(dotted(*section, key)) << "' (known: " << known_list(*section)
                                  << ")");
}

// One value to assign: the scalar text, or null/a collection (which no key accepts).
struct Value {
  enum class Shape { Scalar, Null, Collection } shape = Shape::Scalar;
  std::string text;
};

// How config_to_yaml writes a string that is not UTF-8 (a path may be any bytes; YAML text
// cannot hold them): `!!binary "<base64>"`, read back to the exact bytes.
constexpr char kBinaryTag[] = "tag:yaml.org,2002:binary";

Value value_of(const YAML::Node& n) {
  if (n.IsNull()) return {Value::Shape::Null, ""};
  if (n.IsScalar() && n.Tag() == kBinaryTag) {
    YAML::Binary b;
    if (!YAML::convert<YAML::Binary>::decode(n, b))
      PF_FAIL("config: a !!binary value must be base64, found '" << echo(n.Scalar()) << "'");
    return {Value::Shape::Scalar, std::string(reinterpret_cast<const char*>(b.data()), b.size())};
  }
  if (n.IsScalar()) return {Value::Shape::Scalar, n.Scalar()};
  return {Value::Shape::Collection, n.IsMap() ? "a mapping" : "a list"};
}

std::string found(const Value& v) {
  switch (v.shape) {
    case Value::Shape::Null: return "nothing (an empty value)";
    case Value::Shape::Collection: return v.text;
    default: return "'" + echo(v.text) + "'";
  }
}

void assign(const Key& key, const std::string& name, const Value& v) {
  const std::string& s = v.text;
  const char* first = s.data();
  const char* last = s.data() + s.size();
  if (v.shape == Value::Shape::Scalar && !s.empty() && s[0] == '+' && key.kind != Kind::String) ++first;
  const bool scalar = v.shape == Value::Shape::Scalar;
  switch (key.kind) {
    case Kind::Int: {
      long long x = 0;
      auto r = std::from_chars(first, last, x);
      if (!scalar || r.ec != std::errc() || r.ptr != last || x < INT_MIN || x > INT_MAX)
        PF_FAIL("config: '" << name << "' must be an integer, found " << found(v));
      *static_cast<int*>(key.field) = static_cast<int>(x);
      break;
    }
    case Kind::UInt64: {
      unsigned long long x = 0;
      auto r = std::from_chars(first, last, x);
      if (!scalar || r.ec != std::errc() || r.ptr != last)
        PF_FAIL("config: '" << name << "' must be a non-negative integer below 2^64, found " << found(v));
      *static_cast<uint64_t*>(key.field) = static_cast<uint64_t>(x);
      break;
    }
    case Kind::Double: {
      double x = 0;
      auto r = std::from_chars(first, last, x);
      if (!scalar || r.ec != std::errc() || r.ptr != last || !std::isfinite(x))
        PF_FAIL("config: '" << name << "' must be a finite number, found " << found(v));
      *static_cast<double*>(key.field) = x;
      break;
    }
    case Kind::String:
      if (!scalar) PF_FAIL("config: '" << name << "' must be a string, found " << found(v));
      *static_cast<std::string*>(key.field) = s;
      break;
    case Kind::Bool:  // YAML 1.2 core schema booleans only ("yes"/"on" stay errors)
      if (scalar && (s == "true" || s == "True" || s == "TRUE"))
        *static_cast<bool*>(key.field) = true;
      else if (scalar && (s == "false" || s == "False" || s == "FALSE"))
        *static_cast<bool*>(key.field) = false;
      else
        PF_FAIL("config: '" << name << "' must be true or false, found " << found(v));
      break;
  }
}

std::string node_key(const YAML::Node& k, const std::string& where) {
  if (!k.IsScalar()) PF_FAIL("config: " << where << ": keys must be plain names, found " << value_of(k).text);
  return k.Scalar();
}

// Assigns every key of the YAML document `root` into `cfg`.
void apply_document(Config& cfg, const YAML::Node& root, const std::string& source) {
  const std::vector<Section> table = key_table(cfg);
  if (root.IsNull()) return;  // an empty file: all defaults
  if (!root.IsMap())
    PF_FAIL("config: " << source
                       << ": expected a mapping with sections model, data, train and keys "
                          "device, out at the top level, found "
                       << found(value_of(root)));
  std::set<std::string> seen;
  auto once = [&](const std::string& name) {
    if (!seen.insert(name).second)
      PF_FAIL("config: " << source << ": key '" << echo(name) << "' appears twice");
  };
  const Section* top = find_section(table, "");
  for (const auto& kv : root) {
    const std::string k = node_key(kv.first, source);
    const Section* section = find_section(table, k);
    if (section && *section->name) {
      once(k);
      const YAML::Node& body = kv.second;
      if (body.IsNull()) continue;  // "model:" with nothing under it
      if (!body.IsMap())
        PF_FAIL("config: '" << echo(k) << "' must be a section of keys (" << known_list(*section)
                            << "), found " << found(value_of(body)));
      for (const auto& kv2 : body) {
        const std::string k2 = node_key(kv2.first, source);
        const Key* key = find_key(*section, k2);
        if (!key) unknown_key(table, section, k2);
        once(dotted(*section, k2));
        assign(*key, dotted(*section, k2), value_of(kv2.second));
      }
    } else if (const Key* key = find_key(*top, k)) {
      once(k);
      assign(*key, k, value_of(kv.second));
    } else {
      unknown_key(table, top, k);
    }
  }
}

void apply_override(Config& cfg, const std::string& ov) {
  const std::vector<Section> table = key_table(cfg);
  const size_t eq = ov.find('=');
  if (eq == std::string::npos || eq == 0)
    PF_FAIL("config: override: expected key=value (e.g. train.steps=200), found '" << echo(ov) << "'");
  const std::string name = ov.substr(0, eq), text = ov.substr(eq + 1);
  const size_t dot = name.find('.');
  const Section* section = find_section(table, dot == std::string::npos ? "" : name.substr(0, dot));
  const std::string k = dot == std::string::npos ? name : name.substr(dot + 1);
  if (dot == std::string::npos && find_section(table, name))
    PF_FAIL("config: override '" << echo(ov) << "': '" << name << "' is a section; set one of its keys ("
                                 << name << "." << find_section(table, name)->keys[0].name << "=...)");
  if (!section) {
    PF_FAIL("config: unknown key '" << echo(name) << "' in override '" << echo(ov)
                                    << "' (known sections: model, data, "
                                       "train; top-level keys: device, out)");
  }
  const Key* key = find_key(*section, k);
  if (!key) unknown_key(table, section, k);
  // The value exactly as typed: a string key takes every byte ("out=runs/exp #3" is that path),
  // a typed key parses the whole text strictly. Nothing after '=' is an empty value.
  assign(*key, name,
         text.empty() && key->kind != Kind::String ? Value{Value::Shape::Null, ""}
                                                   : Value{Value::Shape::Scalar, text});
}

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    PF_FAIL("config: '" << path << "' is a directory, expected a YAML file");
  std::ifstream in(path, std::ios::binary);
  if (!in) PF_FAIL("config: cannot read '" << path << "': " << std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();  // sets failbit on ss for an empty file, which is valid (all defaults)
  if (in.bad()) PF_FAIL("config: error while reading '" << path << "'");
  return ss.str();
}

YAML::Node parse_yaml(const std::string& text, const std::string& source) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    PF_FAIL("config: invalid YAML in " << source << ": " << e.what());
  }
}

Config build(const std::string& text, const std::string& source, const std::vector<std::string>& overrides) {
  Config cfg;
  apply_document(cfg, parse_yaml(text, source), source);
  for (const std::string& ov : overrides) apply_override(cfg, ov);
  if (cfg.model.d_ff == 0 && cfg.model.d_model > 0 && cfg.model.d_model <= INT_MAX / 4)
    cfg.model.d_ff = 4 * cfg.model.d_model;
  if (cfg.data.n_res_min == 0) cfg.data.n_res_min = cfg.data.n_res;
  if (cfg.data.n_res_max == 0) cfg.data.n_res_max = cfg.data.n_res;
  validate_config(cfg);
  return cfg;
}

// Shortest text that reads back to the same double, with a ".0" so it still looks like one.
std::string format_double(double x) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, x);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string format_value(const Key& k) {
  switch (k.kind) {
    case Kind::Int: return std::to_string(*static_cast<const int*>(k.field));
    case Kind::UInt64: return std::to_string(*static_cast<const uint64_t*>(k.field));
    case Kind::Double: return format_double(*static_cast<const double*>(k.field));
    case Kind::String: return *static_cast<const std::string*>(k.field);
    case Kind::Bool: return *static_cast<const bool*>(k.field) ? "true" : "false";
  }
  return "";
}

}  // namespace

#define PF_CONFIG_REQUIRE(cond, msg)         \
  do {                                       \
    if (!(cond)) PF_FAIL("config: " << msg); \
  } while (0)

namespace {

// Host memory of this machine in bytes (0 when unknown: no check).
double physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

std::string gib(double bytes) {
  std::ostringstream os;
  os.precision(3);
  os << bytes / 1073741824.0 << " GiB";
  return os.str();
}

// The sizes derived from the keys, in 64 bits (doubles for byte counts, which cannot overflow),
// against what the kernels index and what the machine holds. Only sizes the run must allocate
// in full are compared with the machine (lower bounds), so no config that fits is refused.
void validate_sizes(const Config& c) {
  const ModelConfig& m = c.model;
  const DataConfig& d = c.data;
  const TrainConfig& t = c.train;
  // kernels/cpu/flash_bias.cpp (kMaxRelposClip): the 2R+1 table bins are indexed with an int.
  constexpr int64_t kMaxRelposClip = int64_t{1} << 29;
  PF_CONFIG_REQUIRE(m.relpos_clip <= kMaxRelposClip,
                    "'model.relpos_clip' (" << m.relpos_clip
                                            << ") is too large: the relative-position table has "
                                               "2·relpos_clip + 1 = "
                                            << 2 * int64_t{m.relpos_clip} + 1
                                            << " bins, the kernels take at most " << 2 * kMaxRelposClip + 1);
  const double mem = physical_memory_bytes();
  if (mem <= 0) return;
  const double D = m.d_model, F = m.d_ff > 0 ? m.d_ff : 4.0 * m.d_model, bins = 2.0 * m.relpos_clip + 1;
  // Weights, gradients and AdamW's two moments, 4 bytes each at least (fp32): the embeddings,
  // the pair features' tables and per layer the attention and feed-forward weights.
  const double params = m.n_types * D + bins * m.c_z + double(m.dist_bins) * m.c_z +
                        double(m.n_layers) * (4 * D * D + 2 * D * F);
  const double param_bytes = 16 * params;
  PF_CONFIG_REQUIRE(param_bytes <= mem, "the model's weights, gradients and optimizer moments need at least "
                                            << gib(param_bytes) << " (from 'model.d_model' " << m.d_model
                                            << ", 'model.d_ff' " << F << ", 'model.n_layers' " << m.n_layers
                                            << ", 'model.relpos_clip' " << m.relpos_clip
                                            << ", 'model.dist_bins' " << m.dist_bins << ", 'model.c_z' "
                                            << m.c_z << "), this machine has " << gib(mem));
  const int n_max = d.n_res_max ? d.n_res_max : d.n_res;
  // The two data sets in memory: tokens, labels (int32) and coordinates (3 float32) per residue.
  const double data_bytes = (double(d.n_train) + d.n_val) * n_max * 20;
  PF_CONFIG_REQUIRE(data_bytes <= mem, "the data sets need at least "
                                           << gib(data_bytes) << " ('data.n_train' " << d.n_train
                                           << " + 'data.n_val' " << d.n_val << " chains × 'data.n_res_max' "
                                           << n_max << " residues × 20 bytes), this machine has "
                                           << gib(mem));
  // On the CPU, one layer's pair representation of a dense batch (chains of one length, by
  // count): B × N² × c_z values of 4 bytes.
  const int n_min = d.n_res_min ? d.n_res_min : d.n_res;
  if (c.device == "cpu" && m.attn_bias == "pair" && t.batch_tokens == 0 && n_min == n_max) {
    const double pair_bytes = double(t.batch_size) * n_max * n_max * m.c_z * 4;
    PF_CONFIG_REQUIRE(pair_bytes <= mem, "one layer's pair representation needs at least "
                                             << gib(pair_bytes) << " ('train.batch_size' " << t.batch_size
                                             << " × 'data.n_res' " << n_max << "² × 'model.c_z' " << m.c_z
                                             << " × 4 bytes), this machine has " << gib(mem));
  }
}

}  // namespace

void validate_config(const Config& c) {
  const ModelConfig& m = c.model;
  PF_CONFIG_REQUIRE(m.n_types >= 1, "'model.n_types' must be at least 1, found " << m.n_types);
  PF_CONFIG_REQUIRE(m.d_model >= 1, "'model.d_model' must be at least 1, found " << m.d_model);
  PF_CONFIG_REQUIRE(m.n_heads >= 1, "'model.n_heads' must be at least 1, found " << m.n_heads);
  PF_CONFIG_REQUIRE(m.d_model % m.n_heads == 0, "'model.d_model' (" << m.d_model
                                                                    << ") must be divisible by "
                                                                       "'model.n_heads' ("
                                                                    << m.n_heads << ")");
  PF_CONFIG_REQUIRE(m.n_layers >= 1, "'model.n_layers' must be at least 1, found " << m.n_layers);
  PF_CONFIG_REQUIRE(m.d_ff >= 0, "'model.d_ff' must be at least 1 (or 0 for 4·d_model), found " << m.d_ff);
  PF_CONFIG_REQUIRE(m.d_model <= INT_MAX / 4, "'model.d_model' is too large: " << m.d_model);
  PF_CONFIG_REQUIRE(m.c_z >= 1, "'model.c_z' must be at least 1, found " << m.c_z);
  PF_CONFIG_REQUIRE(m.relpos_clip >= 0, "'model.relpos_clip' must be at least 0, found " << m.relpos_clip);
  PF_CONFIG_REQUIRE(m.dist_bins >= 1, "'model.dist_bins' must be at least 1, found " << m.dist_bins);
  PF_CONFIG_REQUIRE(std::isfinite(m.dist_max) && m.dist_max > 0,
                    "'model.dist_max' must be a positive distance (Å), found " << m.dist_max);
  PF_CONFIG_REQUIRE(m.attn_bias == "pair" || m.attn_bias == "relpos",
                    "'model.attn_bias' must be one of pair, relpos, found '" << echo(m.attn_bias) << "'");

  const DataConfig& d = c.data;
  PF_CONFIG_REQUIRE(!d.train.empty(), "'data.train' must be a file path, found an empty string");
  PF_CONFIG_REQUIRE(!d.val.empty(), "'data.val' must be a file path, found an empty string");
  PF_CONFIG_REQUIRE(d.train != d.val, "'data.train' and 'data.val' must be different files, both are '"
                                          << echo(d.train) << "'");
  PF_CONFIG_REQUIRE(d.n_train >= 1, "'data.n_train' must be at least 1, found " << d.n_train);
  PF_CONFIG_REQUIRE(d.n_val >= 1, "'data.n_val' must be at least 1, found " << d.n_val);
  // Every residue i needs a neighbour j with |i - j| > 2: the middle residue of a chain of 5
  // has none, a chain of 6 is the shortest where all have one.
  PF_CONFIG_REQUIRE(d.n_res >= 6,
                    "'data.n_res' must be at least 6 (every residue needs a neighbour j with "
                    "|i-j| > 2), found "
                        << d.n_res);
  const int n_min = d.n_res_min ? d.n_res_min : d.n_res, n_max = d.n_res_max ? d.n_res_max : d.n_res;
  PF_CONFIG_REQUIRE(n_min >= 6,
                    "'data.n_res_min' must be at least 6 (every residue needs a neighbour j with "
                    "|i-j| > 2), found "
                        << n_min);
  PF_CONFIG_REQUIRE(n_max >= n_min,
                    "'data.n_res_max' (" << n_max << ") must be at least 'data.n_res_min' (" << n_min << ")");
  PF_CONFIG_REQUIRE(d.task == "chain" || d.task == "relpos",
                    "'data.task' must be one of chain, relpos, found '" << echo(d.task) << "'");

  const TrainConfig& t = c.train;
  PF_CONFIG_REQUIRE(t.steps >= 1, "'train.steps' must be at least 1, found " << t.steps);
  PF_CONFIG_REQUIRE(t.batch_size >= 1, "'train.batch_size' must be at least 1, found " << t.batch_size);
  PF_CONFIG_REQUIRE(t.batch_size <= d.n_train, "'train.batch_size' (" << t.batch_size
                                                                      << ") must not exceed "
                                                                         "'data.n_train' ("
                                                                      << d.n_train << ")");
  PF_CONFIG_REQUIRE(t.batch_tokens >= 0,
                    "'train.batch_tokens' must be at least 0 (0 = batches of batch_size "
                    "chains), found "
                        << t.batch_tokens);
  PF_CONFIG_REQUIRE(t.batch_tokens == 0 || t.batch_tokens >= n_max,
                    "'train.batch_tokens' (" << t.batch_tokens
                                             << ") must hold the longest chain, 'data.n_res_max' (" << n_max
                                             << ")");
  PF_CONFIG_REQUIRE(std::isfinite(t.lr) && t.lr > 0, "'train.lr' must be positive, found " << t.lr);
  PF_CONFIG_REQUIRE(std::isfinite(t.min_lr) && t.min_lr >= 0,
                    "'train.min_lr' must be at least 0, found " << t.min_lr);
  PF_CONFIG_REQUIRE(t.min_lr <= t.lr,
                    "'train.min_lr' (" << t.min_lr << ") must not exceed 'train.lr' (" << t.lr << ")");
  PF_CONFIG_REQUIRE(t.warmup >= 0, "'train.warmup' must be at least 0, found " << t.warmup);
  PF_CONFIG_REQUIRE(t.warmup <= t.steps,
                    "'train.warmup' (" << t.warmup << ") must not exceed 'train.steps' (" << t.steps << ")");
  PF_CONFIG_REQUIRE(std::isfinite(t.weight_decay) && t.weight_decay >= 0,
                    "'train.weight_decay' must be at least 0, found " << t.weight_decay);
  PF_CONFIG_REQUIRE(std::isfinite(t.grad_clip) && t.grad_clip >= 0,
                    "'train.grad_clip' must be at least 0 (0 = no clipping), found " << t.grad_clip);
  PF_CONFIG_REQUIRE(t.eval_every >= 1, "'train.eval_every' must be at least 1, found " << t.eval_every);
  PF_CONFIG_REQUIRE(t.log_every >= 1, "'train.log_every' must be at least 1, found " << t.log_every);
  PF_CONFIG_REQUIRE(t.checkpoint_every >= 1,
                    "'train.checkpoint_every' must be at least 1, found " << t.checkpoint_every);
  PF_CONFIG_REQUIRE(t.precision == "fp32" || t.precision == "bf16" || t.precision == "fp64",
                    "'train.precision' must be one of fp32, bf16, fp64, found '" << echo(t.precision) << "'");
  PF_CONFIG_REQUIRE(t.cuda_graph == "auto" || t.cuda_graph == "on" || t.cuda_graph == "off",
                    "'train.cuda_graph' must be one of auto, on, off, found '" << echo(t.cuda_graph) << "'");
  PF_CONFIG_REQUIRE(t.max_bad_steps >= 1,
                    "'train.max_bad_steps' must be at least 1, found " << t.max_bad_steps);

  PF_CONFIG_REQUIRE(c.device == "auto" || c.device == "cpu" || c.device == "cuda",
                    "'device' must be one of auto, cpu, cuda, found '" << echo(c.device) << "'");
  PF_CONFIG_REQUIRE(!c.out.empty(), "'out' must be a directory path, found an empty string");
  validate_sizes(c);
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  return build(read_file(path), "'" + path + "'", overrides);
}

Config config_from_yaml_string(const std::string& yaml, const std::vector<std::string>& overrides) {
  return build(yaml, "the YAML text", overrides);
}

std::string config_to_yaml(const Config& cfg) {
  Config c = cfg;
  YAML::Emitter e;
  e << YAML::BeginMap;
  for (const Section& s : key_table(c)) {
    if (*s.name) e << YAML::Key << s.name << YAML::Value << YAML::BeginMap;
    for (const Key& k : s.keys) {
      e << YAML::Key << k.name << YAML::Value;
      const std::string v = format_value(k);
      if (k.kind != Kind::String)
        e << v;
      else if (is_utf8(v))
        e << YAML::DoubleQuoted << v;
      else
        e << YAML::Binary(reinterpret_cast<const unsigned char*>(v.data()), v.size());
    }
    if (*s.name) e << YAML::EndMap;
  }
  e << YAML::EndMap;
  PF_CHECK(e.good(), "config_to_yaml: YAML emitter failed: " << e.GetLastError());
  return "# pairflash run configuration (resolved: every key, defaults included)\n" + std::string(e.c_str()) +
         "\n";
}

uint64_t config_hash(const Config& cfg) {
  Config c = cfg;
  if (c.model.d_ff == 0) c.model.d_ff = 4 * c.model.d_model;
  if (c.data.n_res_min == c.data.n_res) c.data.n_res_min = 0;  // the default, unresolved
  if (c.data.n_res_max == c.data.n_res) c.data.n_res_max = 0;
  Config defaults;
  const std::vector<Section> default_table = key_table(defaults);
  std::string text;
  const std::vector<Section> table = key_table(c);
  for (size_t si = 0; si < table.size(); ++si) {
    const Section& s = table[si];
    const std::string sec = s.name;
    if (sec != "model" && sec != "data") continue;
    for (size_t ki = 0; ki < s.keys.size(); ++ki) {
      const Key& k = s.keys[ki];
      if (sec == "data" && (std::string(k.name) == "train" || std::string(k.name) == "val")) continue;
      if (k.late && format_value(k) == format_value(default_table[si].keys[ki])) continue;
      text += sec + "." + k.name + "=" + format_value(k) + "\n";
    }
  }
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace pf
