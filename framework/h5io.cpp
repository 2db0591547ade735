// HDF5 helpers: see h5io.h for the conventions (names, shapes, conversions, errors).
#include "framework/h5io.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <new>
#include <type_traits>

#include "framework/files.h"
#include "framework/h5_integrity.h"
#include "kernels/check.h"

static_assert(sizeof(hid_t) == sizeof(int64_t), "h5io.h stores hid_t in an int64_t");

namespace pf {

std::string h5_shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {

// HDF5 prints its whole error stack to stderr by default; we report one line of our own.
// Called by every entry point because the setting is per thread in thread-safe builds.
void quiet_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

// The innermost (most specific) message of HDF5's error stack, as " (HDF5: ...)", then clears it.
std::string hdf5_detail() {
  std::string msg;
  auto visit = [](unsigned n, const H5E_error2_t* e, void* data) -> herr_t {
    if (n == 0 && e && e->desc) *static_cast<std::string*>(data) = e->desc;
    return 0;
  };
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, visit, &msg);
  H5Eclear2(H5E_DEFAULT);
  std::replace(msg.begin(), msg.end(), '\n', ' ');  // some HDF5 messages span lines: ours are one
  return msg.empty() ? std::string() : " (HDF5: " + msg + ")";
}

// Owns one HDF5 identifier and closes it with the matching H5?close.
class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      close_ = o.close_;
      o.id_ = -1;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
  }
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }
  hid_t release() {
    hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// "model/x" / "/model/x" -> "/model/x"; "" and "/" -> "/". Rejects empty, "." and ".." parts.
std::string norm_path(const std::string& name, const std::string& file) {
  if (name.empty() || name == "/") return "/";
  std::string out;
  size_t start = name[0] == '/' ? 1 : 0;
  while (true) {
    size_t end = name.find('/', start);
    std::string part = name.substr(start, end == std::string::npos ? std::string::npos : end - start);
    PF_CHECK(!part.empty() && part != "." && part != "..",
             "HDF5 name '" << name << "' in file " << file
                           << ": expected slash-separated non-empty names, found an empty, '.' or '..' part");
    out += "/" + part;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

// Whether every component of the absolute path `p` exists as a link ("/" always does).
bool path_exists(hid_t file, const std::string& p) {
  if (p == "/") return true;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = p.find('/', pos + 1);
    std::string prefix = p.substr(0, pos);
    if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      return false;
    }
  }
  return true;
}

// H5I_GROUP, H5I_DATASET, ... of the object at `p`, or H5I_BADID when absent.
H5I_type_t object_kind(hid_t file, const std::string& p) {
  if (!path_exists(file, p)) return H5I_BADID;
  Handle obj(H5Oopen(file, p.c_str(), H5P_DEFAULT), H5Oclose);
  if (!obj.ok()) {
    H5Eclear2(H5E_DEFAULT);
    return H5I_BADID;
  }
  return H5Iget_type(obj.get());
}

std::string type_name(hid_t type) {
  size_t size = H5Tget_size(type);
  switch (H5Tget_class(type)) {
    case H5T_INTEGER: return (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(8 * size);
    case H5T_FLOAT: return "float" + std::to_string(8 * size);
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "variable-length";
    case H5T_OPAQUE: return "opaque";
    case H5T_BITFIELD: return "bitfield";
    case H5T_REFERENCE: return "reference";
    default: return "unknown type";
  }
}

// prod(shape), rejecting negative dimensions and overflow.
int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    PF_CHECK(d >= 0, what << ": expected non-negative dimensions, found shape " << h5_shape_str(shape));
    PF_CHECK(d == 0 || n <= std::numeric_limits<int64_t>::max() / d,
             what << ": shape " << h5_shape_str(shape) << " has more elements than fit in int64");
    n *= d;
  }
  return n;
}

