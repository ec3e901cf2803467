#include "roicore/binary_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "roicore/checksum.h"
#include "roicore/common.h"

namespace roicore {
namespace detail {

namespace {

std::string str(std::uint64_t v) { return std::to_string(v); }

std::string printable_magic(const unsigned char* m) {
  std::string s;
  for (int i = 0; i < 8; ++i) {
    const unsigned char c = m[i];
    if (c >= 32 && c < 127) {
      s += static_cast<char>(c);
    } else {
      static const char* hex = "0123456789abcdef";
      s += "\\x";
      s += hex[c >> 4];
      s += hex[c & 15];
    }
  }
  return s;
}

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

void require_little_endian() {
  const std::uint16_t x = 1;
  unsigned char c;
  std::memcpy(&c, &x, 1);
  if (c != 1) throw InvalidArgument("roiret index files are little-endian; this host is big-endian");
}

// ------------------------------------------------------------------------------------
// writing
// ------------------------------------------------------------------------------------
FileWriter::FileWriter(int fd, std::string path) : fd_(fd), path_(std::move(path)) { buf_.reserve(1 << 20); }

void FileWriter::write(const void* data, std::size_t len, std::uint32_t* crc) {
  if (crc) *crc = crc32_update(*crc, data, len);
  const auto* p = static_cast<const char*>(data);
  while (len > 0) {
    const std::size_t room = buf_.capacity() - buf_.size();
    const std::size_t take = std::min(room, len);
    buf_.insert(buf_.end(), p, p + take);
    p += take;
    len -= take;
    if (buf_.size() == buf_.capacity()) flush();
  }
}

void FileWriter::flush() {
  std::size_t off = 0;
  while (off < buf_.size()) {
    const ssize_t w = ::write(fd_, buf_.data() + off, buf_.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IoError(errno, path_, "cannot write '" + path_ + "': " + std::strerror(errno));
    }
    off += static_cast<std::size_t>(w);
  }
  buf_.clear();
}

void write_file_atomically(const std::string& path, const FileFormat& format,
                           const std::function<void(FileWriter& out, unsigned char* header)>& body) {
  static std::atomic<unsigned> counter{0};
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  // 0666 less the umask: the mode open() gives a new file (as every file of an index folder)
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) throw IoError(errno, path, "cannot create '" + tmp + "': " + std::strerror(errno));
  bool done = false;
  try {
    FdCloser closer{fd};
    const std::size_t hs = format.header_size;
    std::vector<unsigned char> header(hs, 0);
    FileWriter out(fd, tmp);
    out.write(header.data(), hs, nullptr);  // placeholder, rewritten below
    body(out, header.data());
    out.flush();
    std::memcpy(header.data(), format.magic, 8);
    put<std::uint32_t>(header.data() + 8, format.version);
    put<std::uint32_t>(header.data() + 12, static_cast<std::uint32_t>(hs));
    put<std::uint32_t>(header.data() + 40, 0);
    put<std::uint32_t>(header.data() + hs - 4, crc32_update(0, header.data(), hs - 4));
    if (::pwrite(fd, header.data(), hs, 0) != static_cast<ssize_t>(hs))
      throw IoError(errno, path, "cannot write '" + tmp + "': " + std::strerror(errno));
    if (::fsync(fd) != 0) throw IoError(errno, path, "cannot flush '" + tmp + "': " + std::strerror(errno));
    closer.fd = -1;
    if (::close(fd) != 0) throw IoError(errno, path, "cannot close '" + tmp + "': " + std::strerror(errno));
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      throw IoError(errno, path, "cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(errno));
    done = true;
    // Make the rename itself durable.
    const std::size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  } catch (...) {
    if (!done) ::unlink(tmp.c_str());
    throw;
  }
}

void write_lengths(FileWriter& out, const std::vector<std::uint64_t>& offsets, std::uint32_t* crc) {
  const std::size_t V = offsets.size() - 1;
  std::vector<std::uint32_t> lens(std::min<std::size_t>(V, 1 << 16));
  for (std::size_t w0 = 0; w0 < V; w0 += lens.size()) {
    const std::size_t m = std::min(lens.size(), V - w0);
    for (std::size_t t = 0; t < m; ++t) lens[t] = static_cast<std::uint32_t>(offsets[w0 + t + 1] - offsets[w0 + t]);
    out.write(lens.data(), m * sizeof(std::uint32_t), crc);
  }
}

// ------------------------------------------------------------------------------------
// reading
// ------------------------------------------------------------------------------------
FileReader::FileReader(const std::string& path, const FileFormat& format)
    : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)), path_(path), where_("'" + path + "': "), format_(format) {
  if (fd_ < 0) throw IoError(errno, path, "cannot open '" + path + "': " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    ::close(fd_);
    throw IoError(err, path, "cannot stat '" + path + "': " + std::strerror(err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd_);
    throw IoError(EISDIR, path, "'" + path + "' is a directory");
  }
  size_ = static_cast<std::uint64_t>(st.st_size);
}

FileReader::~FileReader() { ::close(fd_); }

void FileReader::read_exact(void* data, std::size_t len, const char* section) {
  auto* p = static_cast<char*>(data);
  while (len > 0) {
    const std::size_t chunk = std::min<std::size_t>(len, std::size_t{1} << 30);
    const ssize_t r = ::pread(fd_, p, chunk, static_cast<off_t>(pos_));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw IoError(errno, path_, "cannot read '" + path_ + "': " + std::strerror(errno));
    }
    if (r == 0) throw FormatError("'" + path_ + "' is truncated inside the " + section + " section");
    pos_ += static_cast<std::uint64_t>(r);
    p += r;
    len -= static_cast<std::size_t>(r);
  }
}

void FileReader::read_header(unsigned char* h) {
  const std::size_t hs = format_.header_size;
  const auto* magic = reinterpret_cast<const unsigned char*>(format_.magic);
  const std::string not_ours = where_ + "not a roiret " + format_.kind + " (magic '";
  if (size_ < hs) {
    // not an index at all when its first 8 bytes are another magic, else a truncated one
    if (size_ >= 8) {
      read_exact(h, 8, "header");
      if (std::memcmp(h, magic, 8) != 0) throw FormatError(not_ours + printable_magic(h) + "')");
    }
    throw FormatError(where_ + "truncated: " + str(size_) + " bytes, shorter than the " + str(hs) + "-byte header");
  }
  read_exact(h, hs, "header");
  if (std::memcmp(h, magic, 8) != 0)
    throw FormatError(not_ours + printable_magic(h) + "', expected '" + printable_magic(magic) + "')");
  const auto version = get<std::uint32_t>(h + 8);
  const std::uint32_t newest = format_.version;
  if (crc32_update(0, h, hs - 4) != get<std::uint32_t>(h + hs - 4)) {
    if (version > newest)
      throw FormatError(where_ + "written in format version " + std::to_string(version) +
                        " by a newer roiret; this version reads up to " + std::to_string(newest));
    throw FormatError(where_ + "header checksum mismatch (file corrupt)");
  }
  if (version == 0 || version > newest)
    throw FormatError(where_ + "written in format version " + std::to_string(version) +
                      (version > newest ? " by a newer roiret" : "") + "; this version reads up to " +
                      std::to_string(newest));
  if (get<std::uint32_t>(h + 12) != hs || get<std::uint32_t>(h + 40) != 0)
    throw FormatError(where_ + "unsupported header layout or flags");
}

void FileReader::expect_size(std::uint64_t expected) const {
  if (size_ < expected)
    throw FormatError(where_ + "truncated: " + str(size_) + " bytes, the header announces " + str(expected));
  if (size_ > expected)
    throw FormatError(where_ + str(size_ - expected) + " unexpected bytes after the end of the index");
}

void FileReader::read_section(void* data, std::size_t len, std::uint32_t crc, const char* section, const char* name) {
  read_exact(data, len, section);
  check_section(data, len, crc, name);
}

void FileReader::check_section(const void* data, std::size_t len, std::uint32_t crc, const char* name) const {
  if (crc32_update(0, data, len) != crc)
    throw FormatError(where_ + "checksum mismatch in the " + name + " section (file corrupt)");
}

void FileReader::read_padding(std::size_t len, const char* section) {
  unsigned char pad[64];
  while (len > 0) {
    const std::size_t n = std::min(len, sizeof pad);
    read_exact(pad, n, section);
    for (std::size_t i = 0; i < n; ++i)
      if (pad[i] != 0) throw FormatError(where_ + "non-zero bytes in the " + section + " (file corrupt)");
    len -= n;
  }
}

void offsets_from_lengths(const std::vector<std::uint32_t>& lens, std::uint64_t n_docs, std::uint64_t n_postings,
                          std::vector<std::uint64_t>& offsets, const std::string& where) {
  std::uint64_t total = 0;
  offsets.resize(lens.size() + 1);
  for (std::size_t w = 0; w < lens.size(); ++w) {
    if (lens[w] > n_docs) throw FormatError(where + "word " + str(w) + " has more postings than there are images");
    offsets[w] = total;
    total += lens[w];
  }
  offsets[lens.size()] = total;
  if (total != n_postings) throw FormatError(where + "posting lengths do not add up to the posting count");
}

}  // namespace detail
}  // namespace roicore
