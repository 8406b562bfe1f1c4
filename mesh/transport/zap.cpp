#include "mesh/transport/zap.h"

#include <future>
#include <vector>

#include "mesh/transport/sockets.h"
#include "mesh/util/log.h"

namespace mesh::transport {

namespace {
std::atomic<unsigned> gZapSeq{0};
}

ZapHandler::ZapHandler(zmq::context_t& ctx, Authorizer authorizer)
    : ctx_(ctx), authorizer_(std::move(authorizer)), probe_(crypto::KeyPair::generate()) {
  controlEndpoint_ = "inproc://mesh-zap-control-" + std::to_string(gZapSeq++);
  control_ = zmq::socket_t(ctx_, zmq::socket_type::pair);
  control_.bind(controlEndpoint_);
  std::promise<std::string> bound;
  auto ready = bound.get_future();
  thread_ = std::thread([this, &bound] {
    zmq::socket_t rep(ctx_, zmq::socket_type::rep);
    zmq::socket_t control(ctx_, zmq::socket_type::pair);
    try {
      rep.set(zmq::sockopt::linger, 0);
      rep.bind("inproc://zeromq.zap.01");
      control.connect(controlEndpoint_);
    } catch (const zmq::error_t& e) {
      bound.set_value(e.what());
      return;
    }
    bound.set_value("");
    run(std::move(rep), std::move(control));
  });
  std::string failure = ready.get();
  if (!failure.empty()) {
    thread_.join();
    throw std::runtime_error("cannot start the ZAP handler: " + failure);
  }
}

ZapHandler::~ZapHandler() {
  try {
    control_.send(zmq::str_buffer("stop"), zmq::send_flags::none);
  } catch (...) {
  }
  if (thread_.joinable()) thread_.join();
}

void ZapHandler::run(zmq::socket_t rep, zmq::socket_t control) {
  for (;;) {
    zmq::pollitem_t items[] = {{rep.handle(), 0, ZMQ_POLLIN, 0}, {control.handle(), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 2, std::chrono::milliseconds(-1));
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
      continue;
    }
    if (items[1].revents & ZMQ_POLLIN) return;
    if (!(items[0].revents & ZMQ_POLLIN)) continue;
    std::vector<zmq::message_t> frames;
    try {
      for (;;) {
        zmq::message_t m;
        if (!rep.recv(m)) break;
        bool more = m.more();
        frames.push_back(std::move(m));
        if (!more || frames.size() > 16) break;
      }
    } catch (const zmq::error_t&) {
      return;
    }
    // ZAP request: version, request id, domain, address, routing id, mechanism, credentials...
    auto str = [&](size_t i) { return i < frames.size() ? frames[i].to_string() : std::string(); };
    std::string requestId = str(1);
    ZapVerdict verdict;
    std::string userId;
    try {
      if (str(0) != "1.0" || frames.size() < 7) {
        verdict.reason = "malformed ZAP request";
      } else if (str(5) != "CURVE") {
        verdict.reason = "only CURVE is allowed";
      } else {
        auto key = crypto::PublicKey::fromBytes(frames[6].to_string_view());
        if (!key) {
          verdict.reason = "bad client key";
        } else {
          verdict = authorizer_(ZapRequest{str(2), plainAddress(str(3)), *key, *key == probe_.publicKey});
          if (verdict.allow) userId = key->z85();
        }
      }
    } catch (const std::exception& e) {
      // A failing authorizer refuses: never admit on error.
      MESH_ERROR("ZAP authorizer failed, refusing: %s", e.what());
      verdict = ZapVerdict{false, "internal error"};
    }
    (verdict.allow ? admitted_ : refused_)++;
    const char* code = verdict.allow ? "200" : "400";
    std::string text = verdict.allow ? "OK" : verdict.reason;
    try {
      rep.send(zmq::str_buffer("1.0"), zmq::send_flags::sndmore);
      rep.send(zmq::buffer(requestId), zmq::send_flags::sndmore);
      rep.send(zmq::buffer(code, 3), zmq::send_flags::sndmore);
      rep.send(zmq::buffer(text), zmq::send_flags::sndmore);
      rep.send(zmq::buffer(userId), zmq::send_flags::sndmore);
      rep.send(zmq::message_t(), zmq::send_flags::none);
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
      MESH_WARN("ZAP reply failed: %s", e.what());
    }
  }
}

RefusalGate::Decision RefusalGate::admit(const std::string& key, std::int64_t nowMs) {
  if (windowStartMs_ == INT64_MIN || nowMs - windowStartMs_ >= limits_.windowMs) {
    windowStartMs_ = nowMs;
    writes_ = lines_ = 0;
    if (recent_.size() > limits_.recentMax) recent_.clear();
  }
  auto it = recent_.find(key);
  Decision d;
  d.record = (it == recent_.end() || nowMs - it->second >= limits_.windowMs) && writes_ < limits_.writes;
  d.log = d.record && lines_ < limits_.lines;
  if (d.record) {
    recent_[key] = nowMs;  // only recorded keys: one held back may be recorded when there is room
    ++writes_;
  } else {
    ++unrecorded_;
  }
  if (d.log) ++lines_;
  else ++unlogged_;
  return d;
}

}  // namespace mesh::transport