Handle make_space(const std::vector<int64_t>& shape) {
  if (shape.empty()) return Handle(H5Screate(H5S_SCALAR), H5Sclose);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  return Handle(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
}

// Objects (groups, datasets) carry no creation or modification times: two files written with
// the same content are the same bytes (identical runs give identical checkpoints).
Handle untimed_ocpl(hid_t cls) {
  Handle p(H5Pcreate(cls), H5Pclose);
  PF_CHECK(p.ok() && H5Pset_obj_track_times(p.get(), false) >= 0,
           "HDF5: cannot create an object property list" << hdf5_detail());
  return p;
}

// Creates the groups above the object at absolute path `p` that do not exist yet, untimed.
void make_parent_groups(hid_t file, const std::string& p, const std::string& what) {
  for (size_t slash = p.find('/', 1); slash != std::string::npos; slash = p.find('/', slash + 1)) {
    const std::string g = p.substr(0, slash);
    if (object_kind(file, g) != H5I_BADID) continue;
    Handle gcpl = untimed_ocpl(H5P_GROUP_CREATE);
    Handle h(H5Gcreate2(file, g.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT), H5Gclose);
    PF_CHECK(h.ok(), what << ": cannot create group '" << g << "'" << hdf5_detail());
  }
}

// Variable-length UTF-8 string type (what h5py writes for a str, and reads back as a str).
Handle string_type() {
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  PF_CHECK(t.ok() && H5Tset_size(t.get(), H5T_VARIABLE) >= 0 && H5Tset_cset(t.get(), H5T_CSET_UTF8) >= 0,
           "HDF5: cannot create a string type" << hdf5_detail());
  return t;
}

// Best effort: a directory entry made durable (the rename of a committed file).
void fsync_dir(const std::string& p) {
  int fd = ::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// write(2) all of [p, p + n), retrying short writes; false (errno set) on an error.
bool write_full(int fd, const unsigned char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      if (w == 0) errno = EIO;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

// ---- H5Writer -----------------------------------------------------------------------------

H5Writer::H5Writer(const std::string& path) : path_(path), tmp_path_(temp_path_for(path)) {
  quiet_hdf5();
  PF_CHECK(!path.empty(), "H5Writer: expected a file path, found an empty string");
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  PF_CHECK(parent.empty() || std::filesystem::is_directory(parent),
           "cannot write HDF5 file " << path << ": directory '" << parent.string() << "' does not exist");
  // The .tmp is opened now, so that an unwritable directory is an error before any work; it
  // receives bytes only at commit().
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  PF_CHECK(fd_ >= 0, "cannot create HDF5 file " << tmp_path_ << ": " << std::strerror(errno));
  // HDF5 builds the file in memory (core driver, no backing store): it never sees a failing
  // write, which HDF5 1.10 does not survive (a failed H5Fclose leaves a half-closed file that
  // crashes the library at exit). The user block reserves room for the integrity header.
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  Handle fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  const bool props = fapl.ok() && fcpl.ok() && H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG) >= 0 &&
                     H5Pset_fapl_core(fapl.get(), size_t{1} << 20, /*backing_store=*/false) >= 0 &&
                     H5Pset_userblock(fcpl.get(), h5_integrity::kUserBlock) >= 0 &&
                     H5Pset_obj_track_times(fcpl.get(), false) >= 0;  // the root group
  if (props) file_ = H5Fcreate(tmp_path_.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get());
  if (file_ < 0) {
    const std::string detail = hdf5_detail();
    ::close(fd_);
    fd_ = -1;
    std::remove(tmp_path_.c_str());
    PF_FAIL("cannot create HDF5 file " << tmp_path_ << " in memory" << detail);
  }
}

H5Writer::~H5Writer() {
  if (file_ >= 0) H5Fclose(file_);
  file_ = -1;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!committed_) std::remove(tmp_path_.c_str());
  H5Eclear2(H5E_DEFAULT);
}

void H5Writer::check_open(const char* what) const {
  PF_CHECK(!committed_ && file_ >= 0,
           "H5Writer::" << what << " on " << path_ << ": the file is already committed");
}

void H5Writer::write_raw(const std::string& name, int64_t mem_type, const void* data,
                         const std::vector<int64_t>& shape) {
  check_open("write_dataset");
  quiet_hdf5();
  const std::string p = norm_path(name, tmp_path_);
  const std::string what = "dataset '" + name + "' in file " + tmp_path_;
  PF_CHECK(p != "/", what << ": expected a dataset name, found the root group");
  const int64_t n = checked_numel(shape, what);
  PF_CHECK(data != nullptr || n == 0, what << ": null data pointer for " << n << " elements");
  PF_CHECK(object_kind(file_, p) == H5I_BADID, what << ": already exists");

  hid_t file_type = -1;
  if (mem_type == H5T_NATIVE_FLOAT)
    file_type = H5T_IEEE_F32LE;
  else if (mem_type == H5T_NATIVE_DOUBLE)
    file_type = H5T_IEEE_F64LE;
  else if (mem_type == H5T_NATIVE_INT32)
    file_type = H5T_STD_I32LE;
  else if (mem_type == H5T_NATIVE_INT64)
    file_type = H5T_STD_I64LE;
  PF_CHECK(file_type >= 0, what << ": unsupported memory type");

  Handle space = make_space(shape);
  PF_CHECK(space.ok(), what << ": cannot create dataspace " << h5_shape_str(shape) << hdf5_detail());
  make_parent_groups(file_, p, what);
  Handle dcpl = untimed_ocpl(H5P_DATASET_CREATE);
  Handle ds(H5Dcreate2(file_, p.c_str(), file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
            H5Dclose);
  PF_CHECK(ds.ok(), what << ": cannot create" << hdf5_detail());
  if (n > 0)
    PF_CHECK(H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0,
             what << ": write failed" << hdf5_detail());
}

void H5Writer::write_dataset(const std::string& name, const float* data, const std::vector<int64_t>& shape) {
  write_raw(name, H5T_NATIVE_FLOAT, data, shape);
}
void H5Writer::write_dataset(const std::string& name, const double* data, const std::vector<int64_t>& shape) {
  write_raw(name, H5T_NATIVE_DOUBLE, data, shape);
}
void H5Writer::write_dataset(const std::string& name, const int32_t* data,
                             const std::vector<int64_t>& shape) {
  write_raw(name, H5T_NATIVE_INT32, data, shape);
}
void H5Writer::write_dataset(const std::string& name, const int64_t* data,
                             const std::vector<int64_t>& shape) {
  write_raw(name, H5T_NATIVE_INT64, data, shape);
}

void H5Writer::write_attr_raw(const std::string& object, const std::string& name, int64_t mem_type,
                              int64_t file_type, const void* value) {
  check_open("write_attr");
  quiet_hdf5();
  const std::string p = norm_path(object, tmp_path_);
  const std::string what = "attribute '" + name + "' of '" + p + "' in file " + tmp_path_;
  PF_CHECK(!name.empty(), what << ": expected a non-empty attribute name");
  if (object_kind(file_, p) == H5I_BADID) make_parent_groups(file_, p + "/", what);
  Handle obj(H5Oopen(file_, p.c_str(), H5P_DEFAULT), H5Oclose);
  PF_CHECK(obj.ok(), what << ": cannot open '" << p << "'" << hdf5_detail());
  htri_t exists = H5Aexists(obj.get(), name.c_str());
  PF_CHECK(exists >= 0, what << ": cannot query" << hdf5_detail());
  if (exists > 0)
    PF_CHECK(H5Adelete(obj.get(), name.c_str()) >= 0, what << ": cannot replace" << hdf5_detail());
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(obj.get(), name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
              H5Aclose);
  PF_CHECK(attr.ok(), what << ": cannot create" << hdf5_detail());
  PF_CHECK(H5Awrite(attr.get(), mem_type, value) >= 0, what << ": write failed" << hdf5_detail());
}

void H5Writer::write_attr(const std::string& object, const std::string& name, int64_t value) {
  write_attr_raw(object, name, H5T_NATIVE_INT64, H5T_STD_I64LE, &value);
}
void H5Writer::write_attr(const std::string& object, const std::string& name, uint64_t value) {
  write_attr_raw(object, name, H5T_NATIVE_UINT64, H5T_STD_U64LE, &value);
}
void H5Writer::write_attr(const std::string& object, const std::string& name, double value) {
  write_attr_raw(object, name, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, &value);
}
void H5Writer::write_attr(const std::string& object, const std::string& name, const std::string& value) {
  PF_CHECK(value.find('\0') == std::string::npos,
           "attribute '" << name << "' of '" << object << "' in file " << tmp_path_
                         << ": expected a string without NUL characters");
  Handle t = string_type();
  const char* text = value.c_str();
  write_attr_raw(object, name, t.get(), t.get(), &text);
}

void H5Writer::commit() { finish(true); }

bool H5Writer::commit_new() { return finish(false); }

bool H5Writer::finish(bool replace) {
  check_open("commit");
  quiet_hdf5();
  // The image of the file in memory, without its user block (HDF5 leaves that to us): it goes
  // after our header. Then HDF5 is done; only plain writes of our own remain.
  std::vector<unsigned char> bytes;
  const ssize_t size = H5Fflush(file_, H5F_SCOPE_GLOBAL) >= 0 ? H5Fget_file_image(file_, nullptr, 0) : -1;
  if (size > 0) {
    bytes.resize(h5_integrity::kUserBlock + static_cast<size_t>(size));
    if (H5Fget_file_image(file_, bytes.data() + h5_integrity::kUserBlock, static_cast<size_t>(size)) != size)
      bytes.clear();
  }
  const std::string detail = bytes.empty() ? hdf5_detail() : std::string();
  const herr_t closed = H5Fclose(file_);
  file_ = -1;
  PF_CHECK(!bytes.empty() && closed >= 0, "cannot finish HDF5 file " << tmp_path_ << detail << hdf5_detail());
  const unsigned char* image = bytes.data() + h5_integrity::kUserBlock;  // HDF5's part
  PF_CHECK(h5_integrity::is_hdf5_image(image, bytes.size() - h5_integrity::kUserBlock),
           "HDF5 file "
               << tmp_path_ << ": expected the in-memory image to start with the HDF5 signature "
               << "(the user block left out), found other bytes (an HDF5 version this code does not know)");
  h5_integrity::fill_header(bytes.data(), bytes.size());

  // A full disk, a file-size limit (EFBIG) or an I/O error: one line, and the .tmp goes.
  const int fd = fd_;
  fd_ = -1;
  const bool written = write_full(fd, bytes.data(), bytes.size()) && ::fsync(fd) == 0;
  const int err = errno;
  const bool closed_fd = ::close(fd) == 0;
  if (!written || !closed_fd)
    PF_FAIL("cannot write HDF5 file " << tmp_path_ << " (" << bytes.size()
                                      << " bytes): " << std::strerror(written ? errno : err));
  committed_ = true;  // from here the .tmp is gone or published, whatever happens
  if (replace) {
    if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
      const int err = errno;
      std::remove(tmp_path_.c_str());
      PF_FAIL("cannot rename " << tmp_path_ << " onto " << path_ << ": " << std::strerror(err));
    }
  } else if (!publish_new(tmp_path_, path_)) {
    return false;
  }
  std::filesystem::path parent = std::filesystem::path(path_).parent_path();
  fsync_dir(parent.empty() ? "." : parent.string());
  return true;
}

// ---- H5Reader -----------------------------------------------------------------------------

H5Reader::H5Reader(const std::string& path) : path_(path) {
  quiet_hdf5();
  std::error_code ec;
  PF_CHECK(std::filesystem::exists(path, ec), "HDF5 file " << path << " not found");
  PF_CHECK(std::filesystem::is_regular_file(path, ec), "HDF5 file " << path << " is not a regular file");
  h5_integrity::check(path);  // pairflash's own files: exactly as written, before HDF5 reads them
  htri_t is_h5 = H5Fis_hdf5(path.c_str());
  PF_CHECK(is_h5 > 0, "file " << path << " is not an HDF5 file (no HDF5 signature)" << hdf5_detail());
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  PF_CHECK(fapl.ok() && H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG) >= 0,
           "HDF5: cannot create a file access property list" << hdf5_detail());
  file_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
  PF_CHECK(file_ >= 0, "cannot open HDF5 file " << path << " (truncated or corrupt?)" << hdf5_detail());
}

