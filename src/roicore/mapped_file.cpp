#include "roicore/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "roicore/common.h"

namespace roicore {

namespace {
const unsigned char kEmpty[1] = {0};  // what data() points to for an empty file

IoError io_error(int err, const std::string& path, const char* what) {
  return IoError(err, path, std::string("cannot ") + what + " '" + path + "': " + std::strerror(err));
}
}  // namespace

MappedFile::MappedFile(const std::string& path) : data_(kEmpty), path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) throw io_error(errno, path, "open");
  try {
    map(fd);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);  // the mapping needs no descriptor
}

MappedFile::MappedFile(int fd, const std::string& path) : data_(kEmpty), path_(path) { map(fd); }

void MappedFile::map(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) throw io_error(errno, path_, "stat");
  if (!S_ISREG(st.st_mode)) throw FormatError("'" + path_ + "' is not a regular file");
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size == 0) return;
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) throw io_error(errno, path_, "map");
  data_ = static_cast<const unsigned char*>(p);
  size_ = size;
}

MappedFile::~MappedFile() {
  if (size_ > 0) ::munmap(const_cast<unsigned char*>(data_), size_);
}

}  // namespace roicore
