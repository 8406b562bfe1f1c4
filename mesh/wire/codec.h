// Cap'n Proto <-> ZeroMQ frames. One frame carries one Envelope (schemas/mesh.capnp).
//
// decode() is total: whatever bytes arrive, it returns a Decoded or an Error and never throws.
// It enforces a frame size cap, Cap'n Proto traversal and nesting limits far below the library
// defaults, checks the protocol version, and walks the whole message once so that later reads
// of a Decoded cannot hit a bad pointer. It copies the frame only when it is not 8-byte aligned
// (Cap'n Proto 0.9.2 requires aligned input).
//
// Thread rule: a Decoded is a value owned by one thread at a time.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdint>
#include <memory>
#include <string_view>
#include <zmq.hpp>

#include "mesh/util/result.h"
#include "schemas/mesh.capnp.h"

namespace mesh::wire {

struct Limits {
  std::uint64_t maxFrameBytes = 64u << 20;  // larger frames are refused before parsing
  int nestingLimit = 16;                    // our schema nests at most 5 deep
  // The traversal budget is this many times the frame's size in words: enough to validate the
  // message once and read it fully twice, never enough for a pointer-amplification bomb.
  std::uint64_t traversalFactor = 4;
};

// A decoded Envelope and the bytes it points into. Move-only.
class Decoded {
 public:
  Decoded(Decoded&&) noexcept;
  Decoded& operator=(Decoded&&) noexcept;
  ~Decoded();

  proto::Envelope::Reader envelope() const { return root_; }
  proto::Envelope::Body::Which which() const { return root_.getBody().which(); }
  std::size_t frameBytes() const { return frameBytes_; }

 private:
  friend util::Result<Decoded> decode(zmq::message_t&& frame, const Limits& limits);
  Decoded() = default;
  zmq::message_t frame_;                  // owns the bytes when they were aligned
  kj::Array<capnp::word> copy_;           // owns them when they were copied
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
  proto::Envelope::Reader root_;
  std::size_t frameBytes_ = 0;
};

// Takes the frame (by move: on success the Decoded owns its bytes).
util::Result<Decoded> decode(zmq::message_t&& frame, const Limits& limits);

// Builds Envelopes. Usage: Encoder e(requestId); e.body().initHello()...; socket.send(e.finish()).
class Encoder {
 public:
  explicit Encoder(std::uint64_t requestId = 0, unsigned firstSegmentWords = 1024);
  proto::Envelope::Body::Builder body() { return root_.getBody(); }
  proto::Envelope::Builder envelope() { return root_; }
  // Serializes the message into one ZeroMQ frame. Call once.
  zmq::message_t finish();

 private:
  capnp::MallocMessageBuilder builder_;
  proto::Envelope::Builder root_;
};

// Convenience: an Envelope whose body is an Error.
zmq::message_t encodeError(std::uint64_t requestId, proto::Error::Code code, std::string_view message);

// Helpers for Cap'n Proto Text/Data <-> std types.
inline std::string_view view(capnp::Text::Reader t) { return {t.cStr(), t.size()}; }
inline std::string_view view(capnp::Data::Reader d) {
  return {reinterpret_cast<const char*>(d.begin()), d.size()};
}
inline capnp::Data::Reader asData(std::string_view s) {
  return {reinterpret_cast<const kj::byte*>(s.data()), s.size()};
}
inline capnp::Text::Reader asText(std::string_view s) { return {s.data(), s.size()}; }

}  // namespace mesh::wire
