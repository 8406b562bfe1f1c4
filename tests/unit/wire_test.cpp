#include <doctest/doctest.h>

#include <capnp/any.h>
#include <capnp/schema.h>

#include <cstring>
#include <random>

#include "mesh/wire/codec.h"

using namespace mesh;

namespace {
zmq::message_t sampleResults(int n) {
  wire::Encoder e(42);
  auto list = e.body().initResults().initResults(n);
  for (int i = 0; i < n; ++i) {
    list[i].setId(1000 + i);
    list[i].setAttempt(1);
    list[i].setStatus(proto::TaskStatus::OK);
    list[i].setOutput(wire::asData("output-" + std::to_string(i)));
  }
  return e.finish();
}
zmq::message_t copyOf(const std::string& bytes) { return zmq::message_t(bytes.data(), bytes.size()); }
std::string bytesOf(const zmq::message_t& m) { return std::string(static_cast<const char*>(m.data()), m.size()); }
}  // namespace

TEST_CASE("an encoded envelope decodes to the same content") {
  auto d = wire::decode(sampleResults(256), wire::Limits{});
  REQUIRE(d.ok());
  CHECK(d->envelope().getRequestId() == 42);
  REQUIRE(d->which() == proto::Envelope::Body::RESULTS);
  auto list = d->envelope().getBody().getResults().getResults();
  REQUIRE(list.size() == 256);
  CHECK(list[255].getId() == 1255);
  CHECK(wire::view(list[7].getOutput()) == "output-7");
}

TEST_CASE("a frame at an unaligned address is copied and decodes") {
  std::string bytes = bytesOf(sampleResults(3));
  std::string shifted = "x" + bytes;
  zmq::message_t frame(shifted.size());
  std::memcpy(frame.data(), shifted.data(), shifted.size());
  // Build an unaligned view by sending only the tail through a fresh message whose buffer we
  // offset: zmq::message_t copies, so emulate with a raw misaligned buffer via placement.
  struct Holder { std::string buf; };
  auto* h = new Holder{shifted};
  zmq::message_t unaligned(h->buf.data() + 1, bytes.size(),
                           [](void*, void* hint) { delete static_cast<Holder*>(hint); }, h);
  REQUIRE(reinterpret_cast<std::uintptr_t>(unaligned.data()) % 8 != 0);
  auto d = wire::decode(std::move(unaligned), wire::Limits{});
  REQUIRE(d.ok());
  CHECK(d->envelope().getBody().getResults().getResults().size() == 3);
}

TEST_CASE("every truncation of a valid frame is refused without throwing") {
  std::string bytes = bytesOf(sampleResults(4));
  for (std::size_t len = 0; len < bytes.size(); ++len) {
    auto d = wire::decode(copyOf(bytes.substr(0, len)), wire::Limits{});
    CHECK_FALSE(d.ok());
  }
}

TEST_CASE("a frame over the size limit is refused before parsing") {
  wire::Limits limits;
  limits.maxFrameBytes = 1024;
  auto d = wire::decode(sampleResults(200), limits);
  REQUIRE_FALSE(d.ok());
  CHECK(d.error().message.find("over the limit") != std::string::npos);
}

TEST_CASE("a frame whose size is not a whole number of words is refused") {
  std::string bytes = bytesOf(sampleResults(1)) + "abc";
  CHECK_FALSE(wire::decode(copyOf(bytes), wire::Limits{}).ok());
}

TEST_CASE("trailing bytes after the message are refused") {
  std::string bytes = bytesOf(sampleResults(1)) + std::string(8, '\0');
  CHECK_FALSE(wire::decode(copyOf(bytes), wire::Limits{}).ok());
}

TEST_CASE("a different protocol version is refused with a clear message") {
  wire::Encoder e(1);
  e.envelope().setVersion(proto::PROTOCOL_VERSION + 1);
  e.body().setStatusRequest();
  auto d = wire::decode(e.finish(), wire::Limits{});
  REQUIRE_FALSE(d.ok());
  CHECK(d.error().message.find("protocol version") != std::string::npos);
}

