// Handing a heap object to another thread over an inproc socket: the message carries the
// pointer, and ownership moves with it (the sender releases, the receiver adopts). Used between
// an actor and its worker threads (the nexus and its store writer, the spore and its workers).
// Thread rule: only over inproc sockets, within one process.
#pragma once

#include <cstring>
#include <memory>
#include <zmq.hpp>

#include "mesh/util/result.h"

namespace mesh::transport {

template <typename T>
zmq::message_t pointerMessage(std::unique_ptr<T> p) {
  T* raw = p.release();
  return zmq::message_t(&raw, sizeof raw);
}

template <typename T>
std::unique_ptr<T> takePointer(const zmq::message_t& m) {
  MESH_ASSERT(m.size() == sizeof(T*), "inproc pointer message of the wrong size");
  T* raw;
  std::memcpy(&raw, m.data(), sizeof raw);
  return std::unique_ptr<T>(raw);
}

}  // namespace mesh::transport
