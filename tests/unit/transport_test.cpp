#include <doctest/doctest.h>

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "mesh/transport/poller.h"
#include "mesh/transport/sockets.h"
#include "mesh/transport/zap.h"

using namespace mesh;
using transport::HandshakeResult;
using transport::RefusalGate;

namespace {
struct Server {
  zmq::context_t& ctx;
  crypto::KeyPair keys = crypto::KeyPair::generate();
  zmq::socket_t socket;
  std::string endpoint;
  explicit Server(zmq::context_t& c, const std::string& domain = "mesh-node") : ctx(c) {
    socket = transport::makeServerSocket(ctx, zmq::socket_type::router, keys, domain, {});
    endpoint = *transport::bindSocket(socket, "tcp://127.0.0.1:*");
  }
};

HandshakeResult connectWith(zmq::context_t& ctx, Server& server, const crypto::KeyPair& keys,
                            zmq::socket_t* keep = nullptr) {
  zmq::socket_t s = transport::makeClientSocket(ctx, zmq::socket_type::dealer, keys,
                                                server.keys.publicKey, {});
  s.set(zmq::sockopt::linger, 0);
  transport::HandshakeWatch watch(ctx, s);
  s.connect(server.endpoint);
  auto r = watch.wait(3000);
  if (keep) *keep = std::move(s);
  return r;
}
}  // namespace

TEST_CASE("the ZAP handler admits an accepted key and refuses every other") {
  auto ctx = transport::makeContext();
  auto good = crypto::KeyPair::generate();
  auto bad = crypto::KeyPair::generate();
  transport::ZapHandler zap(ctx, [&](const transport::ZapRequest& r) {
    return transport::ZapVerdict{r.key == good.publicKey && r.domain == "mesh-node", "unknown key"};
  });
  Server server(ctx);
  CHECK(connectWith(ctx, server, good) == HandshakeResult::kSucceeded);
  CHECK(connectWith(ctx, server, bad) == HandshakeResult::kRefused);
  CHECK(zap.refused() >= 1);
}

TEST_CASE("a key accepted for one port is refused on another") {
  auto ctx = transport::makeContext();
  auto client = crypto::KeyPair::generate();
  transport::ZapHandler zap(ctx, [&](const transport::ZapRequest& r) {
    return transport::ZapVerdict{r.domain == "mesh-client", "wrong role"};
  });
  Server nodePort(ctx, "mesh-node");
  Server clientPort(ctx, "mesh-client");
  CHECK(connectWith(ctx, clientPort, client) == HandshakeResult::kSucceeded);
  CHECK(connectWith(ctx, nodePort, client) == HandshakeResult::kRefused);
}

TEST_CASE("without a ZAP handler a server socket refuses everyone") {
  auto ctx = transport::makeContext();
  Server server(ctx);
  CHECK(connectWith(ctx, server, crypto::KeyPair::generate()) != HandshakeResult::kSucceeded);
}

TEST_CASE("the probe key goes through the authorizer, flagged as the probe") {
  auto ctx = transport::makeContext();
  std::atomic<int> probes{0};
  transport::ZapHandler zap(ctx, [&](const transport::ZapRequest& r) {
    if (r.probe) ++probes;
    return transport::ZapVerdict{false, "unknown key"};
  });
  Server server(ctx);
  CHECK(transport::probeWithKey(ctx, server.endpoint, server.keys.publicKey, zap.probeKeys(),
                                zmq::socket_type::dealer, 3000) == HandshakeResult::kRefused);
  CHECK(probes == 1);
}

TEST_CASE("a probe against an authorizer that admits everyone gets in, which the self-check catches") {
  auto ctx = transport::makeContext();
  transport::ZapHandler zap(ctx, [](const transport::ZapRequest&) { return transport::ZapVerdict{true, ""}; });
  Server server(ctx);
  CHECK(transport::probeWithKey(ctx, server.endpoint, server.keys.publicKey, zap.probeKeys(),
                                zmq::socket_type::dealer, 3000) == HandshakeResult::kSucceeded);
}

TEST_CASE("bound endpoints are reported as they can be connected to, IPv4 and IPv6") {
  auto ctx = transport::makeContext();
  zmq::socket_t a = transport::makeClientSocket(ctx, zmq::socket_type::dealer, crypto::KeyPair::generate(),
                                                crypto::KeyPair::generate().publicKey, {});
  auto v4 = transport::bindSocket(a, "tcp://127.0.0.1:*");
  REQUIRE(v4.ok());
  CHECK(v4->rfind("tcp://127.0.0.1:", 0) == 0);
  zmq::socket_t b = transport::makeClientSocket(ctx, zmq::socket_type::dealer, crypto::KeyPair::generate(),
                                                crypto::KeyPair::generate().publicKey, {});
  auto v6 = transport::bindSocket(b, "tcp://[::1]:*");
  REQUIRE(v6.ok());
  CHECK(v6->rfind("tcp://[::1]:", 0) == 0);
  CHECK_FALSE(transport::bindSocket(b, "tcp://999.1.1.1:1").ok());
}

