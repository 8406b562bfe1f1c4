#include "mesh/wire/codec.h"

#include <kj/exception.h>

#include <cstring>
#include <string>

namespace mesh::wire {

Decoded::Decoded(Decoded&&) noexcept = default;
Decoded& Decoded::operator=(Decoded&&) noexcept = default;
Decoded::~Decoded() = default;

util::Result<Decoded> decode(zmq::message_t&& frame, const Limits& limits) {
  const std::size_t size = frame.size();
  if (size == 0) return util::err("empty frame");
  if (size > limits.maxFrameBytes) {
    return util::err("frame of " + std::to_string(size) + " bytes is over the limit of " +
                     std::to_string(limits.maxFrameBytes));
  }
  if (size % sizeof(capnp::word) != 0) {
    return util::err("frame of " + std::to_string(size) + " bytes is not a whole number of words");
  }
  Decoded d;
  d.frameBytes_ = size;
  const std::size_t words = size / sizeof(capnp::word);
  kj::ArrayPtr<const capnp::word> input;
  // A frame of up to 33 bytes lives inside its zmq_msg_t (libzmq's "very small message"), so
  // its address changes whenever the message, or this Decoded, is moved: copy those, as well as
  // frames at an unaligned address.
  constexpr std::size_t kInlineMessageMax = 64;
  if (size > kInlineMessageMax && reinterpret_cast<std::uintptr_t>(frame.data()) % alignof(capnp::word) == 0) {
    d.frame_ = std::move(frame);
    input = {static_cast<const capnp::word*>(d.frame_.data()), words};
  } else {
    d.copy_ = kj::heapArray<capnp::word>(words);
    std::memcpy(d.copy_.begin(), frame.data(), size);
    input = d.copy_.asPtr();
  }
  capnp::ReaderOptions options;
  options.traversalLimitInWords = words * limits.traversalFactor + 64;
  options.nestingLimit = limits.nestingLimit;
  try {
    d.reader_ = std::make_unique<capnp::FlatArrayMessageReader>(input, options);
    if (d.reader_->getEnd() != input.end()) return util::err("trailing bytes after the message");
    // Walk the whole message once: every pointer is checked here, not in the handler.
    d.reader_->getRoot<capnp::AnyPointer>().targetSize();
    d.root_ = d.reader_->getRoot<proto::Envelope>();
    if (d.root_.getVersion() != proto::PROTOCOL_VERSION) {
      return util::err("peer speaks protocol version " + std::to_string(d.root_.getVersion()) +
                       ", this node speaks " + std::to_string(proto::PROTOCOL_VERSION) +
                       ": run the same release on both");
    }
  } catch (const kj::Exception& e) {
    return util::err(std::string("malformed message: ") + e.getDescription().cStr());
  } catch (const std::exception& e) {
    return util::err(std::string("malformed message: ") + e.what());
  }
  return d;
}

Encoder::Encoder(std::uint64_t requestId, unsigned firstSegmentWords)
    : builder_(firstSegmentWords), root_(builder_.initRoot<proto::Envelope>()) {
  root_.setVersion(proto::PROTOCOL_VERSION);
  root_.setRequestId(requestId);
}

zmq::message_t Encoder::finish() {
  auto segments = builder_.getSegmentsForOutput();
  std::size_t words = capnp::computeSerializedSizeInWords(segments);
  zmq::message_t out(words * sizeof(capnp::word));
  kj::ArrayOutputStream stream(
      kj::arrayPtr(static_cast<kj::byte*>(out.data()), out.size()));
  capnp::writeMessage(stream, segments);
  return out;
}

zmq::message_t encodeError(std::uint64_t requestId, proto::Error::Code code,
                           std::string_view message) {
  Encoder e(requestId, 64);
  auto err = e.body().initError();
  err.setCode(code);
  err.setMessage(asText(message));
  return e.finish();
}

}  // namespace mesh::wire
