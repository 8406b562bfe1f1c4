// A hostile peer with an accepted key: sends malformed, truncated, oversized, multi-frame,
// wrong-direction and unknown-kind messages to one nexus port, then (on the client port) checks
// that the nexus still answers a status request. Exit 0 when it does.
//
// Usage: hostile_client ENDPOINT NEXUS_KEY_FILE KEY_FILE node|client ROUNDS SEED
//
// Mode fetchflood:NAME:VERSION (node port): says hello, then asks ROUNDS times for a MiB of
// that bundle (the first MiB, then the first and second in turn) without reading a reply, and stays connected for SEED seconds (a
// spore that floods bundle fetches must not grow the nexus's send queue).
//
// Crafted node-port conversations (ROUNDS and SEED as below); each prints what the nexus
// answered on stdout ("welcome", "error CODE MESSAGE", "silent") and exits 0:
//   hello:NAME:N       a hello naming N running tasks (ids from 10^12 on); stays SEED seconds.
//   forge:ID,ID,...    results (attempt 1, ok, output FORGED) for these task ids, without a hello.
//   helloforge:NAME:ID,ID,...  the same after a hello (the ids are not in its running list).
//   beat:NAME:CPU      a hello, then SEED seconds of heartbeats with cpuPct CPU (nan, inf, -5, ...).
//   leave:NAME:ID,...  a hello, then leaving messages handing back those ids (also one whose
//                      attempts list does not match), then a final one; prints its answer.
//   bundles:NAME:N     a hello, then bundle reports for N different names; stays SEED seconds.
//   handback:NAME:ID,...  a hello, then hand-backs (answers to a recall it never got) of those ids
//                      (attempt 1), and one whose attempts list does not match; stays SEED seconds.
//
// Client-port modes (ROUNDS and SEED ignored), each printing one line per request with the
// answer and exiting 0 when every answer was the one expected:
//   retries            Retry requests that cannot be served: an Error each.
//   batches            BatchesRequests out of range (limit 0 or over 1000, an unknown state, a
//                      label over 256 bytes): a badRequest each; then a valid one: a batchesReply.
//   afters:ID          Submits whose after/afterDone lists must be refused (10,000 ids; 65 ids;
//                      0, ID + 1 (the new batch's own id), ID + 10^6, 2^64-1; after on a chunk
//                      appended to batch ID): a badRequest or notFound each; then a valid one
//                      (afterDone ID, ID an existing batch): a submitAck.
#include <capnp/any.h>
#include <capnp/schema.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "mesh/crypto/keys.h"
#include "mesh/transport/sockets.h"
#include "mesh/wire/codec.h"

using namespace mesh;