H5Reader::~H5Reader() {
  if (file_ >= 0) H5Fclose(file_);
  H5Eclear2(H5E_DEFAULT);
}

bool H5Reader::has(const std::string& dataset) const {
  quiet_hdf5();
  return object_kind(file_, norm_path(dataset, path_)) == H5I_DATASET;
}

bool H5Reader::has_group(const std::string& group) const {
  quiet_hdf5();
  return object_kind(file_, norm_path(group, path_)) == H5I_GROUP;
}

bool H5Reader::has_attr(const std::string& object, const std::string& name) const {
  quiet_hdf5();
  const std::string p = norm_path(object, path_);
  if (object_kind(file_, p) == H5I_BADID) return false;
  htri_t e = H5Aexists_by_name(file_, p.c_str(), name.c_str(), H5P_DEFAULT);
  H5Eclear2(H5E_DEFAULT);
  return e > 0;
}

std::vector<int64_t> H5Reader::shape(const std::string& dataset) const {
  quiet_hdf5();
  const std::string p = norm_path(dataset, path_);
  const std::string what = "dataset '" + dataset + "' in file " + path_;
  PF_CHECK(object_kind(file_, p) == H5I_DATASET, what << ": not found");
  Handle ds(H5Dopen2(file_, p.c_str(), H5P_DEFAULT), H5Dclose);
  PF_CHECK(ds.ok(), what << ": cannot open" << hdf5_detail());
  Handle space(H5Dget_space(ds.get()), H5Sclose);
  PF_CHECK(space.ok(), what << ": cannot read its dataspace" << hdf5_detail());
  int rank = H5Sget_simple_extent_ndims(space.get());
  PF_CHECK(rank >= 0, what << ": cannot read its rank" << hdf5_detail());
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0)
    PF_CHECK(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) >= 0,
             what << ": cannot read its dimensions" << hdf5_detail());
  std::vector<int64_t> out;
  for (hsize_t d : dims) {
    PF_CHECK(d <= static_cast<hsize_t>(std::numeric_limits<int64_t>::max()),
             what << ": dimension " << d << " does not fit in int64");
    out.push_back(static_cast<int64_t>(d));
  }
  return out;
}