TEST_CASE("an authorizer that throws refuses the peer") {
  auto ctx = transport::makeContext();
  transport::ZapHandler zap(ctx, [](const transport::ZapRequest&) -> transport::ZapVerdict {
    throw std::runtime_error("database gone");
  });
  Server server(ctx);
  CHECK(connectWith(ctx, server, crypto::KeyPair::generate()) == HandshakeResult::kRefused);
}

TEST_CASE("the User-Id of a received body frame is the sender's public key") {
  auto ctx = transport::makeContext();
  auto client = crypto::KeyPair::generate();
  transport::ZapHandler zap(ctx, [](const transport::ZapRequest&) { return transport::ZapVerdict{true, ""}; });
  Server server(ctx);
  zmq::socket_t dealer;
  REQUIRE(connectWith(ctx, server, client, &dealer) == HandshakeResult::kSucceeded);
  dealer.send(zmq::str_buffer("hello"), zmq::send_flags::none);
  server.socket.set(zmq::sockopt::rcvtimeo, 3000);
  zmq::message_t routing, body;
  REQUIRE(server.socket.recv(routing));
  REQUIRE(server.socket.recv(body));
  CHECK(body.to_string() == "hello");
  CHECK(transport::userId(body) == client.publicKey.z85());
}

TEST_CASE("a context is made with the I/O threads asked for, at least one") {
  auto two = transport::makeContext(2);
  CHECK(zmq_ctx_get(two.handle(), ZMQ_IO_THREADS) == 2);
  auto fallback = transport::makeContext(0);
  CHECK(zmq_ctx_get(fallback.handle(), ZMQ_IO_THREADS) == 1);
}

// ---- Poller ---------------------------------------------------------------------------------

namespace {
struct Pair {
  zmq::context_t ctx{1};
  zmq::socket_t a{ctx, zmq::socket_type::pair};
  zmq::socket_t b{ctx, zmq::socket_type::pair};
  Pair() {
    static std::atomic<int> seq{0};
    std::string ep = "inproc://poller-test-" + std::to_string(seq++);
    a.bind(ep);
    b.connect(ep);
  }
};

double msSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// A pair's socket `b` and an eventfd `fd`, both watched by `poller` (entries `sock` and `efd`),
// after a first wait that found nothing.
struct SocketAndFd {
  Pair p;
  int fd = eventfd(0, EFD_NONBLOCK);
  transport::Poller poller;
  std::size_t sock = poller.add(p.b);
  std::size_t efd = poller.addFd(fd);
  SocketAndFd() {
    REQUIRE(fd >= 0);
    CHECK(poller.wait(0) == 0);
  }
  ~SocketAndFd() { ::close(fd); }
};

// Reads the socket empty, as a loop following the Poller's contract does.
int drain(zmq::socket_t& s, transport::Poller& poller, std::size_t index) {
  int n = 0;
  zmq::message_t m;
  while (s.recv(m, zmq::recv_flags::dontwait)) ++n;
  poller.drained(index);
  return n;
}
}  // namespace

TEST_CASE("the poller reports a socket with a message, and sleeps until its timeout without one") {
  Pair p;
  transport::Poller poller;
  auto b = poller.add(p.b);
  p.a.send(zmq::str_buffer("one"));
  REQUIRE(poller.wait(2000) == 1);
  CHECK(poller.ready(b));
  CHECK(drain(p.b, poller, b) == 1);
  auto t0 = std::chrono::steady_clock::now();
  CHECK(poller.wait(60) == 0);
  CHECK_FALSE(poller.ready(b));
  CHECK(msSince(t0) >= 50);
}

TEST_CASE("a clean socket is not asked: its fd wakes the poller when a message comes") {
  Pair p;
  transport::Poller poller;
  auto b = poller.add(p.b);
  CHECK(poller.wait(0) == 0);  // the new entry is asked once and found empty
  auto asks = poller.asks();
  std::thread sender([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    p.a.send(zmq::str_buffer("late"));
  });
  auto t0 = std::chrono::steady_clock::now();
  int ready = poller.wait(5000);
  sender.join();
  CHECK(ready == 1);
  CHECK(msSince(t0) < 4000);
  CHECK(poller.asks() == asks);  // woken by the fd alone
  CHECK(drain(p.b, poller, b) == 1);
}

