// The integrity header of the HDF5 files pairflash writes (docs/DESIGN.md §5), used by
// framework/h5io.cpp: H5Writer::commit() fills it in, H5Reader checks it before HDF5 parses
// anything, so a truncated or corrupt file is one clear line, never a crash inside HDF5.
//
// bytes [0, 512): the HDF5 user block, which HDF5 and h5py skip. Ours holds three text lines
//   pairflash-h5 integrity v1
//   bytes <the whole file's length>
//   hash <pf64 of bytes [512, length), 16 hex digits>
// and NUL bytes up to 512. HDF5's superblock starts at 512. pf64 (h5_integrity.cpp) is a 64-bit
// hash that catches corruption; it is not cryptographic.
#pragma once
#include <cstddef>
#include <string>

namespace pf::h5_integrity {

constexpr size_t kUserBlock = 512;  // HDF5's smallest user block

// Whether the n bytes at p start with the HDF5 signature (an in-memory image without user block).
bool is_hdf5_image(const unsigned char* p, size_t n);

// Writes the header into the first kUserBlock bytes of `image`, a whole file of `length` bytes
// whose HDF5 image starts at kUserBlock.
void fill_header(unsigned char* image, size_t length);

// A file that starts with the magic line must be exactly as written: its length and hash are
// checked (a whole read of the file); a mismatch is a pf::Error "<path>: corrupt or truncated
// HDF5 file: expected N bytes with hash X, found M bytes / hash Y". A first line within fewer
// than half of its bytes of the magic is a damaged header of ours, a pf::Error too. Files
// without anything like the magic (h5py's, other tools') are left alone.
void check(const std::string& path);

}  // namespace pf::h5_integrity