template <class T>
std::vector<T> H5Reader::read_as(const std::string& dataset,
                                 const std::vector<int64_t>* expected_shape) const {
  quiet_hdf5();
  const std::string what = "dataset '" + dataset + "' in file " + path_;
  std::vector<int64_t> shp = shape(dataset);  // also checks that it exists
  if (expected_shape)
    PF_CHECK(shp == *expected_shape,
             what << ": expected shape " << h5_shape_str(*expected_shape) << ", found " << h5_shape_str(shp));
  const std::string p = norm_path(dataset, path_);
  Handle ds(H5Dopen2(file_, p.c_str(), H5P_DEFAULT), H5Dclose);
  PF_CHECK(ds.ok(), what << ": cannot open" << hdf5_detail());
  Handle ftype(H5Dget_type(ds.get()), H5Tclose);
  PF_CHECK(ftype.ok(), what << ": cannot read its type" << hdf5_detail());
  const H5T_class_t cls = H5Tget_class(ftype.get());
  const size_t fsize = H5Tget_size(ftype.get());
  PF_CHECK(fsize > 0, what << ": cannot read the size of its type (corrupt file?)" << hdf5_detail());

  hid_t mem_type = H5T_NATIVE_INT64;
  const char* want = "int64";
  if constexpr (std::is_same_v<T, float>) {
    mem_type = H5T_NATIVE_FLOAT;
    want = "float32";
  } else if constexpr (std::is_same_v<T, double>) {
    mem_type = H5T_NATIVE_DOUBLE;
    want = "float64";
  } else if constexpr (std::is_same_v<T, int32_t>) {
    mem_type = H5T_NATIVE_INT32;
    want = "int32";
  }

  if constexpr (std::is_floating_point_v<T>) {
    PF_CHECK(cls == H5T_FLOAT, what << ": expected floating-point data (read as " << want << "), found "
                                    << type_name(ftype.get()));
  } else {
    PF_CHECK(cls == H5T_INTEGER,
             what << ": expected integer data (read as " << want << "), found " << type_name(ftype.get()));
    // Lossless only: a signed type no wider than T, or an unsigned one strictly narrower.
    const bool is_signed = H5Tget_sign(ftype.get()) != H5T_SGN_NONE;
    PF_CHECK(is_signed ? fsize <= sizeof(T) : fsize < sizeof(T),
             what << ": expected integers that fit in " << want << ", found " << type_name(ftype.get()));
  }

  const int64_t n = checked_numel(shp, what);
  // A contiguous dataset stores exactly n elements: a corrupt shape is caught here, before
  // a huge allocation and a long read of fill values.
  Handle dcpl(H5Dget_create_plist(ds.get()), H5Pclose);
  PF_CHECK(dcpl.ok(), what << ": cannot read its layout" << hdf5_detail());
  // Compact datasets too: HDF5 1.10 reads past a compact buffer smaller than the shape says.
  const H5D_layout_t layout = H5Pget_layout(dcpl.get());
  PF_CHECK(layout >= 0, what << ": cannot read its layout" << hdf5_detail());
  if ((layout == H5D_CONTIGUOUS || layout == H5D_COMPACT) && n > 0) {
    const hsize_t stored = H5Dget_storage_size(ds.get());
    PF_CHECK(n <= std::numeric_limits<int64_t>::max() / static_cast<int64_t>(fsize) &&
                 stored == static_cast<hsize_t>(n) * fsize,
             what << ": shape " << h5_shape_str(shp) << " of " << type_name(ftype.get()) << " needs "
                  << static_cast<double>(n) * static_cast<double>(fsize) << " bytes, the file stores "
                  << stored << " (corrupt file, or a dataset that was never written)");
  }
  std::vector<T> out;
  try {
    out.resize(static_cast<size_t>(n));
  } catch (const std::exception&) {
    PF_FAIL(what << ": cannot allocate " << n << " elements for shape " << h5_shape_str(shp));
  }
  if (n > 0)
    PF_CHECK(H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) >= 0,
             what << ": read failed (truncated or corrupt file?)" << hdf5_detail());
  return out;
}

