// framework/h5io: round trips of every dtype and attribute kind, atomic writes, and one clear
// pf::Error (never a crash) for every kind of bad file or request.
#include "framework/h5io.h"

#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "framework/files.h"
#include "kernels/check.h"

namespace fs = std::filesystem;

namespace {

// Expects `fn` to throw pf::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const pf::Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected pf::Error, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected pf::Error, nothing was thrown";
}

class H5IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    rng_.seed(seed_);
    dir_ = fs::temp_directory_path() /
           ("pf_test_h5io_" + std::to_string(::getpid()) + "_" + std::to_string(seed_));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

  template <class T>
  std::vector<T> random_values(int64_t n) {
    std::vector<T> v(static_cast<size_t>(n));
    if constexpr (std::is_floating_point_v<T>) {
      std::normal_distribution<T> d(0, 100);
      for (auto& x : v) x = d(rng_);
    } else {
      std::uniform_int_distribution<T> d(std::numeric_limits<T>::min(), std::numeric_limits<T>::max());
      for (auto& x : v) x = d(rng_);
    }
    return v;
  }

  // A small valid file: one dataset and one attribute.
  std::string small_file(const std::string& name) {
    std::string p = file(name);
    pf::H5Writer w(p);
    std::vector<float> v = random_values<float>(8 * 32);
    w.write_dataset("model/embed.weight", v.data(), {8, 32});
    std::vector<int32_t> t = random_values<int32_t>(97);
    w.write_dataset("tokens", t.data(), {97});
    w.write_attr("/", "format_version", int64_t{1});
    w.write_attr("/model", "d_model", int64_t{32});
    w.commit();
    return p;
  }

  unsigned seed_ = 0;
  std::mt19937_64 rng_;
  fs::path dir_;
};

size_t numel(const std::vector<int64_t>& s) {
  size_t n = 1;
  for (int64_t d : s) n *= static_cast<size_t>(d);
  return n;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
// Replaces the file (a new inode: truncating one in place makes ext4 flush it, ~7 ms a write).
void write_bytes(const std::string& path, const std::string& bytes) {
  std::remove(path.c_str());
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// The integrity header every H5Writer file starts with (h5io.h): a 512-byte HDF5 user block.
constexpr size_t kUserBlock = 512;
const std::string kMagic = "pairflash-h5 integrity v1\n";
const std::string kHdf5Signature("\x89HDF\r\n\x1a\n", 8);

const std::vector<std::vector<int64_t>> kShapes = {{}, {1}, {17}, {97, 3}, {2, 17, 5}, {0, 4}, {1, 1, 1, 1}};

}  // namespace

TEST_F(H5IoTest, RoundTripEveryDtypeAndShape) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const std::string p = file("rt.h5");
  std::vector<std::vector<float>> f;
  std::vector<std::vector<double>> d;
  std::vector<std::vector<int32_t>> i32;
  std::vector<std::vector<int64_t>> i64;
  {
    pf::H5Writer w(p);
    for (size_t k = 0; k < kShapes.size(); ++k) {
      const auto& s = kShapes[k];
      const int64_t n = static_cast<int64_t>(numel(s));
      f.push_back(random_values<float>(n));
      d.push_back(random_values<double>(n));
      i32.push_back(random_values<int32_t>(n));
      i64.push_back(random_values<int64_t>(n));
      const std::string k_ = std::to_string(k);
      w.write_dataset("f/x" + k_, f.back().data(), s);
      w.write_dataset("d/x" + k_, d.back().data(), s);
      w.write_dataset("i32/x" + k_, i32.back().data(), s);
      w.write_dataset("i64/deeper/x" + k_, i64.back().data(), s);
    }
    w.commit();
  }
  pf::H5Reader r(p);
  for (size_t k = 0; k < kShapes.size(); ++k) {
    const auto& s = kShapes[k];
    const std::string k_ = std::to_string(k);
    SCOPED_TRACE("shape " + pf::h5_shape_str(s));
    EXPECT_EQ(r.shape("f/x" + k_), s);
    EXPECT_EQ(r.read_float("f/x" + k_, s), f[k]);  // exact: same bits back
    EXPECT_EQ(r.read_double("d/x" + k_, s), d[k]);
    EXPECT_EQ(r.read_int32("i32/x" + k_, s), i32[k]);
    EXPECT_EQ(r.read_int64("i64/deeper/x" + k_, s), i64[k]);
    // float32 widens exactly to float64; float64 narrows with IEEE round-to-nearest
    std::vector<double> fd = r.read_double("f/x" + k_);
    std::vector<float> df = r.read_float("d/x" + k_);
    ASSERT_EQ(fd.size(), f[k].size());
    for (size_t j = 0; j < fd.size(); ++j) {
      EXPECT_EQ(fd[j], static_cast<double>(f[k][j]));
      EXPECT_EQ(df[j], static_cast<float>(d[k][j]));
    }
    // int32 widens to int64 without loss
    std::vector<int64_t> wide = r.read_int64("i32/x" + k_);
    EXPECT_EQ(wide, std::vector<int64_t>(i32[k].begin(), i32[k].end()));
  }
}

