#include "mesh/transport/poller.h"

#include <cerrno>
#include <ctime>
#include <system_error>

namespace mesh::transport {

std::size_t Poller::add(zmq::socket_t& socket) {
  entries_.push_back(Entry{&socket, false, false, false, -1});
  pollfd p{};
  p.fd = socket.get(zmq::sockopt::fd);
  p.events = POLLIN;
  fds_.push_back(p);
  return entries_.size() - 1;
}

std::size_t Poller::addFd(int fd) {
  entries_.push_back(Entry{nullptr, false, false, false, -1});
  pollfd p{};
  p.fd = fd;
  p.events = POLLIN;
  fds_.push_back(p);
  return entries_.size() - 1;
}

void Poller::reset() {
  entries_.clear();
  fds_.clear();
}

bool Poller::askEvents(Entry& e) {
  ++asks_;
  // Asking processes every command waiting in the socket's mailbox and leaves it empty: when
  // the answer is "nothing to read", the fd signals the next message.
  if (e.socket->get(zmq::sockopt::events) & ZMQ_POLLIN) return true;
  e.clean = true;
  return false;
}

int Poller::waitUs(std::int64_t timeoutUs) {
  int ready = 0;
  for (auto& e : entries_) {
    e.ready = e.socket && !e.paused && !e.clean && askEvents(e);
    if (e.ready) ++ready;
  }
  timespec timeout{};  // zero: at once
  if (ready == 0 && timeoutUs > 0) {
    timeout.tv_sec = static_cast<time_t>(timeoutUs / 1'000'000);
    timeout.tv_nsec = static_cast<long>(timeoutUs % 1'000'000) * 1000;
  }
  ++polls_;
  int rc = ::ppoll(fds_.data(), static_cast<nfds_t>(fds_.size()), ready == 0 && timeoutUs < 0 ? nullptr : &timeout,
                   nullptr);
  if (rc < 0) {
    if (errno == EINTR) return ready;
    throw std::system_error(errno, std::generic_category(), "poll");
  }
  for (std::size_t i = 0; rc > 0 && i < fds_.size(); ++i) {
    if (!(fds_[i].revents & (POLLIN | POLLERR | POLLHUP)) || entries_[i].ready) continue;
    entries_[i].ready = true;
    entries_[i].clean = false;  // until the caller has read it empty
    ++ready;
  }
  return ready;
}

void Poller::drained(std::size_t index) {
  if (index < entries_.size() && entries_[index].socket) entries_[index].clean = true;
}

void Poller::touched(std::size_t index) {
  if (index < entries_.size() && entries_[index].socket) entries_[index].clean = false;
}

void Poller::pause(std::size_t index, bool paused) {
  if (index >= entries_.size() || entries_[index].paused == paused) return;
  Entry& e = entries_[index];
  e.paused = paused;
  e.ready = false;
  if (paused) {
    e.fd = fds_[index].fd;
    fds_[index].fd = -1;
  } else {
    fds_[index].fd = e.fd;
    fds_[index].revents = 0;
    if (e.socket) e.clean = false;
  }
}

void Poller::touched(const zmq::socket_t& socket) {
  for (auto& e : entries_) {
    if (e.socket == &socket) e.clean = false;
  }
}

}  // namespace mesh::transport
