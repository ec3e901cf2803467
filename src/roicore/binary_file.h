// roicore — internal: what every versioned binary index file of roicore shares (the
// inverted file, the Hamming-embedded inverted file): an atomic, checksummed writer and a
// validating reader.
//
// Common header layout (little-endian): magic (8 bytes) at 0, u32 format version at 8, u32
// header size at 12, u32 flags (0) at 40, and the CRC-32 of the header's other bytes in its
// last 4 bytes; the rest is the format's own (sizes, one CRC-32 per section). Sections
// follow the header back to back, each checked against its CRC-32 as it is read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace roicore {
namespace detail {

// What tells one file kind from another.
struct FileFormat {
  char magic[8];
  const char* kind;           // "inverted file": "not a roiret inverted file (magic ...)"
  std::uint32_t version;      // the newest version this build reads (and the one it writes)
  std::size_t header_size;    // bytes, the header's CRC-32 in the last 4
};

// roiret files are little-endian; a big-endian host is refused (InvalidArgument).
void require_little_endian();

template <class T>
T get(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <class T>
void put(unsigned char* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

// Buffered writer that tracks a CRC-32 per section.
class FileWriter {
 public:
  FileWriter(int fd, std::string path);
  // Appends len bytes; crc (when not null) continues the section's CRC-32 over them.
  void write(const void* data, std::size_t len, std::uint32_t* crc);
  void flush();

 private:
  int fd_;
  std::string path_;
  std::vector<char> buf_;
};

// Writes `path` atomically: a temporary file in the same directory receives a header
// placeholder and then whatever `body` writes; body fills the format's own header fields
// (magic, version, header size and the header CRC are written here). The header goes in
// last, then fsync, close, rename over `path` and fsync of the directory: a crash leaves
// either the old or the new file. Throws IoError; the temporary file never stays behind.
void write_file_atomically(const std::string& path, const FileFormat& format,
                           const std::function<void(FileWriter& out, unsigned char* header)>& body);

// Reads a file written by write_file_atomically, section by section. Every error names
// the file (FormatError for a file that is not a valid one of `format`, IoError).
class FileReader {
 public:
  FileReader(const std::string& path, const FileFormat& format);  // opens; a directory is refused
  ~FileReader();
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

  // "'path': ", the prefix of every message about this file.
  const std::string& where() const { return where_; }
  // Reads the header into h (format.header_size bytes) and checks magic, header checksum,
  // version, header size and flags. A newer version is reported as such even when the
  // checksum fails (a newer writer may lay the header out differently).
  void read_header(unsigned char* h);
  // The file holds exactly `expected` bytes (FormatError: truncated / unexpected bytes).
  void expect_size(std::uint64_t expected) const;
  // Reads the next `len` bytes (the `section` section) and compares their CRC-32 with crc;
  // `name` names the section in the mismatch message.
  void read_section(void* data, std::size_t len, std::uint32_t crc, const char* section, const char* name);
  // Compares the CRC-32 of len bytes at data, the `name` section (read through a mapping),
  // with crc: FormatError "checksum mismatch in the <name> section (file corrupt)".
  void check_section(const void* data, std::size_t len, std::uint32_t crc, const char* name) const;
  // Reads the next `len` bytes, which must all be zero (FormatError naming `section`).
  void read_padding(std::size_t len, const char* section);
  // Skips the next `len` bytes (a section the caller checks through a mapping of fd()).
  void skip(std::size_t len) { pos_ += len; }
  // Bytes of the file read (or skipped) so far: where the next section starts.
  std::uint64_t position() const { return pos_; }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

 private:
  void read_exact(void* data, std::size_t len, const char* section);
  int fd_;
  std::string path_, where_;
  std::uint64_t size_, pos_ = 0;
  const FileFormat& format_;
};

// Word offsets (lens.size() + 1 values) from per-word posting counts, which must each be
// at most n_docs and add up to n_postings (FormatError otherwise).
void offsets_from_lengths(const std::vector<std::uint32_t>& lens, std::uint64_t n_docs, std::uint64_t n_postings,
                          std::vector<std::uint64_t>& offsets, const std::string& where);

// Per-word posting counts (offsets.size() - 1 values, u32) written as one section.
void write_lengths(FileWriter& out, const std::vector<std::uint64_t>& offsets, std::uint32_t* crc);

}  // namespace detail
}  // namespace roicore