namespace {

std::string bytesOf(zmq::message_t&& m) { return std::string(static_cast<const char*>(m.data()), m.size()); }

std::string validHello() {
  wire::Encoder e(1);
  auto h = e.body().initHello();
  h.setName("hostile");
  h.setSlots(2);
  h.initHandlers(1).set(0, "echo");
  return bytesOf(e.finish());
}

std::string validSubmit() {
  wire::Encoder e(2);
  auto s = e.body().initSubmit();
  s.initSpec().setHandler("echo");
  s.initPayloads(2).set(0, wire::asData("a"));
  s.setSeal(true);
  return bytesOf(e.finish());
}

std::string unknownArm() {
  wire::Encoder e(3);
  e.body().initEvent();
  auto offset = capnp::Schema::from<proto::Envelope::Body>().getProto().getStruct().getDiscriminantOffset();
  capnp::AnyStruct::Builder any = e.envelope();
  std::uint16_t bogus = 900;
  std::memcpy(any.getDataSection().begin() + offset * 2, &bogus, 2);
  return bytesOf(e.finish());
}

std::string wrongDirection() {
  wire::Encoder e(4);
  auto t = e.body().initAssign().initTasks(1);
  t[0].setId(1);
  t[0].setHandler("echo");
  return bytesOf(e.finish());
}

std::string absurdHello() {
  wire::Encoder e(5);
  auto h = e.body().initHello();
  h.setName("");
  h.setSlots(0);
  return bytesOf(e.finish());
}

std::string resultsForUnknownTasks() {
  wire::Encoder e(6);
  auto r = e.body().initResults().initResults(3);
  for (unsigned i = 0; i < 3; ++i) {
    r[i].setId(900000000 + i);
    r[i].setStatus(proto::TaskStatus::OK);
  }
  return bytesOf(e.finish());
}

std::string badSubmits(int which) {
  wire::Encoder e(7);
  auto s = e.body().initSubmit();
  switch (which) {
    case 0: s.initSpec().setHandler("../../bin/sh"); break;
    case 1: s.setBatch(123456789); break;  // not our batch
    case 2: s.initSpec().setHandler(""); break;
    default: s.initSpec().setHandler("echo"); s.initSpec().initRequires(1).set(0, "bad tag!"); break;
  }
  return bytesOf(e.finish());
}

// Retry requests (`mesh retry`) for batches that cannot be retried, or with fields out of range:
// each must get an Error.
constexpr int kBadRetries = 6;
std::string badRetry(int which) {
  wire::Encoder e(static_cast<std::uint64_t>(500 + which), 32);
  auto r = e.body().initRetry();
  switch (which) {
    case 0: r.setBatch(0); break;
    case 1: r.setBatch(UINT64_MAX); break;
    case 2: r.setBatch(123456789); r.setPriority(300); break;
    case 3: r.setBatch(1); r.setPriority(-7); break;
    case 4: r.setBatch(1ull << 63); r.setLabel(std::string(100000, 'L')); r.setMaxAttempts(255); r.setTimeoutMs(UINT32_MAX); break;
    default: break;  // every field left out: batch 0
  }
  return bytesOf(e.finish());
}

// Batch listings (`mesh batches`) with fields out of range: each must get an Error (badRequest).
// The last one is valid (the ids past the end of any store): it gets a batchesReply.
constexpr int kBadBatches = 6;
std::string batchesRequest(int which) {
  wire::Encoder e(static_cast<std::uint64_t>(600 + which), 32);
  auto r = e.body().initBatchesRequest();
  r.setLimit(20);
  switch (which) {
    case 0: r.setLimit(0); break;
    case 1: r.setLimit(1001); break;
    case 2: r.setLimit(UINT32_MAX); r.setBefore(UINT64_MAX); break;
    case 3: r.setState(static_cast<proto::BatchesRequest::BatchState>(77)); break;
    case 4: r.setByLabel(true); r.setLabel(std::string(257, 'L')); break;
    case 5: r = e.body().initBatchesRequest(); break;  // every field left out: limit 0
    default: r.setBefore(UINT64_MAX); r.setMine(true); r.setByLabel(true); break;  // valid
  }
  return bytesOf(e.finish());
}

// Submits with dependency lists (protocol section 4.21) the nexus must refuse, with the code each
// must get (proto::Error::Code: 0 badRequest, 1 notFound); the last one is valid. `existing` is a
// batch the nexus has stored, the latest one.
constexpr int kBadAfters = 8;
std::pair<std::string, int> afterSubmit(int which, std::uint64_t existing) {
  wire::Encoder e(static_cast<std::uint64_t>(700 + which), 20000);
  auto s = e.body().initSubmit();
  auto spec = s.initSpec();
  spec.setHandler("echo");
  s.initPayloads(1).set(0, wire::asData("x"));
  s.setSeal(true);
  auto ids = [](capnp::List<std::uint64_t>::Builder list, std::uint64_t first) {
    for (unsigned i = 0; i < list.size(); ++i) list.set(i, first + i);
  };
  int code = 1;
  switch (which) {
    case 0: ids(spec.initAfter(10000), 1); code = 0; break;
    case 1: ids(spec.initAfterDone(10000), 1); code = 0; break;
    case 2: ids(spec.initAfter(33), 1); ids(spec.initAfterDone(32), 100); code = 0; break;
    case 3: spec.initAfter(1).set(0, 0); break;
    case 4: spec.initAfter(1).set(0, existing + 1); break;  // the id this batch would get
    case 5: spec.initAfterDone(1).set(0, existing + 1'000'000); break;
    case 6: spec.initAfter(2).set(0, existing); spec.getAfter().set(1, UINT64_MAX); break;
    case 7: s.setBatch(existing); spec.initAfter(1).set(0, existing); code = 0; break;  // on an appended chunk
    default: spec.initAfterDone(1).set(0, existing); code = -1; break;  // valid
  }
  return {bytesOf(e.finish()), code};
}

// The first reply within `ms`, as "welcome", "error CODE MESSAGE", another kind's number, or "silent".
std::string awaitReply(zmq::socket_t& s, int ms) {
  zmq::pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
  for (int waited = 0; waited < ms; waited += 50) {
    zmq::poll(&item, 1, std::chrono::milliseconds(50));
    if (!(item.revents & ZMQ_POLLIN)) continue;
    zmq::message_t m;
    if (!s.recv(m, zmq::recv_flags::dontwait)) continue;
    auto d = wire::decode(std::move(m), wire::Limits{});
    if (!d) continue;
    if (d->which() == proto::Envelope::Body::WELCOME) return "welcome";
    if (d->which() == proto::Envelope::Body::LEFT_ACK) return "leftAck";
    if (d->which() == proto::Envelope::Body::ERROR) {
      auto e = d->envelope().getBody().getError();
      return "error " + std::to_string(static_cast<unsigned>(e.getCode())) + " " + std::string(wire::view(e.getMessage()));
    }
    if (d->which() == proto::Envelope::Body::HEARTBEAT) continue;
    return "kind " + std::to_string(static_cast<unsigned>(d->which()));
  }
  return "silent";
}

std::string helloWith(const std::string& name, std::uint64_t running) {
  wire::Encoder e(1, 64 + running);
  auto h = e.body().initHello();
  h.setName(name);
  h.setSlots(2);
  h.initHandlers(1).set(0, "hostile-only");  // never given work
  auto ids = h.initRunning(static_cast<unsigned>(running));
  auto attempts = h.initRunningAttempts(static_cast<unsigned>(running));
  for (unsigned i = 0; i < running; ++i) {
    ids.set(i, 1'000'000'000'000ull + i);
    attempts.set(i, 1);
  }
  return bytesOf(e.finish());
}

// "1,2,3" -> {1, 2, 3}.
std::vector<std::uint64_t> idsOf(const std::string& idList) {
  std::vector<std::uint64_t> ids;
  for (std::size_t at = 0; at < idList.size();) {
    auto comma = idList.find(',', at);
    if (comma == std::string::npos) comma = idList.size();
    ids.push_back(std::strtoull(idList.substr(at, comma - at).c_str(), nullptr, 10));
    at = comma + 1;
  }
  return ids;
}

std::string forgedResults(const std::string& idList) {
  std::vector<std::uint64_t> ids = idsOf(idList);
  wire::Encoder e(6);
  auto r = e.body().initResults().initResults(static_cast<unsigned>(ids.size()));
  for (unsigned i = 0; i < ids.size(); ++i) {
    r[i].setId(ids[i]);
    r[i].setAttempt(1);
    r[i].setStatus(proto::TaskStatus::OK);
    r[i].setOutput(wire::asData("FORGED"));
    r[i].setBundle("../forged bundle");  // not a bundle name: dropped and counted (bad_result_bundles)
    r[i].setBundleVersion(7);
  }
  return bytesOf(e.finish());
}

// A leaving message handing back `idList` (attempt 1 each); `attempts` of them (fewer or more
// than the ids: malformed) when given.
std::string leavingWith(const std::string& idList, bool final, int attempts = -1) {
  std::vector<std::uint64_t> ids = idsOf(idList);
  wire::Encoder e(0, 64);
  auto l = e.body().initLeaving();
  l.setGraceMs(1000);
  l.setFinal(final);
  auto list = l.initGiveBack(static_cast<unsigned>(ids.size()));
  for (unsigned i = 0; i < ids.size(); ++i) list.set(i, ids[i]);
  unsigned n = attempts < 0 ? static_cast<unsigned>(ids.size()) : static_cast<unsigned>(attempts);
  auto at = l.initGiveBackAttempts(n);
  for (unsigned i = 0; i < n; ++i) at.set(i, 1);
  return bytesOf(e.finish());
}

// A hand-back of `idList` (attempt 1 each); `attempts` of them when given (malformed).
std::string handBackWith(const std::string& idList, int attempts = -1) {
  std::vector<std::uint64_t> ids = idsOf(idList);
  wire::Encoder e(0, 64);
  auto h = e.body().initHandBack();
  auto list = h.initIds(static_cast<unsigned>(ids.size()));
  for (unsigned i = 0; i < ids.size(); ++i) list.set(i, ids[i]);
  unsigned n = attempts < 0 ? static_cast<unsigned>(ids.size()) : static_cast<unsigned>(attempts);
  auto at = h.initAttempts(n);
  for (unsigned i = 0; i < n; ++i) at.set(i, 1);
  return bytesOf(e.finish());
}

// Runs a crafted node-port conversation (see the header); returns the exit code.
int conversation(zmq::socket_t& s, const std::string& mode, int seconds) {
  auto first = mode.find(':');
  auto second = mode.find(':', first + 1);
  std::string kind = mode.substr(0, first);
  std::string name = mode.substr(first + 1, second == std::string::npos ? std::string::npos : second - first - 1);
  std::string arg = second == std::string::npos ? "" : mode.substr(second + 1);
  auto say = [](const std::string& what) { std::printf("%s\n", what.c_str()); std::fflush(stdout); };
  auto stay = [&] {
    for (int i = 0; i < seconds * 10; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      zmq::message_t m;
      while (s.recv(m, zmq::recv_flags::dontwait)) {
      }
    }
  };
  if (kind == "forge") {
    s.send(zmq::buffer(forgedResults(name)), zmq::send_flags::none);
    say(awaitReply(s, 5000));
    return 0;
  }
  if (kind == "hello") {
    s.send(zmq::buffer(helloWith(name, std::strtoull(arg.c_str(), nullptr, 10))), zmq::send_flags::none);
    say(awaitReply(s, 5000));
    stay();
    return 0;
  }
  s.send(zmq::buffer(helloWith(name, 0)), zmq::send_flags::none);
  std::string welcome = awaitReply(s, 5000);
  say(welcome);
  if (welcome != "welcome") return 0;
  if (kind == "helloforge") {
    s.send(zmq::buffer(forgedResults(arg)), zmq::send_flags::none);
    say(awaitReply(s, 1000));
    return 0;
  }
  if (kind == "leave") {
    // Hands back tasks it was never given (with attempts listed, then with none), then leaves:
    // prints the answer to the final leaving.
    s.send(zmq::buffer(leavingWith(arg, false)), zmq::send_flags::none);
    s.send(zmq::buffer(leavingWith(arg, false, 0)), zmq::send_flags::none);
    s.send(zmq::buffer(leavingWith(arg, true)), zmq::send_flags::none);
    say(awaitReply(s, 5000));  // "leftAck"
    return 0;
  }
  if (kind == "handback") {
    s.send(zmq::buffer(handBackWith(arg)), zmq::send_flags::none);
    s.send(zmq::buffer(handBackWith(arg, 0)), zmq::send_flags::none);
    stay();
    return 0;
  }
  if (kind == "beat") {
    // CPU "startsN": a sane load, and N starts of tasks this node does not run.
    unsigned starts = arg.rfind("starts", 0) == 0 ? static_cast<unsigned>(std::strtoul(arg.c_str() + 6, nullptr, 10)) : 0;
    float cpu = starts > 0 ? 10.0f : std::strtof(arg.c_str(), nullptr);
    for (int i = 0; i < seconds * 5; ++i) {
      wire::Encoder e(0, 32);
      auto hb = e.body().initHeartbeat();
      hb.setCpuPct(cpu);
      hb.setMemPct(cpu);
      auto list = hb.initStarted(starts);
      for (unsigned j = 0; j < starts; ++j) {
        list[j].setId(1000000 + j);
        list[j].setAttempt(1);
        list[j].setStartedMs(1);
      }
      s.send(e.finish(), zmq::send_flags::none);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      zmq::message_t m;
      while (s.recv(m, zmq::recv_flags::dontwait)) {
      }
    }
    return 0;
  }
  if (kind == "bundles") {
    unsigned n = static_cast<unsigned>(std::strtoul(arg.c_str(), nullptr, 10));
    for (unsigned i = 0; i < n; ++i) {
      wire::Encoder e(0, 32);
      auto r = e.body().initBundleReport();
      r.setName("junk-" + std::to_string(i));
      r.setVersion(1);
      r.setEvent("running");
      r.setRunning(1);
      s.send(e.finish(), zmq::send_flags::none);
    }
    stay();
    return 0;
  }
  std::fprintf(stderr, "hostile_client: unknown mode %s\n", kind.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: hostile_client ENDPOINT NEXUS_KEY_FILE KEY_FILE node|client ROUNDS SEED\n");
    return 2;
  }
  std::string endpoint = argv[1], port = argv[4];
  int rounds = std::atoi(argv[5]);
  std::mt19937_64 rng(std::strtoull(argv[6], nullptr, 10));
  auto server = crypto::loadPublicKey(argv[2]);
  auto keys = crypto::loadKeyPair(argv[3]);
  if (!server || !keys) {
    std::fprintf(stderr, "hostile_client: cannot load keys\n");
    return 2;
  }
  auto ctx = transport::makeContext();
  auto fresh = [&] {
    transport::SocketLimits limits;
    limits.lingerMs = 0;
    limits.maxMessageBytes = 64 << 20;
    auto s = transport::makeClientSocket(ctx, zmq::socket_type::dealer, *keys, *server, limits);
    s.set(zmq::sockopt::reconnect_ivl, 50);
    s.connect(endpoint);
    return s;
  };
  zmq::socket_t s = fresh();
  for (const char* mode : {"hello:", "forge:", "helloforge:", "beat:", "bundles:", "leave:", "handback:"}) {
    if (port.rfind(mode, 0) == 0) return conversation(s, port, std::atoi(argv[6]));
  }
  if (port.rfind("fetchflood:", 0) == 0) {
    auto colon = port.rfind(':');
    std::string name = port.substr(11, colon - 11);
    std::uint64_t version = std::strtoull(port.c_str() + colon + 1, nullptr, 10);
    s.set(zmq::sockopt::rcvhwm, 1);  // read nothing: let the replies pile up at the nexus
    s.send(zmq::buffer(validHello()), zmq::send_flags::none);
    for (int i = 0; i < rounds; ++i) {
      wire::Encoder e(static_cast<std::uint64_t>(100 + i), 16);
      auto f = e.body().initBundleFetch();
      f.setName(name);
      f.setVersion(version);
      // First the same MiB again and again, then going back and forth between two offsets
      // (each step back counts as a fetch started again).
      f.setOffset(i < rounds / 2 ? 0 : static_cast<std::uint64_t>(i % 2) << 20);
      f.setMaxBytes(1u << 20);
      s.send(e.finish(), zmq::send_flags::none);
    }
    std::fprintf(stderr, "hostile_client: sent %d bundle fetches without reading\n", rounds);
    std::this_thread::sleep_for(std::chrono::seconds(std::strtoull(argv[6], nullptr, 10)));
    return 0;
  }
  if (port == "batches") {
    int bad = 0;
    for (int i = 0; i <= kBadBatches; ++i) {
      s.send(zmq::buffer(batchesRequest(i)), zmq::send_flags::none);
      std::string reply = awaitReply(s, 5000);
      std::printf("batches %d: %s\n", i, reply.c_str());
      bool wanted = i < kBadBatches ? reply.rfind("error 0 ", 0) == 0
                                    : reply == "kind " + std::to_string(static_cast<unsigned>(proto::Envelope::Body::BATCHES_REPLY));
      if (!wanted) bad = 1;
    }
    return bad;
  }
  if (port.rfind("afters:", 0) == 0) {
    std::uint64_t existing = std::strtoull(port.substr(7).c_str(), nullptr, 10);
    int bad = 0;
    for (int i = 0; i <= kBadAfters; ++i) {
      auto [frame, code] = afterSubmit(i, existing);
      s.send(zmq::buffer(frame), zmq::send_flags::none);
      std::string reply = awaitReply(s, 5000);
      std::printf("after %d: %s\n", i, reply.c_str());
      bool wanted = code >= 0 ? reply.rfind("error " + std::to_string(code) + " ", 0) == 0
                              : reply == "kind " + std::to_string(static_cast<unsigned>(proto::Envelope::Body::SUBMIT_ACK));
      if (!wanted) bad = 1;
    }
    return bad;
  }
  if (port == "retries") {
    int bad = 0;
    for (int i = 0; i < kBadRetries; ++i) {
      s.send(zmq::buffer(badRetry(i)), zmq::send_flags::none);
      std::string reply = awaitReply(s, 5000);
      std::printf("retry %d: %s\n", i, reply.c_str());
      if (reply.rfind("error ", 0) != 0) bad = 1;
    }
    return bad;
  }
  std::string samples[] = {validHello(), validSubmit(), unknownArm(), wrongDirection(), absurdHello(),
                           badRetry(0), badRetry(1), badRetry(2), badRetry(4), batchesRequest(0), batchesRequest(2),
                           batchesRequest(3), batchesRequest(4), batchesRequest(kBadBatches),
                           resultsForUnknownTasks(), badSubmits(0), badSubmits(1), badSubmits(2), badSubmits(3),
                           afterSubmit(0, 1).first, afterSubmit(2, 1).first, afterSubmit(7, 1).first};
  int sent = 0;
  for (int round = 0; round < rounds; ++round) {
    std::string frame;
    int kind = static_cast<int>(rng() % 8);
    if (kind == 0) {  // random bytes
      frame.resize(rng() % 2048);
      for (auto& c : frame) c = static_cast<char>(rng());
    } else if (kind == 1) {  // a truncated valid message
      const std::string& v = samples[rng() % std::size(samples)];
      frame = v.substr(0, rng() % v.size());
    } else if (kind == 2) {  // a valid message with flipped bytes
      frame = samples[rng() % std::size(samples)];
      for (int f = 0; f < 4; ++f) frame[rng() % frame.size()] = static_cast<char>(rng());
    } else if (kind == 3) {  // several frames in one message
      s.send(zmq::buffer(samples[0]), zmq::send_flags::sndmore);
      frame = samples[1];
    } else {  // a well-formed but wrong or hostile message
      frame = samples[rng() % std::size(samples)];
    }
    s.send(zmq::buffer(frame), zmq::send_flags::dontwait);
    ++sent;
    zmq::message_t reply;
    while (s.recv(reply, zmq::recv_flags::dontwait)) {
    }
  }
  // An oversized frame: the nexus drops the connection (ZMQ_MAXMSGSIZE); libzmq reconnects.
  std::string huge(80u << 20, 'x');
  s.send(zmq::buffer(huge), zmq::send_flags::dontwait);
  s.close();
  std::fprintf(stderr, "hostile_client: sent %d hostile messages and one of 80 MiB to %s\n", sent, endpoint.c_str());
  if (port != "client") return 0;
  // The nexus must still answer.
  zmq::socket_t probe = fresh();
  wire::Encoder e(4242, 16);
  e.body().setStatusRequest();
  probe.send(e.finish(), zmq::send_flags::none);
  zmq::pollitem_t item{probe.handle(), 0, ZMQ_POLLIN, 0};
  for (int i = 0; i < 100; ++i) {
    zmq::poll(&item, 1, std::chrono::milliseconds(100));
    if (!(item.revents & ZMQ_POLLIN)) continue;
    zmq::message_t m;
    if (!probe.recv(m)) continue;
    auto d = wire::decode(std::move(m), wire::Limits{});
    if (d && d->envelope().getRequestId() == 4242 && d->which() == proto::Envelope::Body::STATUS_REPLY) {
      std::fprintf(stderr, "hostile_client: the nexus still answers\n");
      return 0;
    }
  }
  std::fprintf(stderr, "hostile_client: no status reply after the attack\n");
  return 1;
}