TEST_CASE("a socket used after it was drained is asked again, so a message its fd no longer signals is seen") {
  Pair p;
  transport::Poller poller;
  auto b = poller.add(p.b);
  CHECK(poller.wait(0) == 0);
  p.a.send(zmq::str_buffer("hidden"));
  // Another use of the socket (here an option read; in a loop, a send) takes in the command that
  // announced the message: the fd stops being readable though a message waits.
  (void)p.b.get(zmq::sockopt::events);
  CHECK(poller.wait(50) == 0);  // the Poller was not told: it trusts the fd (the contract matters)
  poller.touched(p.b);
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(poller.wait(5000) == 1);
  CHECK(poller.ready(b));
  CHECK(msSince(t0) < 1000);
  CHECK(drain(p.b, poller, b) == 1);
  // The same, told by index.
  p.a.send(zmq::str_buffer("hidden again"));
  (void)p.b.get(zmq::sockopt::events);
  poller.touched(b);
  REQUIRE(poller.wait(5000) == 1);
  CHECK(drain(p.b, poller, b) == 1);
}

TEST_CASE("a socket read only in part stays ready until it is read empty") {
  Pair p;
  transport::Poller poller;
  auto b = poller.add(p.b);
  for (int i = 0; i < 3; ++i) p.a.send(zmq::str_buffer("x"));
  REQUIRE(poller.wait(2000) == 1);
  zmq::message_t m;
  REQUIRE(p.b.recv(m, zmq::recv_flags::dontwait));  // one of three; drained() not called
  CHECK(poller.wait(2000) == 1);
  CHECK(drain(p.b, poller, b) == 2);
  CHECK(poller.wait(0) == 0);
}

TEST_CASE("the poller watches plain file descriptors beside sockets") {
  SocketAndFd w;
  auto& [p, fd, poller, b, f] = w;
  std::uint64_t one = 1;
  REQUIRE(::write(fd, &one, sizeof one) == sizeof one);
  REQUIRE(poller.wait(2000) == 1);
  CHECK(poller.ready(f));
  CHECK_FALSE(poller.ready(b));
  CHECK(poller.wait(0) == 1);  // level-triggered until read
  REQUIRE(::read(fd, &one, sizeof one) == sizeof one);
  CHECK(poller.wait(0) == 0);
  poller.reset();
  CHECK(poller.size() == 0);
}

TEST_CASE("a paused entry is never ready; what came meanwhile is reported once it is resumed") {
  SocketAndFd w;
  auto& [p, fd, poller, b, f] = w;
  poller.pause(b, true);
  poller.pause(f, true);
  CHECK(poller.paused(b));
  CHECK(poller.paused(f));
  p.a.send(zmq::str_buffer("while paused"));
  std::uint64_t one = 1;
  REQUIRE(::write(fd, &one, sizeof one) == sizeof one);
  auto t0 = std::chrono::steady_clock::now();
  CHECK(poller.wait(60) == 0);  // neither wakes it: it sleeps its whole timeout
  CHECK(msSince(t0) >= 50);
  CHECK_FALSE(poller.ready(b));
  CHECK_FALSE(poller.ready(f));
  // Another use of the paused socket meanwhile (a send: the nexus's heartbeats) may take in the
  // command that announced the message, so its fd no longer signals it: resuming asks the socket
  // even when the loop did not say touched().
  (void)p.b.get(zmq::sockopt::events);
  poller.pause(b, false);
  poller.pause(b, false);  // twice: no harm
  REQUIRE(poller.wait(2000) == 1);
  CHECK(poller.ready(b));
  CHECK_FALSE(poller.ready(f));
  CHECK(drain(p.b, poller, b) == 1);
  poller.pause(f, false);
  REQUIRE(poller.wait(2000) == 1);
  CHECK(poller.ready(f));
  REQUIRE(::read(fd, &one, sizeof one) == sizeof one);
  CHECK(poller.wait(0) == 0);
  // Paused while ready: no longer ready.
  p.a.send(zmq::str_buffer("again"));
  REQUIRE(poller.wait(2000) == 1);
  poller.pause(b, true);
  CHECK_FALSE(poller.ready(b));
  poller.pause(b, false);
  REQUIRE(poller.wait(2000) == 1);
  CHECK(drain(p.b, poller, b) == 1);
}

TEST_CASE("RefusalGate records and logs made-up keys up to its limits per window, each key once") {
  RefusalGate gate({1000, 3, 2, 100});
  auto a = gate.admit("a", 0);
  CHECK(a.record);
  CHECK(a.log);
  CHECK_FALSE(gate.admit("a", 10).record);  // the same key again in the window
  auto b = gate.admit("b", 20);
  CHECK(b.record);
  CHECK(b.log);
  auto c = gate.admit("c", 30);
  CHECK(c.record);
  CHECK_FALSE(c.log);  // over the line limit
  CHECK_FALSE(gate.admit("d", 40).record);  // over the write limit
  CHECK(gate.unrecorded() == 2);
  CHECK(gate.takeUnlogged() == 3);
  CHECK(gate.takeUnlogged() == 0);
  // A new window: the limits start again, and "a" may be recorded once more.
  CHECK(gate.admit("a", 1000).log);
  CHECK(gate.admit("d", 1001).record);
}
