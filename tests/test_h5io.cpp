// framework/h5io: round trips of every dtype and attribute kind, atomic writes, and one clear
// pf::Error (never a crash) for every kind of bad file or request.
#include "framework/h5io.h"

#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/check.h"

namespace fs = std::filesystem;

namespace {

// Expects `fn` to throw pf::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const pf::Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
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
  EXPECT_FALSE(r.has("model"));               // a group is not a dataset
  EXPECT_FALSE(r.has("model/layers.0.attn.q"));
  EXPECT_FALSE(r.has("nothing/here/at/all"));
  EXPECT_EQ(r.list_datasets("model"),
            (std::vector<std::string>{"layers.0.attn.q.weight", "layers.10.mlp.fc1.bias", "sub/x"}));
  EXPECT_EQ(r.list_datasets("/"), (std::vector<std::string>{"model/layers.0.attn.q.weight",
                                                            "model/layers.10.mlp.fc1.bias", "model/sub/x",
                                                            "optim/step"}));
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
    w.write_attr("/model", "n_heads", 4);      // int overload
    w.write_attr("/model", "n_heads", 8);      // replaced
    w.write_attr("/", "device", "cpu");        // const char* overload
    w.write_attr("/run/info", "version", 3);   // a missing object becomes a group
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
    EXPECT_TRUE(fs::exists(p + ".tmp"));
    EXPECT_FALSE(fs::exists(p));  // nothing at the path before commit
    w.commit();
    EXPECT_TRUE(fs::exists(p));
    EXPECT_FALSE(fs::exists(p + ".tmp"));
    expect_error([&] { w.write_dataset("late", v1.data(), {97}); }, {"already committed"});
    expect_error([&] { w.commit(); }, {"already committed"});
  }
  EXPECT_TRUE(fs::exists(p));  // the destructor after commit leaves the file alone
  {
    pf::H5Writer w(p);  // a second run that dies before commit
    w.write_dataset("w", v2.data(), {97});
    EXPECT_TRUE(fs::exists(p + ".tmp"));
  }
  EXPECT_FALSE(fs::exists(p + ".tmp"));
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

TEST_F(H5IoTest, BadRequestsAreClearErrors) {
  const std::string p = small_file("small.h5");
  pf::H5Reader r(p);
  expect_error([&] { r.read_float("model/embed.weight", {8, 64}); },
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
    hid_t unwritten = H5Dcreate2(f, "unwritten", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
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
  int rejected = 0;
  for (int trial = 0; trial < 60; ++trial) {
    std::string b = bytes;
    for (int k = 0; k < 8; ++k) b[8 + rng_() % 2000] = static_cast<char>(rng_());
    {
      std::ofstream out(c, std::ios::binary | std::ios::trunc);
      out << b;
    }
    try {
      pf::H5Reader r(c);
      for (const std::string& n : r.list_datasets("/")) {
        r.shape(n);
        try { r.read_float(n); } catch (const pf::Error&) {}  // int32 data: wrong class
        try { r.read_int32(n); } catch (const pf::Error&) {}  // float data: wrong class
      }
      r.attr_int("/model", "d_model");
    } catch (const pf::Error&) {
      ++rejected;
    }
  }
  // ~3 in 4 such corruptions break the opening, the listing or the attribute (measured over
  // 1500 trials); none noticed in 60 would mean the checks are not running.
  EXPECT_GT(rejected, 0);
}
