#include "checkpoint/checkpoint_files.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"

namespace scalemoe::checkpoint {
namespace {

std::string ErrnoText() { return std::strerror(errno); }

// Hashing in chunks while reading keeps each chunk cache-hot for the hash.
constexpr size_t kIoChunk = size_t{8} << 20;

}  // namespace

std::string RankFileName(int rank) { return absl::StrFormat("rank_%05d.safetensors", rank); }

StatusOr<FileWriter> FileWriter::Create(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        "cannot create ", path, ": ", ErrnoText(), "; check the directory exists and is writable"));
  }
  return FileWriter(path, fd);
}

FileWriter::FileWriter(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}

FileWriter::FileWriter(FileWriter&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_), digest_(other.digest_),
      hasher_(other.hasher_) {
  other.fd_ = -1;
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

Status FileWriter::Write(const void* data, size_t size) {
  SM_CHECK_MSG(fd_ >= 0, "Write after Finish on ", path_);
  const auto* p = static_cast<const unsigned char*>(data);
  while (size > 0) {
    size_t n = std::min(size, kIoChunk);
    hasher_.Update(p, n);
    size_t done = 0;
    while (done < n) {
      ssize_t w = ::write(fd_, p + done, n - done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "write to ", path_, " failed: ", ErrnoText(), "; check free disk space"));
      }
      done += static_cast<size_t>(w);
    }
    digest_.bytes += static_cast<int64_t>(n);
    p += n;
    size -= n;
  }
  return absl::OkStatus();
}

StatusOr<FileDigest> FileWriter::Finish() {
  SM_CHECK_MSG(fd_ >= 0, "Finish twice on ", path_);
  int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0) {
    std::string err = ErrnoText();
    ::close(fd);
    return absl::DataLossError(absl::StrCat("fsync of ", path_, " failed: ", err));
  }
  if (::close(fd) != 0) {
    return absl::DataLossError(absl::StrCat("close of ", path_, " failed: ", ErrnoText()));
  }
  digest_.xxh64 = hasher_.Digest();
  return digest_;
}

StatusOr<FileDigest> WriteWholeFile(const std::string& path, const std::string& content) {
  SM_ASSIGN_OR_RETURN(FileWriter writer, FileWriter::Create(path));
  SM_RETURN_IF_ERROR(writer.Write(content.data(), content.size()));
  return writer.Finish();
}

StatusOr<FileBytes> ReadWholeFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", ErrnoText()));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    std::string err = ErrnoText();
    ::close(fd);
    return absl::DataLossError(absl::StrCat("cannot stat ", path, ": ", err));
  }
  FileBytes out;
  out.size = static_cast<size_t>(st.st_size);
  // Anonymous pages populated in one call: faulting a fresh 512 MB heap
  // buffer page by page cost more than the read itself (0.5 vs 3 GB/s).
  const size_t mapped = std::max<size_t>(out.size, 1);
  void* map = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (map == MAP_FAILED) {
    ::close(fd);
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", out.size, " bytes to read ", path, ": ", ErrnoText()));
  }
  auto* buffer = static_cast<unsigned char*>(map);
  out.data = std::shared_ptr<const unsigned char>(
      buffer, [mapped](const unsigned char* p) { ::munmap(const_cast<unsigned char*>(p), mapped); });
  XxHash64 hasher;
  size_t done = 0;
  while (done < out.size) {
    size_t want = std::min(out.size - done, kIoChunk);
    ssize_t r = ::read(fd, buffer + done, want);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      std::string err = r < 0 ? ErrnoText() : "file shrank while reading";
      ::close(fd);
      return absl::DataLossError(absl::StrCat("read of ", path, " failed at byte ", done,
                                              " of ", out.size, ": ", err));
    }
    hasher.Update(buffer + done, static_cast<size_t>(r));
    done += static_cast<size_t>(r);
  }
  ::close(fd);
  out.xxh64 = hasher.Digest();
  return out;
}

Status FsyncDirectory(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open directory ", path, ": ", ErrnoText()));
  }
  int rc = ::fsync(fd);
  std::string err = rc != 0 ? ErrnoText() : "";
  ::close(fd);
  if (rc != 0) return absl::DataLossError(absl::StrCat("fsync of directory ", path, " failed: ", err));
  return absl::OkStatus();
}

}  // namespace scalemoe::checkpoint