TEST_F(H5IoTest, DottedNamesSlashesMakeGroupsAndListing) {
  const std::string p = file("names.h5");
  std::vector<float> a = random_values<float>(6), b = random_values<float>(3);
  {
    pf::H5Writer w(p);
    w.write_dataset("model/layers.0.attn.q.weight", a.data(), {2, 3});
    w.write_dataset("/model/layers.10.mlp.fc1.bias", b.data(), {3});
    w.write_dataset("model/sub/x", b.data(), {3});
    w.write_dataset("optim/step", b.data(), {3});
    w.commit();
  }
  pf::H5Reader r(p);
  EXPECT_TRUE(r.has_group("model"));
  EXPECT_TRUE(r.has_group("/model/sub"));
  EXPECT_FALSE(r.has_group("model/layers"));  // the dots did not make groups
  EXPECT_FALSE(r.has_group("model/layers.0.attn.q.weight"));
  EXPECT_TRUE(r.has("model/layers.0.attn.q.weight"));
  EXPECT_TRUE(r.has("/model/layers.0.attn.q.weight"));
  EXPECT_FALSE(r.has("model"));  // a group is not a dataset
  EXPECT_FALSE(r.has("model/layers.0.attn.q"));
  EXPECT_FALSE(r.has("nothing/here/at/all"));
  EXPECT_EQ(r.list_datasets("model"),
            (std::vector<std::string>{"layers.0.attn.q.weight", "layers.10.mlp.fc1.bias", "sub/x"}));
  EXPECT_EQ(r.list_datasets("/"),
            (std::vector<std::string>{"model/layers.0.attn.q.weight", "model/layers.10.mlp.fc1.bias",
                                      "model/sub/x", "optim/step"}));
  EXPECT_EQ(r.read_float("model/layers.0.attn.q.weight"), a);
  expect_error([&] { r.list_datasets("nope"); }, {"group 'nope'", "not found", p});
}

