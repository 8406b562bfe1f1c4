#include "mesh/store/payload_log.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>

namespace mesh::store {
namespace {

std::string sysError(const std::string& what) { return what + ": " + std::strerror(errno); }

// "00000042.seg" -> 42; 0 for anything else.
std::uint64_t segmentNumber(const char* name) {
  std::uint64_t n = 0;
  std::size_t digits = 0;
  for (; name[digits] >= '0' && name[digits] <= '9'; ++digits) {
    if (n > (UINT64_MAX - 9) / 10) return 0;
    n = n * 10 + static_cast<std::uint64_t>(name[digits] - '0');
  }
  if (digits == 0 || std::strcmp(name + digits, ".seg") != 0) return 0;
  return n;
}

util::Status syncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return util::err(sysError("payload log: cannot open " + dir));
  int rc = ::fsync(fd);
  int saved = errno;
  ::close(fd);
  errno = saved;
  if (rc != 0) return util::err(sysError("payload log: cannot sync " + dir));
  return {};
}

}  // namespace

std::string segmentPath(const std::string& dir, std::uint64_t segment) {
  char name[32];
  std::snprintf(name, sizeof name, "%08llu.seg", static_cast<unsigned long long>(segment));
  return dir + "/" + name;
}

util::Result<std::vector<std::uint64_t>> listSegments(const std::string& dir) {
  std::vector<std::uint64_t> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) {
    if (errno == ENOENT) return out;
    return util::err(sysError("payload log: cannot read " + dir));
  }
  while (dirent* e = ::readdir(d)) {
    if (std::uint64_t n = segmentNumber(e->d_name)) out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string PayloadLog::dirFor(const std::string& dbPath) {
  auto slash = dbPath.rfind('/');
  return (slash == std::string::npos ? std::string(".") : dbPath.substr(0, slash)) + "/payloads";
}

util::Result<std::unique_ptr<PayloadLog>> PayloadLog::open(const std::string& dir, std::uint64_t segmentBytes) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return util::err(sysError("payload log: cannot create " + dir));
  }
  auto segments = listSegments(dir);
  if (!segments) return segments.error();
  std::uint64_t highest = segments->empty() ? 0 : segments->back();
  std::unique_ptr<PayloadLog> log(new PayloadLog(dir, std::max<std::uint64_t>(segmentBytes, 1)));
  log->nextSegment_ = highest + 1;
  return log;
}

PayloadLog::~PayloadLog() {
  if (fd_ >= 0) ::close(fd_);
  for (int fd : toSync_) ::close(fd);
}

util::Status PayloadLog::startSegment() {
  const std::uint64_t number = nextSegment_++;
  const std::string path = segmentPath(dir_, number);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return util::err(sysError("payload log: cannot create " + path));
  // The new name must be durable before any committed row refers to the file.
  if (auto s = syncDirectory(dir_); !s) {
    ::close(fd);
    return s;
  }
  fd_ = fd;
  segment_ = number;
  size_ = written_ = 0;
  return {};
}

void PayloadLog::abandonSegment() {
  if (fd_ >= 0) ::close(fd_);
  for (int fd : toSync_) ::close(fd);
  toSync_.clear();
  fd_ = -1;
  segment_ = 0;
  size_ = written_ = 0;
  queued_.clear();
}

util::Status PayloadLog::writeQueued() {
  std::size_t i = 0;
  while (i < queued_.size()) {
    int count = static_cast<int>(std::min<std::size_t>(queued_.size() - i, IOV_MAX));
    ssize_t n = ::pwritev(fd_, &queued_[i], count, static_cast<off_t>(written_));
    if (n < 0) {
      if (errno == EINTR) continue;
      return util::err(sysError("payload log: cannot write " + segmentPath(dir_, segment_)));
    }
    if (n == 0) return util::err("payload log: cannot write " + segmentPath(dir_, segment_) + ": no progress");
    written_ += static_cast<std::uint64_t>(n);
    // Skip what was written; trim a partly written iovec.
    auto left = static_cast<std::size_t>(n);
    while (i < queued_.size() && left >= queued_[i].iov_len) left -= queued_[i++].iov_len;
    if (left > 0) {
      queued_[i].iov_base = static_cast<char*>(queued_[i].iov_base) + left;
      queued_[i].iov_len -= left;
    }
  }
  queued_.clear();
  return {};
}

util::Result<PayloadRef> PayloadLog::add(std::string_view bytes) {
  if (segment_ != 0 && size_ > 0 && size_ + bytes.size() > segmentBytes_) {
    // This segment is full: write its queue now, sync it with the next sync().
    if (auto s = writeQueued(); !s) {
      abandonSegment();
      return s.error();
    }
    toSync_.push_back(fd_);
    fd_ = -1;
    segment_ = 0;
  }
  if (segment_ == 0) {
    if (auto s = startSegment(); !s) {
      abandonSegment();
      return s.error();
    }
  }
  PayloadRef ref{segment_, size_, bytes.size()};
  if (!bytes.empty()) queued_.push_back(iovec{const_cast<char*>(bytes.data()), bytes.size()});
  size_ += bytes.size();
  return ref;
}

util::Status PayloadLog::sync() {
  if (fd_ >= 0 && !queued_.empty()) {
    if (auto s = writeQueued(); !s) {
      abandonSegment();
      return s;
    }
  }
  for (int fd : toSync_) {
    if (::fdatasync(fd) != 0) {
      auto e = util::err(sysError("payload log: cannot sync a segment of " + dir_));
      abandonSegment();
      return e;
    }
  }
  for (int fd : toSync_) ::close(fd);
  toSync_.clear();
  if (fd_ >= 0 && ::fdatasync(fd_) != 0) {
    auto e = util::err(sysError("payload log: cannot sync " + segmentPath(dir_, segment_)));
    abandonSegment();
    return e;
  }
  return {};
}

PayloadReader::~PayloadReader() { closeAll(); }

void PayloadReader::closeAll() {
  for (auto& [segment, fd] : fds_) ::close(fd);
  fds_.clear();
}

util::Result<std::string> PayloadReader::read(const PayloadRef& ref) {
  int fd;
  auto it = fds_.find(ref.segment);
  if (it != fds_.end()) {
    fd = it->second;
  } else {
    const std::string path = segmentPath(dir_, ref.segment);
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return util::err(sysError("payload segment " + path));
    fds_[ref.segment] = fd;
  }
  std::string out(ref.length, '\0');
  std::uint64_t done = 0;
  while (done < ref.length) {
    ssize_t n = ::pread(fd, out.data() + done, ref.length - done, static_cast<off_t>(ref.offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return util::err(sysError("payload segment " + segmentPath(dir_, ref.segment)));
    if (n == 0) {
      return util::err("payload segment " + segmentPath(dir_, ref.segment) + " ends before byte " +
                       std::to_string(ref.offset + ref.length) + " (it was cut short)");
    }
    done += static_cast<std::uint64_t>(n);
  }
  return out;
}

}  // namespace mesh::store