std::vector<float> H5Reader::read_float(const std::string& d) const { return read_as<float>(d, nullptr); }
std::vector<float> H5Reader::read_float(const std::string& d, const std::vector<int64_t>& s) const {
  return read_as<float>(d, &s);
}
std::vector<double> H5Reader::read_double(const std::string& d) const { return read_as<double>(d, nullptr); }
std::vector<double> H5Reader::read_double(const std::string& d, const std::vector<int64_t>& s) const {
  return read_as<double>(d, &s);
}
std::vector<int32_t> H5Reader::read_int32(const std::string& d) const { return read_as<int32_t>(d, nullptr); }
std::vector<int32_t> H5Reader::read_int32(const std::string& d, const std::vector<int64_t>& s) const {
  return read_as<int32_t>(d, &s);
}
std::vector<int64_t> H5Reader::read_int64(const std::string& d) const { return read_as<int64_t>(d, nullptr); }
std::vector<int64_t> H5Reader::read_int64(const std::string& d, const std::vector<int64_t>& s) const {
  return read_as<int64_t>(d, &s);
}

int64_t H5Reader::open_attr(const std::string& object, const std::string& name) const {
  quiet_hdf5();
  const std::string p = norm_path(object, path_);
  const std::string what = "attribute '" + name + "' of '" + p + "' in file " + path_;
  PF_CHECK(object_kind(file_, p) != H5I_BADID, what << ": object '" << p << "' not found");
  htri_t exists = H5Aexists_by_name(file_, p.c_str(), name.c_str(), H5P_DEFAULT);
  PF_CHECK(exists > 0, what << ": not found" << hdf5_detail());
  hid_t attr = H5Aopen_by_name(file_, p.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT);
  PF_CHECK(attr >= 0, what << ": cannot open" << hdf5_detail());
  Handle guard(attr, H5Aclose);
  Handle space(H5Aget_space(attr), H5Sclose);
  hssize_t npoints = space.ok() ? H5Sget_simple_extent_npoints(space.get()) : -1;
  PF_CHECK(npoints == 1, what << ": expected a single value, found " << npoints);
  H5Eclear2(H5E_DEFAULT);
  return guard.release();  // the caller owns it
}

