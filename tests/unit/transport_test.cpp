#include <doctest/doctest.h>

#include <atomic>
#include <set>

#include "mesh/transport/sockets.h"
#include "mesh/transport/zap.h"

using namespace mesh;
using transport::HandshakeResult;

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
