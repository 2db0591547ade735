// Small HDF5 helpers over the C API: the data files (data/chain.h) and the checkpoints use them.
//
//   H5Writer w("run/checkpoint.h5");                      // opens run/checkpoint.h5.tmp.<pid>.<random>
//   w.write_dataset("model/embed.weight", ptr, {8, 64});  // creates group /model on the way
//   w.write_attr("/model", "d_model", int64_t{64});
//   w.commit();                                            // write, fsync, rename onto the path
//
//   H5Reader r("run/checkpoint.h5");
//   std::vector<float> e = r.read_float("model/embed.weight", {8, 64});
//
// Conventions (stated once, here):
// - Names: slashes make groups, everything else (dots included) is part of a name, so
//   "model/layers.0.attn.q.weight" is dataset "layers.0.attn.q.weight" in group "/model".
//   A leading slash is optional. Empty components ("a//b") and "." / ".." are rejected.
// - Shapes are std::vector<int64_t>, row-major (C order), as HDF5 and h5py store them.
//   An empty shape {} is a scalar dataset; zero-sized dimensions are allowed.
// - Reading converts between float and double (HDF5 does it), and between integer widths
//   where no value can be lost; reading an integer dataset as float (or the reverse) is an
//   error, never a silent conversion.
// - Every failure is a pf::Error with one line naming the file and the object. HDF5's own
//   automatic error printing is turned off; its innermost message is appended instead.
// - Files are bytes of their content only: objects are written without HDF5's creation and
//   modification times, so writing the same content twice gives identical files (cmp).
// - Integrity: HDF5 builds a written file in memory; commit() writes it with plain POSIX calls,
//   so a full disk is our own error and HDF5 never sees a failing write. Every file written here
//   starts with a 512-byte HDF5 user block (HDF5 and h5py skip it) holding a magic line, the
//   file's length and a 64-bit hash of every byte after the user block. H5Reader checks them
//   before HDF5 parses anything: a truncated or corrupt file is one line, "<path>: corrupt or
//   truncated HDF5 file: expected N bytes with hash X, found M bytes / hash Y", never a crash
//   inside HDF5. A damaged magic line (fewer than half of its bytes changed) is refused too.
//   Files without the magic (h5py, other tools) are read as before.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pf {

// "[8, 64]"; "[]" for a scalar.
std::string h5_shape_str(const std::vector<int64_t>& shape);

class H5Writer {
 public:
  // Opens a temp file of its own (tmp_path()), which stays empty until commit(); the HDF5 file is
  // built in memory. Nothing appears at `path` until commit().
  explicit H5Writer(const std::string& path);
  // Without commit(): closes and removes the .tmp; a file already at `path` is untouched.
  ~H5Writer();
  H5Writer(const H5Writer&) = delete;
  H5Writer& operator=(const H5Writer&) = delete;

  // data: prod(shape) contiguous elements (row-major). Fails if `name` already exists.
  void write_dataset(const std::string& name, const float* data, const std::vector<int64_t>& shape);
  void write_dataset(const std::string& name, const double* data, const std::vector<int64_t>& shape);
  void write_dataset(const std::string& name, const int32_t* data, const std::vector<int64_t>& shape);
  void write_dataset(const std::string& name, const int64_t* data, const std::vector<int64_t>& shape);

  // Attribute `name` on the group or dataset `object` ("/" is the root, "/model" a group).
  // A missing object is created as a group; an existing attribute is replaced.
  // Integers are stored as int64 (uint64 for the uint64_t overload), doubles as float64,
  // strings as variable-length UTF-8 (h5py reads them as str). Reading accepts fixed-length
  // strings too.
  void write_attr(const std::string& object, const std::string& name, int64_t value);
  void write_attr(const std::string& object, const std::string& name, int value) {
    write_attr(object, name, static_cast<int64_t>(value));
  }
  void write_attr(const std::string& object, const std::string& name, uint64_t value);
  void write_attr(const std::string& object, const std::string& name, double value);
  void write_attr(const std::string& object, const std::string& name, const std::string& value);
  void write_attr(const std::string& object, const std::string& name, const char* value) {
    write_attr(object, name, std::string(value));
  }

