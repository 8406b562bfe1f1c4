// Poller: the wait of one poll loop over ZeroMQ sockets and plain file descriptors, in fewer
// system calls than zmq::poll.
//
// zmq::poll asks every socket for ZMQ_EVENTS before and after it sleeps, and in libzmq 4.3 each
// ask is a getpid() and a poll() of the socket's mailbox: 14 system calls for one wait over
// three sockets, about 1 µs each in the development VM. The Poller sleeps in one poll() on the
// sockets' ZMQ_FDs and asks ZMQ_EVENTS only of a socket whose fd may not tell the truth.
//
// The rule behind it: a socket's ZMQ_FD becomes readable when a command reaches its mailbox
// after the socket last found its mailbox empty. A recv that returns nothing (EAGAIN) leaves the
// mailbox empty, so from then on the fd signals the next message: the socket is *clean*. Any
// other use of the socket (a send, an option read) may process a command that announces a
// message without leaving the fd readable, so the socket is *dirty* until it is checked again.
//
// The caller's contract, per turn of its loop:
//   wait(timeout); for each ready(i): recv with dontwait until it returns nothing, then
//   drained(i) (if it stops early, with messages left, it does not call drained and the socket
//   stays ready); after sending on a watched socket: touched(socket).
// Breaking the contract costs latency, never a message: a socket left dirty is checked at the
// next wait, and one wrongly thought clean is read when its fd next fires or at the wait's
// timeout. Plain fds are level-triggered as with poll(2).
//
// Thread rule: a Poller belongs to the thread of its loop, like the sockets it watches. It keeps
// pointers to them: reset() before a watched socket is closed or moved.
#pragma once

#include <poll.h>

#include <cstddef>
#include <cstdint>
#include <vector>
#include <zmq.hpp>

namespace mesh::transport {

class Poller {
 public:
  // Watches a socket for messages; returns its index for ready() and drained(). A new entry is
  // dirty: the first wait asks it.
  std::size_t add(zmq::socket_t& socket);
  // Watches a plain file descriptor for POLLIN (a UDP socket, a pipe).
  std::size_t addFd(int fd);
  // Forgets every entry.
  void reset();
  std::size_t size() const { return entries_.size(); }

  // Returns when an entry may be read, or after timeoutMs (0: at once; negative: no limit).
  // Returns how many entries are ready. EINTR returns 0 with nothing ready.
  int wait(std::int64_t timeoutMs) { return waitUs(timeoutMs < 0 ? -1 : timeoutMs * 1000); }
  // The same with a timeout in microseconds, for waits shorter than a millisecond.
  int waitUs(std::int64_t timeoutUs);
  bool ready(std::size_t index) const { return index < entries_.size() && entries_[index].ready; }

  // The caller's dontwait recv on entry `index` returned nothing: the entry is clean.
  void drained(std::size_t index);
  // The caller used a watched socket other than by recv (a send): dirty until the next wait asks
  // it. A socket the Poller does not watch is ignored.
  void touched(const zmq::socket_t& socket);
  // The same by index, for a loop over many sockets (touched(socket) looks the socket up).
  void touched(std::size_t index);
  // A paused entry is left out of waits (never ready) until resumed; what arrives meanwhile
  // waits in its socket. Resuming a socket makes it dirty, so the next wait asks it.
  void pause(std::size_t index, bool paused);
  bool paused(std::size_t index) const { return index < entries_.size() && entries_[index].paused; }

  // How many times waits have asked a socket for ZMQ_EVENTS, and called poll(2), so far.
  std::uint64_t asks() const { return asks_; }
  std::uint64_t polls() const { return polls_; }

 private:
  struct Entry {
    zmq::socket_t* socket = nullptr;  // null for a plain fd
    bool clean = false;
    bool ready = false;
    bool paused = false;
    int fd = -1;  // its fd while paused (fds_ then holds -1, which poll(2) skips)
  };
  bool askEvents(Entry& e);

  std::vector<Entry> entries_;
  std::vector<pollfd> fds_;
  std::uint64_t asks_ = 0;
  std::uint64_t polls_ = 0;
};

}  // namespace mesh::transport
