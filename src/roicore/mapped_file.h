// roicore — a read-only memory map of a whole file that holds no file descriptor.
#pragma once

#include <cstddef>
#include <string>

namespace roicore {

// Maps the file at `path` read-only (PROT_READ, MAP_SHARED) and closes its descriptor at
// once: the mapping keeps the pages reachable until the object is destroyed, even if the
// file is renamed or removed meanwhile, and takes no entry of the process's descriptor
// table (RLIMIT_NOFILE) — a process can hold thousands of mapped index files. A symbolic
// link as the last path component is refused (IoError, ELOOP), and so is anything but a
// regular file (FormatError). An empty file maps to size() == 0 (data() is then a valid,
// unreadable pointer). Throws IoError (errno, path) when the file cannot be opened,
// examined or mapped (ENOMEM past the kernel's limit on mappings, vm.max_map_count).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  // Maps the regular file open as `fd` (still the caller's to close; the mapping does not
  // need it); `path` names it in messages. What a reader that has already opened and checked
  // a file uses, so that the mapping is of that very file, not of whatever the path names now.
  MappedFile(int fd, const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // The file's bytes: size() of them from data(), read-only.
  const unsigned char* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  const std::string& path() const noexcept { return path_; }

 private:
  void map(int fd);  // fstat, refuse a non-regular file, mmap; leaves fd open
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
  std::string path_;
};

}  // namespace roicore