TEST_F(H5IoTest, AttributesRoundTripOnRootGroupsAndDatasets) {
  const std::string p = file("attrs.h5");
  std::uniform_int_distribution<int64_t> di;
  std::uniform_int_distribution<uint64_t> du(uint64_t{1} << 63, ~uint64_t{0});  // beyond int64
  std::normal_distribution<double> dd(0, 1e6);
  const int64_t i = -di(rng_);
  const uint64_t u = du(rng_);
  const double x = dd(rng_);
  const std::string s = "fp32 · Å utf-8 " + std::to_string(seed_);
  {
    pf::H5Writer w(p);
    std::vector<float> v = random_values<float>(17);
    w.write_dataset("model/embed.weight", v.data(), {17});
    w.write_attr("/", "step", i);
    w.write_attr("/", "seed", u);
    w.write_attr("/model", "dist_max", x);
    w.write_attr("/model", "precision", s);
    w.write_attr("model/embed.weight", "note", std::string());
    w.write_attr("/model", "n_heads", 4);     // int overload
    w.write_attr("/model", "n_heads", 8);     // replaced
    w.write_attr("/", "device", "cpu");       // const char* overload
    w.write_attr("/run/info", "version", 3);  // a missing object becomes a group
    w.commit();
  }
  pf::H5Reader r(p);
  EXPECT_EQ(r.attr_int("/", "step"), i);
  EXPECT_EQ(r.attr_uint64("/", "seed"), u);
  EXPECT_EQ(r.attr_double("/model", "dist_max"), x);
  EXPECT_EQ(r.attr_string("/model", "precision"), s);
  EXPECT_EQ(r.attr_string("model/embed.weight", "note"), "");
  EXPECT_EQ(r.attr_int("model", "n_heads"), 8);
  EXPECT_EQ(r.attr_double("model", "n_heads"), 8.0);  // integers convert to double
  EXPECT_EQ(r.attr_string("/", "device"), "cpu");
  EXPECT_TRUE(r.has_group("run/info"));
  EXPECT_EQ(r.attr_int("run/info", "version"), 3);
  EXPECT_TRUE(r.has_attr("/", "step"));
  EXPECT_FALSE(r.has_attr("/", "stpe"));
  EXPECT_FALSE(r.has_attr("/missing", "step"));

  expect_error([&] { r.attr_int("/model", "d_model"); }, {"attribute 'd_model'", "not found", p});
  expect_error([&] { r.attr_int("/nowhere", "x"); }, {"'/nowhere'", "not found"});
  expect_error([&] { r.attr_int("/model", "precision"); }, {"'precision'", "expected an integer", "string"});
  expect_error([&] { r.attr_int("/model", "dist_max"); }, {"expected an integer", "float64"});
  expect_error([&] { r.attr_int("/", "seed"); }, {"'seed'", "does not fit in int64"});
  expect_error([&] { r.attr_string("/", "step"); }, {"expected a string", "int64"});
  expect_error([&] { r.attr_double("/model", "precision"); }, {"expected a number", "string"});
  expect_error([&] { r.attr_uint64("/", "step"); }, {"expected a non-negative integer"});
}

TEST_F(H5IoTest, CommitIsAtomicAndAnAbortedWriterLeavesTheOldFile) {
  const std::string p = file("ckpt.h5");
  std::vector<double> v1 = random_values<double>(97), v2 = random_values<double>(97);
  {
    pf::H5Writer w(p);
    w.write_dataset("w", v1.data(), {97});
    EXPECT_TRUE(pf::is_temp_path(w.tmp_path()) && w.tmp_path().rfind(p + ".tmp.", 0) == 0) << w.tmp_path();
    EXPECT_TRUE(fs::exists(w.tmp_path()));
    EXPECT_FALSE(fs::exists(p));  // nothing at the path before commit
    w.commit();
    EXPECT_TRUE(fs::exists(p));
    EXPECT_FALSE(fs::exists(w.tmp_path()));
    expect_error([&] { w.write_dataset("late", v1.data(), {97}); }, {"already committed"});
    expect_error([&] { w.commit(); }, {"already committed"});
  }
  EXPECT_TRUE(fs::exists(p));  // the destructor after commit leaves the file alone
  std::string aborted_tmp;
  {
    pf::H5Writer w(p);  // a second run that dies before commit
    w.write_dataset("w", v2.data(), {97});
    aborted_tmp = w.tmp_path();
    EXPECT_TRUE(fs::exists(aborted_tmp));
    pf::H5Writer other(p);  // two writers of one path never share a temp file
    EXPECT_NE(other.tmp_path(), aborted_tmp);
  }
  EXPECT_FALSE(fs::exists(aborted_tmp));
  EXPECT_EQ(pf::H5Reader(p).read_double("w"), v1);
  {
    pf::H5Writer w(p);  // and one that succeeds replaces it
    w.write_dataset("w", v2.data(), {97});
    w.commit();
  }
  EXPECT_EQ(pf::H5Reader(p).read_double("w"), v2);
  EXPECT_EQ(fs::directory_iterator(dir_) == fs::directory_iterator(), false);
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir_)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);  // no stray .tmp
}