namespace {
struct AttrRead {
  Handle attr, type;
  H5T_class_t cls;
  bool is_signed;
  size_t size;
};
AttrRead inspect_attr(hid_t attr, const std::string& what) {
  AttrRead r{Handle(attr, H5Aclose), Handle(H5Aget_type(attr), H5Tclose), H5T_NO_CLASS, true, 0};
  PF_CHECK(r.type.ok(), what << ": cannot read its type" << hdf5_detail());
  r.cls = H5Tget_class(r.type.get());
  r.size = H5Tget_size(r.type.get());
  r.is_signed = r.cls != H5T_INTEGER || H5Tget_sign(r.type.get()) != H5T_SGN_NONE;
  return r;
}
}  // namespace

int64_t H5Reader::attr_int(const std::string& object, const std::string& name) const {
  const std::string what = "attribute '" + name + "' of '" + object + "' in file " + path_;
  AttrRead a = inspect_attr(open_attr(object, name), what);
  PF_CHECK(a.cls == H5T_INTEGER, what << ": expected an integer, found " << type_name(a.type.get()));
  if (!a.is_signed && a.size >= 8) {
    uint64_t u = 0;
    PF_CHECK(H5Aread(a.attr.get(), H5T_NATIVE_UINT64, &u) >= 0, what << ": read failed" << hdf5_detail());
    PF_CHECK(u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
             what << ": value " << u << " does not fit in int64");
    return static_cast<int64_t>(u);
  }
  int64_t v = 0;
  PF_CHECK(H5Aread(a.attr.get(), H5T_NATIVE_INT64, &v) >= 0, what << ": read failed" << hdf5_detail());
  return v;
}

