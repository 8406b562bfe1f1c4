// Client::submit against a scripted nexus on 127.0.0.1: what it sends for ordinary and large
// payloads, and what it does when a submit fails after its batch was opened.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <thread>

#include "mesh/node/client.h"
#include "mesh/transport/sockets.h"
#include "mesh/transport/zap.h"

using namespace mesh;
using node::Client;
using Which = proto::Envelope::Body::Which;

namespace {

constexpr std::uint64_t kBatch = 7;

// Answers submits, status requests and cancels on a Curve ROUTER, on its own thread, as its
// Rules say, and records every request. Read `seen` after stop().
class FakeNexus {
 public:
  struct Rules {
    std::uint64_t maxPayload = 0, maxFrame = 0;  // its StatusReply; 0: a nexus older than those fields
    int refuseChunk = -1;                        // refuse the submit of this chunk (0-based), tooLarge
    int silentFromChunk = -1;                    // answer no submit from this chunk on, and no cancel
    bool reverseAcks = false;                    // hold each odd chunk's ack until the next chunk's
    bool finishedAlready = false;                // refuse cancels: the batch has finished
  };
  struct Request {
    Which kind;
    std::size_t payloads = 0, largest = 0, frameBytes = 0;
    std::uint64_t batch = 0;
    bool seal = false;
  };

  FakeNexus(zmq::context_t& ctx, Rules rules)
      : ctx_(ctx),
        rules_(rules),
        zap_(ctx, [](const transport::ZapRequest&) { return transport::ZapVerdict{true, "test"}; }) {
    transport::SocketLimits limits;
    limits.lingerMs = 0;
    socket_ = transport::makeServerSocket(ctx_, zmq::socket_type::router, keys_, "mesh-client", limits);
    endpoint_ = *transport::bindSocket(socket_, "tcp://127.0.0.1:*");
    thread_ = std::thread([this] { run(); });
  }
  ~FakeNexus() { stop(); }
  void stop() {
    if (thread_.joinable()) {
      stop_ = true;
      thread_.join();
    }
  }
  const std::string& endpoint() const { return endpoint_; }
  const crypto::PublicKey& key() const { return keys_.publicKey; }
  std::vector<Request> seen;
  std::vector<Which> kinds() const {
    std::vector<Which> k;
    for (const auto& r : seen) k.push_back(r.kind);
    return k;
  }
  std::size_t count(Which w) const {
    std::size_t n = 0;
    for (const auto& r : seen) n += r.kind == w;
    return n;
  }

 private:
  void send(const std::string& routingId, zmq::message_t&& body) {
    socket_.send(zmq::buffer(routingId), zmq::send_flags::sndmore);
    socket_.send(std::move(body), zmq::send_flags::none);
  }
  void run() {
    int chunk = 0;
    std::optional<std::pair<std::string, std::uint64_t>> held;  // a held ack: routing id, request id
    auto ack = [&](const std::string& rid, std::uint64_t requestId) {
      wire::Encoder e(requestId, 32);
      auto a = e.body().initSubmitAck();
      a.setBatch(kBatch);
      a.setCount(static_cast<std::uint32_t>(acks_.at(requestId)));
      send(rid, e.finish());
    };
    while (!stop_) {
      zmq_pollitem_t item{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0};
      if (zmq::poll(&item, 1, std::chrono::milliseconds(20)) == 0) {
        if (held) ack(held->first, held->second);  // nothing came after it
        held.reset();
        continue;
      }
      zmq::message_t id, body;
      if (!socket_.recv(id) || !socket_.recv(body)) continue;
      std::string rid(static_cast<const char*>(id.data()), id.size());
      std::size_t frameBytes = body.size();
      auto d = wire::decode(std::move(body), wire::Limits{});
      REQUIRE(d);
      std::uint64_t requestId = d->envelope().getRequestId();
      Request r{d->which()};
      r.frameBytes = frameBytes;
      switch (d->which()) {
        case Which::SUBMIT: {
          auto s = d->envelope().getBody().getSubmit();
          r.payloads = s.getPayloads().size();
          for (auto p : s.getPayloads()) r.largest = std::max<std::size_t>(r.largest, p.size());
          r.batch = s.getBatch();
          r.seal = s.getSeal();
          int n = chunk++;
          if (rules_.silentFromChunk >= 0 && n >= rules_.silentFromChunk) break;
          if (n == rules_.refuseChunk || (rules_.maxPayload && r.largest > rules_.maxPayload)) {
            send(rid, wire::encodeError(requestId, proto::Error::Code::TOO_LARGE, "chunk " + std::to_string(n) + " refused"));
            break;
          }
          acks_[requestId] = r.payloads;
          if (rules_.reverseAcks && n % 2 == 1) {
            held.emplace(rid, requestId);
            break;
          }
          ack(rid, requestId);
          if (held) ack(held->first, held->second);
          held.reset();
          break;
        }
        case Which::STATUS_REQUEST: {
          wire::Encoder e(requestId, 64);
          auto s = e.body().initStatusReply();
          s.setNexusName("fake");
          s.setMaxPayloadBytes(rules_.maxPayload);
          s.setMaxFrameBytes(rules_.maxFrame);
          send(rid, e.finish());
          break;
        }
        case Which::CANCEL_BATCH: {
          if (rules_.silentFromChunk >= 0 && !rules_.finishedAlready) break;
          if (rules_.finishedAlready) {
            send(rid, wire::encodeError(requestId, proto::Error::Code::ALREADY_FINISHED, "batch 7 has finished already"));
            break;
          }
          wire::Encoder e(requestId, 32);
          auto a = e.body().initCancelAck();
          a.setBatch(d->envelope().getBody().getCancelBatch());
          send(rid, e.finish());
          break;
        }
        default:
          send(rid, wire::encodeError(requestId, proto::Error::Code::BAD_REQUEST, "not served here"));
      }
      seen.push_back(r);
    }
  }