// The same content written twice, seconds apart, is the same bytes: HDF5's object times are off
// (a user compares checkpoints of identical runs with cmp). commit_new never replaces a file.
TEST_F(H5IoTest, SameContentSameBytesAndCommitNewNeverReplaces) {
  const std::vector<double> v = random_values<double>(33);
  auto write = [&](const std::string& p, bool replace) {
    pf::H5Writer w(p);
    w.write_dataset("model/layers.0/w", v.data(), {3, 11});
    w.write_attr("/model", "d_model", int64_t{11});
    w.write_attr("/", "note", "same");
    if (replace) {
      w.commit();
      return true;
    }
    return w.commit_new();
  };
  write(file("one.h5"), true);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // HDF5 keeps times in seconds
  write(file("two.h5"), true);
  EXPECT_EQ(read_bytes(file("one.h5")), read_bytes(file("two.h5")));
  const std::vector<double> other = random_values<double>(33);
  {
    pf::H5Writer w(file("one.h5"));
    w.write_dataset("model/layers.0/w", other.data(), {3, 11});
    EXPECT_FALSE(w.commit_new());  // one.h5 is there: it stays, this temp file goes
    EXPECT_FALSE(fs::exists(w.tmp_path()));
  }
  EXPECT_EQ(pf::H5Reader(file("one.h5")).read_double("model/layers.0/w", {3, 11}), v);
  EXPECT_TRUE(write(file("three.h5"), false));
  EXPECT_EQ(read_bytes(file("three.h5")), read_bytes(file("one.h5")));
}

TEST_F(H5IoTest, BadRequestsAreClearErrors) {
  const std::string p = small_file("small.h5");
  pf::H5Reader r(p);
  expect_error(
      [&] {
        r.read_float("model/embed.weight", {8, 64});
      },
      {"dataset 'model/embed.weight' in file " + p, "expected shape [8, 64], found [8, 32]"});
  expect_error([&] { r.read_float("model/missing.weight"); }, {"'model/missing.weight'", "not found", p});
  expect_error([&] { r.shape("model/missing.weight"); }, {"'model/missing.weight'", "not found"});
  expect_error([&] { r.read_float("model"); }, {"'model'", "not found"});  // a group, not a dataset
  expect_error([&] { r.read_float("tokens"); }, {"'tokens'", "expected floating-point", "int32"});
  expect_error([&] { r.read_double("tokens"); }, {"'tokens'", "expected floating-point", "int32"});
  expect_error([&] { r.read_int32("model/embed.weight"); }, {"expected integer", "float32"});
  expect_error([&] { r.read_float("a//b"); }, {"'a//b'", "non-empty"});

  const std::string p64 = file("wide.h5");
  {
    pf::H5Writer w(p64);
    std::vector<int64_t> v = random_values<int64_t>(17);
    w.write_dataset("big", v.data(), {17});
    expect_error([&] { w.write_dataset("big", v.data(), {17}); }, {"'big'", "already exists"});
    expect_error([&] { w.write_dataset("/", v.data(), {17}); }, {"root group"});
    expect_error([&] { w.write_dataset("neg", v.data(), {-1, 17}); }, {"non-negative", "[-1, 17]"});
    expect_error([&] { w.write_dataset("null", static_cast<const int64_t*>(nullptr), {3}); }, {"null data"});
    expect_error([&] { w.write_dataset("big/inside", v.data(), {17}); }, {"'big/inside'"});
    w.commit();
  }
  expect_error([&] { pf::H5Reader(p64).read_int32("big"); }, {"'big'", "fit in int32", "int64"});
  expect_error([&] { pf::H5Writer(file("no/such/dir/x.h5")); }, {"does not exist"});
}

TEST_F(H5IoTest, MissingTruncatedAndRandomFilesAreErrorsNotCrashes) {
  expect_error([&] { pf::H5Reader r(file("absent.h5")); }, {file("absent.h5"), "not found"});
  expect_error([&] { pf::H5Reader r(dir_.string()); }, {"not a regular file"});

  // random bytes
  const std::string junk = file("junk.h5");
  {
    std::ofstream out(junk, std::ios::binary);
    for (int k = 0; k < 4096; ++k) out.put(static_cast<char>(rng_() & 0xff));
  }
  expect_error([&] { pf::H5Reader r(junk); }, {junk, "not an HDF5 file"});

  // an empty file
  const std::string empty = file("empty.h5");
  { std::ofstream out(empty, std::ios::binary); }
  expect_error([&] { pf::H5Reader r(empty); }, {empty});

  // the HDF5 signature followed by random bytes
  const std::string sig = file("sig.h5");
  {
    std::ofstream out(sig, std::ios::binary);
    out.write("\x89HDF\r\n\x1a\n", 8);
    for (int k = 0; k < 4096; ++k) out.put(static_cast<char>(rng_() & 0xff));
  }
  expect_error([&] { pf::H5Reader r(sig); }, {sig});

  // a real file truncated to half, and to other random lengths
  const std::string p = small_file("whole.h5");
  const auto size = fs::file_size(p);
  std::vector<uintmax_t> lengths = {size / 2, 1, 7, size - 1};
  for (int k = 0; k < 8; ++k) lengths.push_back(8 + rng_() % (size - 9));
  for (uintmax_t len : lengths) {
    SCOPED_TRACE("truncated to " + std::to_string(len) + " of " + std::to_string(size) + " bytes");
    const std::string t = file("trunc.h5");
    fs::copy_file(p, t, fs::copy_options::overwrite_existing);
    fs::resize_file(t, len);
    expect_error(
        [&] {
          pf::H5Reader r(t);
          r.read_float("model/embed.weight", {8, 32});
          r.read_int32("tokens");
          r.attr_int("/model", "d_model");
        },
        {t});
  }
}