  // Takes the file's image from memory, fills in the integrity header, writes it to the .tmp,
  // fsyncs it, renames the .tmp onto `path` (atomic on POSIX) and fsyncs the directory. A write
  // that fails (ENOSPC, EFBIG, EIO) is a pf::Error naming the .tmp and the reason; the .tmp is
  // removed by the destructor and a file already at `path` is untouched. No writes are possible
  // afterwards. Memory: the file is held twice while commit() runs (HDF5's image and the copy
  // written); a 256 MB file took 2.0 s to write (fsync included) and 0.5 s to read back (hash
  // check + HDF5) on this 2-core machine's disk.
  void commit();
  // commit() that never replaces: a file already at `path` (another process published it
  // first) stays, this one's temp file is removed, and the result is false.
  bool commit_new();

  const std::string& path() const { return path_; }
  // The temp file (framework/files.h: `<path>.tmp.<pid>.<random>`, unique to this writer).
  const std::string& tmp_path() const { return tmp_path_; }

 private:
  void write_raw(const std::string& name, int64_t mem_type, const void* data,
                 const std::vector<int64_t>& shape);
  void write_attr_raw(const std::string& object, const std::string& name, int64_t mem_type, int64_t file_type,
                      const void* value);
  void check_open(const char* what) const;
  bool finish(bool replace);

  std::string path_, tmp_path_;
  int64_t file_ = -1;  // hid_t of the in-memory file
  int fd_ = -1;        // the .tmp, open from the constructor until commit()
  bool committed_ = false;
};

class H5Reader {
 public:
  // Opens an existing HDF5 file read-only; a missing file or one that is not HDF5 (or is
  // truncated) is a pf::Error naming the path. A file with pairflash's integrity header is
  // first checked against it (length and hash), a whole read of the file.
  explicit H5Reader(const std::string& path);
  ~H5Reader();
  H5Reader(const H5Reader&) = delete;
  H5Reader& operator=(const H5Reader&) = delete;

  const std::string& path() const { return path_; }

  bool has(const std::string& dataset) const;  // a dataset of that name
  bool has_group(const std::string& group) const;
  bool has_attr(const std::string& object, const std::string& name) const;
  std::vector<int64_t> shape(const std::string& dataset) const;

  // The whole dataset, row-major. With `expected_shape`, a different shape is an error
  // "dataset 'model/embed.weight' in file X: expected shape [8, 64], found [8, 32]".
  std::vector<float> read_float(const std::string& dataset) const;
  std::vector<float> read_float(const std::string& dataset, const std::vector<int64_t>& expected_shape) const;
  std::vector<double> read_double(const std::string& dataset) const;
  std::vector<double> read_double(const std::string& dataset,
                                  const std::vector<int64_t>& expected_shape) const;
  std::vector<int32_t> read_int32(const std::string& dataset) const;
  std::vector<int32_t> read_int32(const std::string& dataset,
                                  const std::vector<int64_t>& expected_shape) const;
  std::vector<int64_t> read_int64(const std::string& dataset) const;
  std::vector<int64_t> read_int64(const std::string& dataset,
                                  const std::vector<int64_t>& expected_shape) const;

  // Scalar attributes of a group or dataset; missing or of the wrong class is an error.
  int64_t attr_int(const std::string& object, const std::string& name) const;
  uint64_t attr_uint64(const std::string& object, const std::string& name) const;  // rejects negatives
  double attr_double(const std::string& object, const std::string& name) const;    // integers convert
  std::string attr_string(const std::string& object, const std::string& name) const;

  // Datasets below `group`, recursively, as paths relative to it ("layers.0.attn.q.weight",
  // "sub/x"), sorted. A missing group is an error.
  std::vector<std::string> list_datasets(const std::string& group = "/") const;

 private:
  template <class T>
  std::vector<T> read_as(const std::string& dataset, const std::vector<int64_t>* expected_shape) const;
  int64_t open_attr(const std::string& object, const std::string& name) const;

  std::string path_;
  int64_t file_ = -1;  // hid_t
};

}  // namespace pf
