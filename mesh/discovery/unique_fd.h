// UniqueFd: owns one POSIX file descriptor and closes it exactly once. The discovery module's
// UDP sockets are plain fds (a spore polls them next to its ZeroMQ sockets), so they get the
// same RAII treatment as every other C handle. (A candidate for mesh/util if another module
// needs it.)
// Thread rule: a value type; one owner at a time, like unique_ptr.
#pragma once

#include <unistd.h>

#include <utility>

namespace mesh::discovery {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace mesh::discovery
