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
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw io_error(err, path, "stat");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw FormatError("'" + path + "' is not a regular file");
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);  // the mapping needs no descriptor
    if (p == MAP_FAILED) throw io_error(err, path, "map");
    data_ = static_cast<const unsigned char*>(p);
  } else {
    ::close(fd);
  }
}

MappedFile::~MappedFile() {
  if (size_ > 0) ::munmap(const_cast<unsigned char*>(data_), size_);
}

}  // namespace roicore