TEST_CASE("an unknown union arm decodes and reports a kind the handlers do not know") {
  wire::Encoder e(1);
  e.body().initEvent();
  // Patch the body discriminant to a value past the last known arm, as a newer peer would send.
  auto bodySchema = capnp::Schema::from<proto::Envelope::Body>().getProto().getStruct();
  auto offset = bodySchema.getDiscriminantOffset();
  capnp::AnyStruct::Builder any = e.envelope();
  auto data = any.getDataSection();
  std::uint16_t bogus = 999;
  std::memcpy(data.begin() + offset * 2, &bogus, 2);
  auto d = wire::decode(e.finish(), wire::Limits{});
  REQUIRE(d.ok());
  CHECK(static_cast<unsigned>(d->which()) == 999);
}

TEST_CASE("a message nested deeper than the limit is refused") {
  wire::Encoder e(1);
  e.body().initStatusReply().initBatches(1)[0].initProgress();
  wire::Limits limits;
  limits.nestingLimit = 2;
  CHECK_FALSE(wire::decode(e.finish(), limits).ok());
}

TEST_CASE("an error envelope carries its code and message") {
  auto d = wire::decode(wire::encodeError(9, proto::Error::Code::FORBIDDEN, "no"), wire::Limits{});
  REQUIRE(d.ok());
  REQUIRE(d->which() == proto::Envelope::Body::ERROR);
  CHECK(d->envelope().getBody().getError().getCode() == proto::Error::Code::FORBIDDEN);
  CHECK(d->envelope().getRequestId() == 9);
}

TEST_CASE("seeded random bytes and random mutations never throw") {
  std::mt19937_64 rng(0xC0FFEE);
  std::string valid = bytesOf(sampleResults(8));
  int accepted = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string bytes;
    if (round % 2 == 0) {
      bytes.resize((rng() % 64) * 8);
      for (auto& c : bytes) c = static_cast<char>(rng());
    } else {
      bytes = valid;
      int flips = 1 + static_cast<int>(rng() % 8);
      for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    }
    util::Result<wire::Decoded> d = util::err("unset");
    CHECK_NOTHROW(d = wire::decode(copyOf(bytes), wire::Limits{}));
    if (d.ok()) {
      ++accepted;
      // Whatever was accepted can be read in full without throwing.
      CHECK_NOTHROW(d->envelope().totalSize());
    }
  }
  CHECK(accepted < 20000);
}

namespace {
// Overwrites the stack below the caller's frame, where a callee's locals were.
[[gnu::noinline]] void scribbleStack() {
  volatile unsigned char junk[8192];
  for (std::size_t i = 0; i < sizeof junk; ++i) junk[i] = 0xA5;
}
}  // namespace

TEST_CASE("a frame small enough to live inside its zmq message decodes and stays valid after moves") {
  // 24 bytes: segment table, root struct pointer (1 data word), version and requestId's first
  // bytes in that word. ZeroMQ keeps messages this small inside the zmq_msg_t itself, so a
  // reader that pointed there would dangle once the message moved.
  unsigned char bytes[24] = {};
  bytes[4] = 2;  // segment 0: 2 words
  bytes[12] = 1;  // struct pointer: offset 0, data section of 1 word, no pointers
  std::uint16_t version = proto::PROTOCOL_VERSION;
  std::memcpy(bytes + 16, &version, sizeof version);
  auto d = wire::decode(zmq::message_t(bytes, sizeof bytes), wire::Limits{});
  REQUIRE(d);
  wire::Decoded moved = std::move(*d);
  scribbleStack();
  wire::Decoded again = std::move(moved);
  scribbleStack();
  CHECK(again.envelope().getVersion() == proto::PROTOCOL_VERSION);
  CHECK(again.envelope().getRequestId() == 0);
}