TEST_F(H5IoTest, WritingAfterReadingTheSamePathWorks) {
  const std::string p = small_file("reuse.h5");
  {
    pf::H5Reader r(p);
    EXPECT_EQ(r.attr_int("/", "format_version"), 1);
  }
  std::vector<float> v = random_values<float>(5);
  pf::H5Writer w(p);
  w.write_dataset("x", v.data(), {5});
  w.commit();
  pf::H5Reader r(p);
  EXPECT_EQ(r.read_float("x", {5}), v);
  EXPECT_FALSE(r.has("tokens"));
}

// Files from other producers (h5py writes variable-length strings and any integer width):
// written here with the raw C API, read back through H5Reader.
TEST_F(H5IoTest, ReadsForeignStringAndIntegerKinds) {
  const std::string p = file("foreign.h5");
  std::vector<uint8_t> small(17);
  std::vector<uint32_t> big(17);
  for (auto& x : small) x = static_cast<uint8_t>(rng_());
  for (auto& x : big) x = static_cast<uint32_t>(rng_());
  {
    hid_t f = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    hsize_t n = 17;
    hid_t space = H5Screate_simple(1, &n, nullptr);
    hid_t d8 = H5Dcreate2(f, "u8", H5T_STD_U8LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d8, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, small.data());
    hid_t d32 = H5Dcreate2(f, "u32", H5T_STD_U32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d32, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, big.data());
    hid_t unwritten =
        H5Dcreate2(f, "unwritten", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(unwritten);
    hid_t scalar = H5Screate(H5S_SCALAR);
    hid_t vstr = H5Tcopy(H5T_C_S1);
    H5Tset_size(vstr, H5T_VARIABLE);
    hid_t a1 = H5Acreate2(f, "vlen", vstr, scalar, H5P_DEFAULT, H5P_DEFAULT);
    const char* text = "variable length";
    H5Awrite(a1, vstr, &text);
    hid_t fstr = H5Tcopy(H5T_C_S1);
    H5Tset_size(fstr, 8);
    H5Tset_strpad(fstr, H5T_STR_SPACEPAD);
    hid_t a2 = H5Acreate2(f, "spaced", fstr, scalar, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a2, fstr, "bf16    ");
    hid_t vec = H5Acreate2(f, "vector", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    std::vector<int64_t> ones(17, 1);
    H5Awrite(vec, H5T_NATIVE_INT64, ones.data());
    for (hid_t id : {a1, a2, vec}) H5Aclose(id);
    for (hid_t id : {vstr, fstr}) H5Tclose(id);
    for (hid_t id : {d8, d32}) H5Dclose(id);
    for (hid_t id : {space, scalar}) H5Sclose(id);
    H5Fclose(f);
  }
  pf::H5Reader r(p);
  EXPECT_EQ(r.attr_string("/", "vlen"), "variable length");
  EXPECT_EQ(r.attr_string("/", "spaced"), "bf16");
  expect_error([&] { r.attr_int("/", "vector"); }, {"'vector'", "expected a single value, found 17"});
  std::vector<int32_t> got = r.read_int32("u8", {17});
  EXPECT_EQ(got, std::vector<int32_t>(small.begin(), small.end()));
  expect_error([&] { r.read_int32("u32"); }, {"'u32'", "fit in int32", "uint32"});
  std::vector<int64_t> wide = r.read_int64("u32");
  EXPECT_EQ(wide, std::vector<int64_t>(big.begin(), big.end()));
  expect_error([&] { r.read_float("unwritten"); }, {"'unwritten'", "needs 68 bytes, the file stores 0"});
}

// Random bytes overwritten inside a real file's metadata: whatever HDF5 makes of them, the
// outcome is a pf::Error or a clean read, never a crash, a hang or a huge allocation.
TEST_F(H5IoTest, CorruptedMetadataNeverCrashes) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const std::string p = small_file("good.h5");
  std::string bytes;
  {
    std::ifstream in(p, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string c = file("corrupt.h5");
  int rejected = 0, changed = 0;
  for (int trial = 0; trial < 60; ++trial) {
    std::string b = bytes;
    for (int k = 0; k < 8; ++k) b[8 + rng_() % 2000] = static_cast<char>(rng_());
    changed += b != bytes;
    {
      std::ofstream out(c, std::ios::binary | std::ios::trunc);
      out << b;
    }
    try {
      pf::H5Reader r(c);
      for (const std::string& n : r.list_datasets("/")) {
        r.shape(n);
        try {
          r.read_float(n);
        } catch (const pf::Error&) {
        }  // int32 data: wrong class
        try {
          r.read_int32(n);
        } catch (const pf::Error&) {
        }  // float data: wrong class
      }
      r.attr_int("/model", "d_model");
    } catch (const pf::Error&) {
      ++rejected;
    }
  }
  // The integrity header refuses every trial that changed a byte: past the magic line (bytes
  // 0-25) by the hash or the header's text, inside it as a damaged magic line (8 bytes at most
  // of its 26 differ). A trial whose 8 writes all put back the byte that was there reads cleanly.
  EXPECT_EQ(rejected, changed);
}

// ---- the integrity header ----------------------------------------------------------------

TEST_F(H5IoTest, WrittenFilesStartWithAnIntegrityHeaderThatHdf5Skips) {
  const std::string p = small_file("header.h5");
  const std::string bytes = read_bytes(p);
  ASSERT_GT(bytes.size(), kUserBlock + 8);
  EXPECT_EQ(bytes.substr(0, kMagic.size()), kMagic);
  const std::string lines = kMagic + "bytes " + std::to_string(bytes.size()) + "\nhash ";
  ASSERT_EQ(bytes.substr(0, lines.size()), lines);
  const size_t hash_end = bytes.find('\n', lines.size());
  EXPECT_EQ(hash_end - lines.size(), 16u) << "16 hex digits";
  EXPECT_EQ(bytes.find_first_not_of('\0', hash_end + 1), kUserBlock)
      << "NUL bytes up to the user block's end";
  EXPECT_EQ(bytes.substr(kUserBlock, 8), kHdf5Signature);
  // HDF5 itself (any reader that knows nothing of our header) sees a 512-byte user block and
  // the data: opened with the plain C API, default driver.
  hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  hid_t fcpl = H5Fget_create_plist(f);
  hsize_t ub = 0;
  H5Pget_userblock(fcpl, &ub);
  EXPECT_EQ(ub, kUserBlock);
  hid_t ds = H5Dopen2(f, "tokens", H5P_DEFAULT);
  std::vector<int32_t> raw(97);
  EXPECT_GE(H5Dread(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()), 0);
  H5Dclose(ds);
  H5Pclose(fcpl);
  H5Fclose(f);
  EXPECT_EQ(raw, pf::H5Reader(p).read_int32("tokens", {97}));
}

// Every single byte of a written file, changed: the reader refuses the file before HDF5 sees it
// (the hash covers everything after the user block; the header lines and the NUL padding are
// checked as text; a magic line with one byte changed is a damaged header, not a foreign file).
TEST_F(H5IoTest, EveryChangedByteIsRefusedBeforeHdf5ParsesIt) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const std::string p = small_file("flip_src.h5");
  const std::string good = read_bytes(p);
  const std::string header = good.substr(0, good.find('\0'));  // "...bytes N\nhash X\n"
  const std::string hash = header.substr(header.size() - 17, 16);
  const std::string c = file("flipped.h5");
  for (size_t pos = 0; pos < good.size(); ++pos) {
    std::string b = good;
    b[pos] = static_cast<char>(b[pos] ^ (1 + rng_() % 255));
    write_bytes(c, b);
    SCOPED_TRACE("byte " + std::to_string(pos) + " of " + std::to_string(good.size()));
    if (pos < kMagic.size())
      expect_error(
          [&] { pf::H5Reader r(c); },
          {c + ": corrupt or truncated HDF5 file: the first line of its pairflash integrity header is "
               "damaged (1 of its 26 bytes differ"});
    else if (pos >= kUserBlock)
      expect_error([&] { pf::H5Reader r(c); }, {c + ": corrupt or truncated HDF5 file: expected " +
                                                std::to_string(good.size()) + " bytes with hash " + hash +
                                                ", found " + std::to_string(good.size()) + " bytes / hash "});
    else  // the header itself: a damaged line, or other (wrong) values
      expect_error([&] { pf::H5Reader r(c); }, {c + ": corrupt or truncated HDF5 file"});
  }

  // Reordered content: two different aligned 8-byte words after the user block swapped.
  for (int k = 0; k < 50; ++k) {
    const size_t words = (good.size() - kUserBlock) / 8;
    const size_t i = kUserBlock + 8 * (rng_() % words), j = kUserBlock + 8 * (rng_() % words);
    if (good.compare(i, 8, good, j, 8) == 0) continue;
    std::string b = good;
    std::swap_ranges(b.begin() + i, b.begin() + i + 8, b.begin() + j);
    write_bytes(c, b);
    expect_error([&] { pf::H5Reader r(c); }, {"corrupt or truncated", "hash " + hash + ", found"});
  }
}

TEST_F(H5IoTest, TruncatedOrExtendedFilesNameBothLengths) {
  const std::string p = small_file("len_src.h5");
  const std::string good = read_bytes(p);
  const std::string n = std::to_string(good.size());
  const std::string c = file("len.h5");
  const size_t header = good.find('\0');  // the end of the header's text
  std::vector<size_t> lengths = {kMagic.size(),  kMagic.size() + 3, header - 1,     header,
                                 kUserBlock - 1, kUserBlock,        kUserBlock + 8, good.size() - 1};
  for (int k = 0; k < 8; ++k) lengths.push_back(kMagic.size() + rng_() % (good.size() - kMagic.size()));
  for (size_t len : lengths) {
    SCOPED_TRACE("truncated to " + std::to_string(len));
    write_bytes(c, good.substr(0, len));
    std::vector<std::string> parts = {c + ": corrupt or truncated HDF5 file",
                                      "found " + std::to_string(len) + " bytes"};
    if (len >= header) parts.push_back("expected " + n + " bytes");  // the header's lines are whole
    expect_error([&] { pf::H5Reader r(c); }, parts);
  }
  write_bytes(c, good + std::string(1, '\0'));  // a trailing byte, even a zero, is not the file written
  expect_error([&] { pf::H5Reader r(c); },
               {"expected " + n + " bytes", "found " + std::to_string(good.size() + 1) + " bytes"});
  write_bytes(c, good.substr(0, kMagic.size() - 1));  // not even the magic: not a file of ours, nor HDF5
  expect_error([&] { pf::H5Reader r(c); }, {c, "not an HDF5 file"});
}

// A user block that is not ours (h5py's userblock_size=512, other tools) is left alone.
TEST_F(H5IoTest, ForeignFilesWithAUserBlockReadAsBefore) {
  const std::string p = file("foreign_ub.h5");
  std::vector<double> v = random_values<double>(17);
  {
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_userblock(fcpl, 1024);
    hid_t f = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    hsize_t n = 17;
    hid_t space = H5Screate_simple(1, &n, nullptr);
    hid_t d = H5Dcreate2(f, "x", H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
    H5Dclose(d);
    H5Sclose(space);
    H5Pclose(fcpl);
    H5Fclose(f);
  }
  std::string b = read_bytes(p);
  const std::string note =
      "some other tool's notes\npairflash-h5 integrity v1\n";  // the magic, not at byte 0
  b.replace(0, note.size(), note);
  write_bytes(p, b);
  EXPECT_EQ(pf::H5Reader(p).read_double("x", {17}), v);
}

// A write that fails (here EFBIG under a file-size limit, like ENOSPC on a full disk) is one
// pf::Error naming the .tmp; the old file stays, no .tmp is left, and the process exits cleanly
// afterwards (HDF5 1.10 crashed at exit after a failed write to a file it had open). In a child
// process: the limit and the exit are the child's.
TEST_F(H5IoTest, AFailingWriteIsOneErrorAndTheProcessExitsCleanly) {
  const std::string p = file("limited.h5");
  std::vector<double> old = random_values<double>(17), big = random_values<double>(20000);  // ~160 KB
  {
    pf::H5Writer w(p);
    w.write_dataset("x", old.data(), {17});
    w.commit();
  }
  const std::string before = read_bytes(p);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);  // a write past the limit fails with EFBIG instead of killing
    struct rlimit lim {
      64 * 1024, 64 * 1024
    };
    ::setrlimit(RLIMIT_FSIZE, &lim);
    int code = 10;
    try {
      pf::H5Writer w(p);
      w.write_dataset("x", big.data(), {20000});
      w.commit();
      code = 11;  // must not succeed
    } catch (const pf::Error& e) {
      const std::string msg = e.what();
      const bool ok = msg.find("cannot write HDF5 file " + p + ".tmp.") != std::string::npos &&
                      msg.find(std::strerror(EFBIG)) != std::string::npos &&
                      msg.find('\n') == std::string::npos;
      if (!ok) std::fprintf(stderr, "unexpected message: %s\n", msg.c_str());
      code = ok ? 0 : 12;
    } catch (...) {
      code = 13;
    }
    std::exit(code);  // runs HDF5's atexit clean-up: the crash was there
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal "
                                 << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "10: nothing thrown yet, 11: commit succeeded, 12: wrong message, 13: other exception";
  EXPECT_EQ(read_bytes(p), before);
  for (const auto& e : fs::directory_iterator(fs::path(p).parent_path()))  // the temp file went
    EXPECT_FALSE(pf::is_temp_path(e.path().string())) << e.path();
  EXPECT_EQ(pf::H5Reader(p).read_double("x", {17}), old);

  // A directory where nothing can be created: refused when the writer is made, before any work.
  expect_error([&] { pf::H5Writer w("/proc/pairflash_h5io.h5"); },
               {"cannot create HDF5 file /proc/pairflash_h5io.h5.tmp."});
}

// h5py (what people open these files with) reads them, user block and all. Skipped where
// python3 with h5py and numpy is not installed.
TEST_F(H5IoTest, H5pyReadsWrittenFiles) {
  std::string python;
  for (const char* candidate : {"/usr/bin/python3", "python3"})
    if (python.empty() &&
        std::system((std::string(candidate) + " -c 'import h5py, numpy' > /dev/null 2>&1").c_str()) == 0)
      python = candidate;
  if (python.empty()) GTEST_SKIP() << "python3 with h5py and numpy not found";
  const std::string p = file("for_h5py.h5");
  std::vector<float> v = random_values<float>(8 * 32);
  {
    pf::H5Writer w(p);
    w.write_dataset("model/embed.weight", v.data(), {8, 32});
    w.write_attr("/model", "d_model", int64_t{32});
    w.write_attr("/", "precision", "bf16");
    w.commit();
  }
  {
    std::ofstream raw(file("expected.f32"), std::ios::binary);
    raw.write(reinterpret_cast<const char*>(v.data()),
              static_cast<std::streamsize>(v.size() * sizeof(float)));
  }
  const std::string script =
      "import h5py, numpy, sys\n"
      "f = h5py.File(sys.argv[1], 'r')\n"
      "want = numpy.fromfile(sys.argv[2], dtype='<f4').reshape(8, 32)\n"
      "assert f.userblock_size == 512, f.userblock_size\n"
      "assert numpy.array_equal(f['model/embed.weight'][()], want)\n"
      "assert f['model'].attrs['d_model'] == 32\n"
      "assert f.attrs['precision'] == 'bf16', f.attrs['precision']\n";
  write_bytes(file("check.py"), script);
  EXPECT_EQ(std::system((python + " " + file("check.py") + " " + p + " " + file("expected.f32")).c_str()), 0);
}