uint64_t H5Reader::attr_uint64(const std::string& object, const std::string& name) const {
  const std::string what = "attribute '" + name + "' of '" + object + "' in file " + path_;
  AttrRead a = inspect_attr(open_attr(object, name), what);
  PF_CHECK(a.cls == H5T_INTEGER, what << ": expected an integer, found " << type_name(a.type.get()));
  if (a.is_signed) {
    int64_t v = 0;
    PF_CHECK(H5Aread(a.attr.get(), H5T_NATIVE_INT64, &v) >= 0, what << ": read failed" << hdf5_detail());
    PF_CHECK(v >= 0, what << ": expected a non-negative integer, found " << v);
    return static_cast<uint64_t>(v);
  }
  uint64_t u = 0;
  PF_CHECK(H5Aread(a.attr.get(), H5T_NATIVE_UINT64, &u) >= 0, what << ": read failed" << hdf5_detail());
  return u;
}

double H5Reader::attr_double(const std::string& object, const std::string& name) const {
  const std::string what = "attribute '" + name + "' of '" + object + "' in file " + path_;
  AttrRead a = inspect_attr(open_attr(object, name), what);
  PF_CHECK(a.cls == H5T_FLOAT || a.cls == H5T_INTEGER,
           what << ": expected a number, found " << type_name(a.type.get()));
  double v = 0;
  PF_CHECK(H5Aread(a.attr.get(), H5T_NATIVE_DOUBLE, &v) >= 0, what << ": read failed" << hdf5_detail());
  return v;
}

std::string H5Reader::attr_string(const std::string& object, const std::string& name) const {
  const std::string what = "attribute '" + name + "' of '" + object + "' in file " + path_;
  AttrRead a = inspect_attr(open_attr(object, name), what);
  PF_CHECK(a.cls == H5T_STRING, what << ": expected a string, found " << type_name(a.type.get()));
  htri_t vlen = H5Tis_variable_str(a.type.get());
  PF_CHECK(vlen >= 0, what << ": cannot read its string type" << hdf5_detail());
  if (vlen > 0) {
    Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
    PF_CHECK(mem.ok() && H5Tset_size(mem.get(), H5T_VARIABLE) >= 0 &&
                 H5Tset_cset(mem.get(), H5Tget_cset(a.type.get())) >= 0,
             what << ": cannot make a string type" << hdf5_detail());
    char* s = nullptr;
    PF_CHECK(H5Aread(a.attr.get(), mem.get(), &s) >= 0, what << ": read failed" << hdf5_detail());
    std::string out = s ? s : "";
    if (s) H5free_memory(s);
    return out;
  }
  std::string buf(a.size, '\0');
  PF_CHECK(H5Aread(a.attr.get(), a.type.get(), buf.data()) >= 0, what << ": read failed" << hdf5_detail());
  size_t end = buf.find('\0');
  if (end != std::string::npos) buf.resize(end);
  while (!buf.empty() && buf.back() == ' ') buf.pop_back();  // space-padded strings
  return buf;
}

std::vector<std::string> H5Reader::list_datasets(const std::string& group) const {
  quiet_hdf5();
  const std::string p = norm_path(group, path_);
  PF_CHECK(object_kind(file_, p) == H5I_GROUP, "group '" << group << "' in file " << path_ << ": not found");
  Handle g(H5Gopen2(file_, p.c_str(), H5P_DEFAULT), H5Gclose);
  PF_CHECK(g.ok(), "group '" << group << "' in file " << path_ << ": cannot open" << hdf5_detail());
  std::vector<std::string> names;
  auto visit = [](hid_t gid, const char* name, const H5L_info_t* info, void* data) -> herr_t {
    if (info->type != H5L_TYPE_HARD) return 0;
    hid_t obj = H5Oopen(gid, name, H5P_DEFAULT);
    if (obj < 0) return -1;
    if (H5Iget_type(obj) == H5I_DATASET) static_cast<std::vector<std::string>*>(data)->push_back(name);
    H5Oclose(obj);
    return 0;
  };
  PF_CHECK(H5Lvisit(g.get(), H5_INDEX_NAME, H5_ITER_INC, visit, &names) >= 0,
           "group '" << group << "' in file " << path_ << ": cannot list" << hdf5_detail());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace pf