  zmq::context_t& ctx_;
  Rules rules_;
  transport::ZapHandler zap_;
  crypto::KeyPair keys_ = crypto::KeyPair::generate();
  zmq::socket_t socket_;
  std::string endpoint_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::map<std::uint64_t, std::size_t> acks_;  // request id -> payloads of an accepted chunk
};

struct Fixture {
  zmq::context_t ctx = transport::makeContext();
  std::string dir;
  Fixture() {
    char tmpl[] = "/tmp/mesh-client-test-XXXXXX";
    dir = mkdtemp(tmpl);
    REQUIRE(crypto::saveKeyPair(dir + "/client.key", crypto::KeyPair::generate()));
  }
  ~Fixture() { std::system(("rm -rf " + dir).c_str()); }
  std::unique_ptr<Client> connect(const FakeNexus& nexus, std::int64_t timeoutMs = 5000) {
    node::ClientOptions o;
    o.endpoint = nexus.endpoint();
    o.nexusKey = nexus.key();
    o.keyFile = dir + "/client.key";
    o.timeoutMs = timeoutMs;
    auto c = Client::connect(ctx, o);
    REQUIRE(c);
    return std::move(*c);
  }
};

// `small` payloads of one byte, then `large` ones of `largeBytes`, then an error if `failAt` is
// reached (a payload source that cannot read on).
node::PayloadSource source(std::size_t small, std::size_t large = 0, std::size_t largeBytes = 0,
                           std::size_t failAt = SIZE_MAX) {
  auto n = std::make_shared<std::size_t>(0);
  return [=](std::string* out) -> util::Result<bool> {
    std::size_t i = (*n)++;
    if (i == failAt) return util::err("cannot read input 3", node::kExitUsage);
    if (i < small) {
      *out = "x";
      return true;
    }
    if (i < small + large) {
      out->assign(largeBytes, 'L');
      return true;
    }
    return false;
  };
}

node::BatchOptions echo() {
  node::BatchOptions o;
  o.handler = "echo";
  return o;
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("payloadRefusal names the task, its file, the limit and the options that raise it") {
  node::NexusLimits limits{1u << 20, 4u << 20};
  std::string why = node::payloadRefusal(3, 5u << 20, limits, "big.bin");
  CHECK(why == "task 3 (big.bin) has a payload of 5242880 bytes, over the nexus limit of 1048576 (the nexus's "
               "--max-payload, which can be raised to half its --max-frame of 4194304)");
  CHECK(node::payloadRefusal(3, 1u << 20, limits).empty());            // at the limit
  CHECK(node::payloadRefusal(3, 5u << 20, node::NexusLimits{}).empty());  // unknown limits
}

TEST_CASE("a one-task submit sends one message and asks nothing else") {
  Fixture f;
  FakeNexus nexus(f.ctx, {1u << 20, 4u << 20});
  auto client = f.connect(nexus);
  auto batch = client->submit(echo(), source(1));
  REQUIRE(batch);
  CHECK(*batch == kBatch);
  nexus.stop();
  CHECK(nexus.kinds() == std::vector<Which>{Which::SUBMIT});
  CHECK(nexus.seen[0].seal);
}

TEST_CASE("a payload over the nexus limit is refused before it is sent, and no batch is opened") {
  Fixture f;
  FakeNexus nexus(f.ctx, {1u << 20, 4u << 20});
  auto client = f.connect(nexus);
  auto batch = client->submit(echo(), source(3, 1, 2u << 20));
  REQUIRE(!batch);
  CHECK(batch.error().code == node::kExitFailed);
  CHECK(has(batch.error().message, "task 3 has a payload of 2097152 bytes, over the nexus limit of 1048576"));
  CHECK(has(batch.error().message, "bytes, over the nexus limit of 1048576 (the nexus's --max-payload, which can be raised to half its --max-frame of 4194304): nothing was submitted"));
  CHECK(!has(batch.error().message, "cancel"));
  nexus.stop();
  CHECK(nexus.kinds() == std::vector<Which>{Which::STATUS_REQUEST});
}

TEST_CASE("a large payload in a later chunk: the acks in flight, out of order, are taken before the limits are asked, and the batch is cancelled") {
  Fixture f;
  FakeNexus::Rules rules{1u << 20, 4u << 20};
  rules.reverseAcks = true;
  FakeNexus nexus(f.ctx, rules);
  auto client = f.connect(nexus);
  std::vector<std::uint64_t> progress;
  // Chunks of 10,000: the large payload is in the sixth, read while the fourth is sent.
  auto batch = client->submit(echo(), source(50000, 1, 2u << 20), [&](std::uint64_t n) { progress.push_back(n); });
  REQUIRE(!batch);
  CHECK(batch.error().code == node::kExitFailed);
  CHECK(has(batch.error().message, "task 50000 has a payload of 2097152 bytes"));
  CHECK(has(batch.error().message, "; batch 7 was cancelled: its first 40000 tasks were accepted before this failure"));
  CHECK(progress == std::vector<std::uint64_t>{10000, 20000, 30000, 40000});
  nexus.stop();
  auto kinds = nexus.kinds();
  REQUIRE(kinds.size() == 6);
  CHECK(std::count(kinds.begin(), kinds.begin() + 4, Which::SUBMIT) == 4);
  CHECK(kinds[4] == Which::STATUS_REQUEST);
  CHECK(kinds[5] == Which::CANCEL_BATCH);
  CHECK(nexus.seen[1].batch == kBatch);  // appends name the batch the first ack gave
}

TEST_CASE("a later chunk refused by the nexus ends the submit with the batch cancelled") {
  Fixture f;
  FakeNexus::Rules rules;
  rules.refuseChunk = 2;
  FakeNexus nexus(f.ctx, rules);
  auto client = f.connect(nexus);
  auto batch = client->submit(echo(), source(35000));
  REQUIRE(!batch);
  CHECK(batch.error().code == node::kExitFailed);
  CHECK(has(batch.error().message, "batch 7: chunk 2 refused; batch 7 was cancelled: its first 20000 tasks were accepted"));
  nexus.stop();
  CHECK(nexus.count(Which::CANCEL_BATCH) == 1);
  CHECK(nexus.count(Which::STATUS_REQUEST) == 0);
  CHECK(nexus.kinds().back() == Which::CANCEL_BATCH);
}

TEST_CASE("a payload source that fails after the batch was opened cancels it and keeps its error code") {
  Fixture f;
  FakeNexus nexus(f.ctx, {});
  auto client = f.connect(nexus);
  auto batch = client->submit(echo(), source(100000, 0, 0, 25000));
  REQUIRE(!batch);
  CHECK(batch.error().code == node::kExitUsage);
  CHECK(has(batch.error().message, "cannot read input 3; batch 7 was cancelled: its first 10000 tasks were accepted"));
  nexus.stop();
  CHECK(nexus.count(Which::CANCEL_BATCH) == 1);
}

TEST_CASE("a failure before the batch was opened cancels nothing") {
  Fixture f;
  FakeNexus::Rules rules;
  rules.refuseChunk = 0;
  FakeNexus nexus(f.ctx, rules);
  auto client = f.connect(nexus);
  auto batch = client->submit(echo(), source(10));
  REQUIRE(!batch);
  CHECK(batch.error().message == "chunk 0 refused");
  auto batch2 = client->submit(echo(), source(100000, 0, 0, 15000));  // fails while reading ahead
  REQUIRE(!batch2);
  CHECK(batch2.error().message == "cannot read input 3");
  nexus.stop();
  CHECK(nexus.count(Which::CANCEL_BATCH) == 0);
}

TEST_CASE("a nexus that falls silent mid-way: the error says the batch stays open and how to cancel it") {
  Fixture f;
  FakeNexus::Rules rules;
  rules.silentFromChunk = 1;
  FakeNexus nexus(f.ctx, rules);
  auto client = f.connect(nexus, 300);
  auto batch = client->submit(echo(), source(25000));
  REQUIRE(!batch);
  CHECK(batch.error().code == node::kExitUnreachable);
  CHECK(has(batch.error().message, "no answer from the nexus within 300 ms while submitting; batch 7 stays open "
                                   "(its first 10000 tasks were accepted before this failure) and could not be "
                                   "cancelled: the nexus did not answer; cancel it with `mesh cancel 7`"));
  nexus.stop();
  CHECK(nexus.count(Which::CANCEL_BATCH) == 1);
}

TEST_CASE("a submit whose last ack did not come, for a batch that has finished: not cancelled, and says so") {
  Fixture f;
  FakeNexus::Rules rules;
  rules.silentFromChunk = 1;  // the sealing chunk was stored, its ack lost
  rules.finishedAlready = true;
  FakeNexus nexus(f.ctx, rules);
  auto client = f.connect(nexus, 300);
  auto batch = client->submit(echo(), source(15000));
  REQUIRE(!batch);
  CHECK(batch.error().code == node::kExitUnreachable);
  CHECK(has(batch.error().message, "while submitting; batch 7 was not cancelled: every task of it was accepted and "
                                   "has a result (`mesh results 7`)"));
  nexus.stop();
  CHECK(nexus.count(Which::CANCEL_BATCH) == 1);
}

TEST_CASE("a cancelled batch reads cancelled, even when its cancel ended no task") {
  node::ProgressView p;
  p.total = p.succeeded = 3;
  CHECK(std::string(node::batchState(p)) == "open");
  p.sealed = true;
  CHECK(std::string(node::batchState(p)) == "running");
  p.finished = true;
  CHECK(std::string(node::batchState(p)) == "finished");
  p.batchCancelled = true;
  CHECK(std::string(node::batchState(p)) == "cancelled");
  p.finished = false;
  CHECK(std::string(node::batchState(p)) == "cancelling");
  // From a nexus older than Progress.batchCancelled: a cancelled task says the batch was cancelled.
  wire::Encoder e(1, 32);
  auto out = e.body().initProgress();
  out.setTotal(3);
  out.setSucceeded(2);
  out.setCancelled(1);
  out.setSealed(true);
  out.setFinished(true);
  auto frame = e.finish();
  auto d = wire::decode(std::move(frame), wire::Limits{});
  REQUIRE(d);
  CHECK(std::string(node::batchState(node::progressView(d->envelope().getBody().getProgress()))) == "cancelled");
}

TEST_CASE("a nexus that does not state its limits gets large payloads as before, and is asked once") {
  Fixture f;
  FakeNexus nexus(f.ctx, {});
  auto client = f.connect(nexus);
  REQUIRE(client->submit(echo(), source(0, 1, 2u << 20)));
  REQUIRE(client->submit(echo(), source(0, 1, 2u << 20)));
  nexus.stop();
  CHECK(nexus.kinds() == std::vector<Which>{Which::STATUS_REQUEST, Which::SUBMIT, Which::SUBMIT});
  CHECK(nexus.seen[1].largest == 2u << 20);
}

TEST_CASE("a chunk that could pass the nexus's --max-frame goes as several messages, sealed on the last") {
  Fixture f;
  FakeNexus nexus(f.ctx, {3u << 19, 3u << 20});  // 1.5 MiB payloads, 3 MiB frames
  auto client = f.connect(nexus);
  // 900 KiB, then 1450 KiB (which makes it ask), then 900 KiB: the first chunk holds 2.3 MiB,
  // over 3/4 of the frame, and goes as two messages.
  std::vector<std::size_t> sizes{900u << 10, 1450u << 10, 900u << 10};
  std::size_t next = 0;
  auto batch = client->submit(echo(), [&](std::string* out) -> util::Result<bool> {
    if (next >= sizes.size()) return false;
    out->assign(sizes[next++], 'p');
    return true;
  });
  REQUIRE(batch);
  nexus.stop();
  std::size_t payloads = 0, seals = 0;
  for (const auto& r : nexus.seen) {
    if (r.kind != Which::SUBMIT) continue;
    CHECK(r.frameBytes <= 3u << 20);
    payloads += r.payloads;
    seals += r.seal;
  }
  CHECK(payloads == 3);
  CHECK(seals == 1);
  CHECK(nexus.seen.back().seal);
  CHECK(nexus.count(Which::SUBMIT) == 3);
  CHECK(nexus.count(Which::STATUS_REQUEST) == 1);
}
