// The spore: set-up, the connection to the nexus and its messages, the loop, and the public
// Spore. The workers are in spore_work.cpp, bundles in spore_bundles.cpp (see spore_impl.h).
#include "mesh/node/spore_impl.h"

#include <random>

namespace mesh::node {

std::uint64_t SporeImpl::drawInstance() {
  std::random_device rd;
  std::uint64_t v = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  return v == 0 ? 1 : v;
}

// ---- set-up ----------------------------------------------------------------------------------

util::Status SporeImpl::start() {
  heartbeatMs_ = config_.heartbeatMs;
  missedBeats_ = config_.missedBeats;
  if (mkdir(config_.dataDir.c_str(), 0700) != 0 && errno != EEXIST) {
    return util::err("cannot create data dir " + config_.dataDir + ": " + std::strerror(errno));
  }
  auto lock = util::lockDir(config_.dataDir, "spore");
  if (!lock) return lock.error();
  dataDirLock_ = std::move(*lock);
  // A --nexus-key that cannot be read is a mistake in the config (exit 2: not restarted), found
  // before a key pair is made.
  auto nexusKey = crypto::loadPublicKey(config_.nexusKey);
  if (!nexusKey) return util::err("--nexus-key: " + nexusKey.error().message, 2);
  nexusKey_ = *nexusKey;
  if (access(config_.keyFile.c_str(), F_OK) != 0) {
    if (auto s = crypto::saveKeyPair(config_.keyFile, crypto::KeyPair::generate()); !s) return s;
    MESH_INFO("generated this spore's key pair in %s", config_.keyFile.c_str());
  }
  auto keys = crypto::loadKeyPair(config_.keyFile);
  if (!keys) return keys.error();
  keys_ = std::move(*keys);
  MESH_INFO("spore %s key %s", config_.name.c_str(), keys_.publicKey.fingerprint().c_str());
  std::string work = config_.dataDir + "/work";
  if (mkdir(work.c_str(), 0700) != 0 && errno != EEXIST) {
    return util::err("cannot create " + work + ": " + std::strerror(errno));
  }
  programSettings_.workParent = work;
  programSettings_.limits.maxStdoutBytes = config_.maxOutputBytes;
  programSettings_.limits.maxStderrBytes = config_.maxStderrBytes;
  programSettings_.limits.cpuSeconds = config_.cpuSeconds;
  programSettings_.limits.addressSpaceBytes = config_.memoryBytes;
  programSettings_.limits.openFiles = config_.openFiles;
  programSettings_.limits.killGraceMs = config_.killGraceMs;
  if (auto s = openBundles(); !s) return s;
  endpoints_ = config_.nexus;
  if (endpoints_.empty()) {
    discovery::BeaconListenerOptions opts;
    opts.cluster = config_.cluster;
    discovery::CurvePublicKey raw;
    std::memcpy(raw.data(), nexusKey_.bytes().data(), 32);
    opts.pinnedKeys.push_back(raw);
    opts.port = config_.beaconPort;
    opts.interfaces = config_.interfaces;
    auto listener = discovery::BeaconListener::open(opts, counters_);
    if (!listener) return util::err("no --nexus given and cannot listen for beacons: " + listener.error().message);
    beacons_ = std::make_unique<discovery::BeaconListener>(std::move(*listener));
    foundBy_ = "beacon";
    MESH_INFO("no --nexus given: listening for beacons of cluster '%s' on UDP port %u", config_.cluster.c_str(),
              beacons_->port());
  }
  for (unsigned i = 0; i < config_.slots; ++i) {
    std::string endpoint = "inproc://spore-worker-" + std::to_string(reinterpret_cast<std::uintptr_t>(this)) + "-" +
                           std::to_string(i);
    zmq::socket_t pipe(ctx_, zmq::socket_type::pair);
    pipe.set(zmq::sockopt::sndhwm, 0);
    pipe.set(zmq::sockopt::rcvhwm, 0);
    pipe.bind(endpoint);
    pipes_.push_back(std::move(pipe));
    workers_.emplace_back();
    threads_.emplace_back([this, i, endpoint] { workerLoop(i, endpoint); });
  }
  return {};
}

SporeImpl::~SporeImpl() {
  stopBundleWorker();  // an install in progress stops before its next file (its spool is kept)
  for (auto& jobEntry : jobs_) jobEntry.second.shared->cancel.store(true);
  for (auto& pipe : pipes_) sendStop<WorkBatch>(pipe);
  for (auto& t : threads_) t.join();
  for (auto& pipe : pipes_) {
    zmq::message_t m;
    while (pipe.recv(m, zmq::recv_flags::dontwait)) takePointer<DoneBatch>(m);
  }
  exec::strays::sweep();  // every run has ended: nothing a handler started stays behind
}

// ---- connection ------------------------------------------------------------------------------

void SporeImpl::connect(std::int64_t now) {
  if (endpoints_.empty()) return;  // waiting for a beacon
  ++socketsChanged_;
  endpoint_ = endpoints_[nextEndpoint_ % endpoints_.size()];
  ++nextEndpoint_;
  transport::SocketLimits limits;
  limits.maxMessageBytes = static_cast<std::int64_t>(config_.maxFrameBytes);
  limits.lingerMs = 0;
  limits.sendHwm = 100000;
  limits.recvHwm = 100000;
  dealer_ = transport::makeClientSocket(ctx_, zmq::socket_type::dealer, keys_, nexusKey_, limits);
  watch_ = std::make_unique<transport::HandshakeWatch>(ctx_, dealer_);
  try {
    dealer_.connect(endpoint_);
  } catch (const zmq::error_t& e) {
    MESH_WARN("cannot connect to %s: %s", endpoint_.c_str(), e.what());
    watch_.reset();
    dealer_.close();
    reconnectAtMono_ = now + backoffMs_;
    backoffMs_ = std::min<std::int64_t>(backoffMs_ * 2, 32000);
    return;
  }
  connected_ = true;
  welcomed_ = false;
  lastHeardMono_ = now;
  MESH_INFO("connecting to nexus %s", endpoint_.c_str());
  sendHello();
}

void SporeImpl::disconnect(bool stopping) {
  ++socketsChanged_;
  // A closed socket drops what it still held: sent again after the next welcome (not at the
  // stop, where nothing is sent again and counting them as resent would mislead).
  if (!stopping) resendLately();
  watch_.reset();
  if (events_) events_.close();
  if (connected_) dealer_.close();
  connected_ = false;
  welcomed_ = false;
  handBackUnsent_.clear();  // not named in the next hello: the nexus re-queues them
}

void SporeImpl::sendHello() {
  wire::Encoder e(0, 256);
  auto h = e.body().initHello();
  h.setName(config_.name);
  h.setSoftwareVersion(kSoftwareVersion);
  h.setSlots(static_cast<std::uint16_t>(config_.slots));
  auto tags = h.initTags(static_cast<unsigned>(config_.tags.size()));
  for (unsigned i = 0; i < config_.tags.size(); ++i) tags.set(i, config_.tags[i]);
  auto names = registry_.snapshot()->names();
  auto handlers = h.initHandlers(static_cast<unsigned>(names.size()));
  for (unsigned i = 0; i < names.size(); ++i) handlers.set(i, names[i]);
  // A job being cancelled (its handler still dying) is not listed: its result will not be
  // sent, so the nexus must not adopt it (it would wait for the task's deadline).
  std::size_t live = 0;
  for (const auto& [id, job] : jobs_) live += job.shared->cancel.load() ? 0 : 1;
  unsigned held = static_cast<unsigned>(std::min(live, kHelloTasksMax));
  auto running = h.initRunning(held);
  auto attempts = h.initRunningAttempts(held);
  unsigned i = 0;
  for (const auto& [id, job] : jobs_) {
    if (i == held) break;
    if (job.shared->cancel.load()) continue;
    running.set(i, id);
    attempts.set(i, job.attempt);
    ++i;
  }
  // The results waiting to be sent after the welcome: their tasks may be unknown to this nexus
  // as ours (it restarted, or gave them up), and it takes their results only from a spore that
  // held them or names them here.
  auto done = h.initDone(static_cast<unsigned>(std::min(outbox_.size(), kHelloTasksMax)));
  for (unsigned d = 0; d < done.size(); ++d) done.set(d, outbox_[d].id);
  lastHelloMono_ = clock_.monotonicMs();
  h.setAdvertise(config_.advertise);
  h.setFoundBy(foundBy_);
  h.setPid(static_cast<std::uint32_t>(getpid()));
  h.setInstance(instance_);
  send(e.finish());
}

bool SporeImpl::send(zmq::message_t&& frame) {
  if (!connected_) return false;
  try {
    poller_.touched(dealer_);
    return dealer_.send(std::move(frame), zmq::send_flags::dontwait).has_value();
  } catch (const zmq::error_t&) {
    return false;
  }
}

void SporeImpl::onBeacons() {
  for (auto& s : beacons_->drain()) {
    if (std::find(endpoints_.begin(), endpoints_.end(), s.endpoint) == endpoints_.end()) {
      MESH_INFO("beacon: nexus of cluster '%s' at %s", s.beacon.cluster.c_str(), s.endpoint.c_str());
      endpoints_.insert(endpoints_.begin(), s.endpoint);
      if (endpoints_.size() > 4) endpoints_.pop_back();
      nextEndpoint_ = 0;
      if (!connected_) reconnectAtMono_ = 0;
    }
  }
}

// ---- messages --------------------------------------------------------------------------------

void SporeImpl::onNexusMessage(zmq::message_t& frame) {
  auto decoded = wire::decode(std::move(frame), limits_);
  if (!decoded) {
    counters_.add("bad_frames");
    MESH_WARN("dropped a bad frame from the nexus: %s", decoded.error().message.c_str());
    return;
  }
  lastHeardMono_ = clock_.monotonicMs();
  auto body = decoded->envelope().getBody();
  switch (decoded->which()) {
    case Which::WELCOME: {
      auto w = body.getWelcome();
      welcomed_ = true;
      backoffMs_ = 1000;
      if (w.getHeartbeatMs() >= 50) heartbeatMs_ = w.getHeartbeatMs();
      if (w.getMissedBeats() >= 1) missedBeats_ = w.getMissedBeats();
      nextHeartbeat_ = 0;  // beat now, then at the nexus's interval
      for (auto& jobEntry : jobs_) jobEntry.second.startSent = false;  // it may be a new nexus run
      MESH_INFO("welcomed by nexus %s at %s", std::string(wire::view(w.getNexusName())).c_str(), endpoint_.c_str());
      if (w.getEventsPort() != 0 && !events_) {
        auto colon = endpoint_.rfind(':');
        std::string eventsEndpoint = endpoint_.substr(0, colon + 1) + std::to_string(w.getEventsPort());
        transport::SocketLimits limits;
        limits.lingerMs = 0;
        events_ = transport::makeClientSocket(ctx_, zmq::socket_type::sub, keys_, nexusKey_, limits);
        ++socketsChanged_;
        events_.set(zmq::sockopt::subscribe, "");
        events_.connect(eventsEndpoint);
      }
      flushResults();
      if (leaving_) sendLeaving(false);  // a new nexus run: it must know too (with what is left to give back)
      if (installer_) {
        if (fetch_) {
          // A new connection: what was in flight on the old one is lost; resume from the spool.
          fetch_->outstanding = 0;
          fetch_->requested = fetch_->rx->offset();
          fetch_->lastMono = clock_.monotonicMs();
          pumpFetch();
        }
        onBundleOffers(w.getBundles());
        reportBundleState();
      }
      break;
    }
    case Which::HEARTBEAT:
    case Which::LEFT_ACK:  // finishLeaving() waits for it; one arriving here is late
      break;
    case Which::BUNDLE_LIST:
      if (installer_) onBundleOffers(body.getBundleList());
      break;
    case Which::BUNDLE_CHUNK:
      if (installer_) onBundleChunk(body.getBundleChunk());
      break;
    case Which::ASSIGN:
      onAssign(body.getAssign());
      break;
    case Which::CANCEL_TASKS:
      onCancel(body.getCancelTasks());
      break;
    case Which::RECALL:
      onRecall(body.getRecall());
      break;
    case Which::ERROR: {
      auto e = body.getError();
      std::string message(wire::view(e.getMessage()));
      std::int64_t now = clock_.monotonicMs();
      if (e.getCode() == proto::Error::Code::HELLO_FIRST) {
        // The nexus does not know this connection (it restarted, or declared us lost): what we
        // sent lately may have been refused, so it goes again after the welcome, and nothing
        // is sent before it. Several messages may be refused at once: one hello answers them all.
        welcomed_ = false;
        resendLately();
        if (now - lastHelloMono_ >= 1000) {
          counters_.add("rehello");
          sendHello();
        }
      } else if (e.getCode() == proto::Error::Code::KEY_IN_USE) {
        // Another spore is connected with this key (a copied data dir): retry with backoff,
        // first after two heartbeats, so that a live holder has beaten meanwhile and a dead one
        // (this spore before a restart) has not, and the nexus replaces it.
        std::int64_t delay = std::max(backoffMs_, 2 * heartbeatMs_);
        counters_.add("key_in_use");
        MESH_ERROR("nexus %s refused this spore's hello: %s; retrying in %lld ms", endpoint_.c_str(),
                   bundle::printable(message, 300).c_str(), static_cast<long long>(delay));
        disconnect();
        reconnectAtMono_ = now + delay;
        backoffMs_ = std::min<std::int64_t>(backoffMs_ * 2, 32000);
      } else if (e.getCode() == proto::Error::Code::FORBIDDEN) {
        MESH_ERROR("nexus %s no longer accepts this spore's key %s (%s): reconnecting in %lld ms",
                   endpoint_.c_str(), keys_.publicKey.fingerprint().c_str(), message.c_str(),
                   static_cast<long long>(backoffMs_));
        disconnect();
        reconnectAtMono_ = now + backoffMs_;
        backoffMs_ = std::min<std::int64_t>(backoffMs_ * 2, 32000);
      } else {
        MESH_WARN("nexus says: %s", message.c_str());
      }
      break;
    }
    default:
      counters_.add("unknown_messages");
      MESH_WARN("dropped a message of unknown kind %u from the nexus", static_cast<unsigned>(decoded->which()));
  }
}

void SporeImpl::heartbeat(std::int64_t now) {
  nextHeartbeat_ = now + heartbeatMs_;
  if (!connected_) return;
  wire::Encoder e(0, 32);
  auto hb = e.body().initHeartbeat();
  hb.setCpuPct(static_cast<float>(load_.cpuPct()));
  hb.setMemPct(static_cast<float>(LoadMeter::memPct()));
  hb.setRunning(running_);
  hb.setFreeSlots(running_ >= config_.slots ? 0 : config_.slots - running_);
  // The starts the nexus has not heard of on this connection, of jobs still running here (a
  // short task's start goes with its result instead).
  std::vector<std::pair<std::uint64_t, JobRef*>> starts;
  for (auto& [id, job] : jobs_) {
    if (starts.size() == kHeartbeatStartsMax) break;
    if (job.startSent || job.shared->cancel.load() || job.shared->startedMs.load(std::memory_order_relaxed) == 0) continue;
    starts.emplace_back(id, &job);
  }
  auto list = hb.initStarted(static_cast<unsigned>(starts.size()));
  for (unsigned i = 0; i < starts.size(); ++i) {
    auto& [id, job] = starts[i];
    list[i].setId(id);
    list[i].setAttempt(job->attempt);
    list[i].setStartedMs(job->shared->startedMs.load(std::memory_order_relaxed));
  }
  if (send(e.finish())) {
    for (auto& [id, job] : starts) job->startSent = true;  // a beat not sent: they go with the next
  }
}

// ---- the loop --------------------------------------------------------------------------------

void SporeImpl::watchPoller() {
  if (socketsPolled_ == socketsChanged_) return;
  socketsPolled_ = socketsChanged_;
  poller_.reset();
  polled_ = PollerLayout{};
  for (auto& p : pipes_) poller_.add(p);
  if (bundlePipe_) polled_.bundleAt = poller_.add(bundlePipe_);
  if (connected_) polled_.dealerAt = poller_.add(dealer_);
  if (events_) polled_.eventsAt = poller_.add(events_);
  if (connected_ && watch_) polled_.monitorAt = poller_.add(watch_->socket());
  if (beacons_) polled_.beaconAt = poller_.addFd(beacons_->fd());
}

void SporeImpl::run(const std::atomic<int>& stops) {
  for (;;) {
    std::int64_t now = clock_.monotonicMs();
    if (stops.load() >= 2) {
      MESH_WARN("stopping at once (second signal): %u running tasks go back to the queue when the nexus finds "
                "this spore gone", running_);
      break;
    }
    if (stops.load() == 1 && !leaving_) beginLeaving(now);
    if (leaving_ && (running_ == 0 || now >= leaveDeadlineMono_)) {
      finishLeaving(stops);
      break;
    }
    if (!connected_ && now >= reconnectAtMono_) connect(now);
    watchPoller();
    std::int64_t wake = std::min(nextHeartbeat_, now + 250);
    if (leaving_) wake = std::min(wake, leaveDeadlineMono_);
    // With no candidate yet (waiting for a beacon) there is nothing to reconnect to: the beacon
    // fd wakes the poll, and reconnectAtMono_ (0 at start) must not turn it into a busy loop.
    if (!connected_ && !endpoints_.empty()) wake = std::min(wake, reconnectAtMono_);
    try {
      poller_.wait(std::max<std::int64_t>(0, wake - now));
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
      continue;
    }
    try {
      for (unsigned w = 0; w < pipes_.size(); ++w) {
        if (!poller_.ready(w)) continue;
        zmq::message_t m;
        while (pipes_[w].recv(m, zmq::recv_flags::dontwait)) onWorker(w, m);
        poller_.drained(w);
      }
      if (poller_.ready(polled_.bundleAt)) {
        zmq::message_t m;
        while (bundlePipe_.recv(m, zmq::recv_flags::dontwait)) onBundleDone(takePointer<BundleJobDone>(m));
        poller_.drained(polled_.bundleAt);
      }
      if (poller_.ready(polled_.dealerAt)) {
        bool empty = false;
        for (int i = 0; i < kMaxMessagesPerTurn && connected_; ++i) {
          zmq::message_t m;
          if (!dealer_.recv(m, zmq::recv_flags::dontwait)) {
            empty = true;
            break;
          }
          if (m.more()) {
            counters_.add("bad_frames");
            zmq::message_t rest;
            while (m.more() && dealer_.recv(rest) && rest.more()) {
            }
            continue;
          }
          onNexusMessage(m);
        }
        if (empty) poller_.drained(polled_.dealerAt);
      }
      if (events_ && poller_.ready(polled_.eventsAt)) {
        zmq::message_t m;
        while (events_.recv(m, zmq::recv_flags::dontwait)) {
          auto d = wire::decode(std::move(m), limits_);
          if (!d || d->which() != Which::EVENT) {
            counters_.add("bad_events");
            continue;
          }
          auto ev = d->envelope().getBody().getEvent();
          if (ev.getKind() == proto::Event::Kind::BUNDLE_AVAILABLE) nextBundleCheck_ = 0;  // a hint: ask now
          MESH_DEBUG("event %u batch %llu node %s", static_cast<unsigned>(ev.getKind()),
                     static_cast<unsigned long long>(ev.getBatch()), std::string(wire::view(ev.getNode())).c_str());
        }
        poller_.drained(polled_.eventsAt);
      }
      if (beacons_ && poller_.ready(polled_.beaconAt)) onBeacons();
      std::string handshakeDetail;
      auto handshake = transport::HandshakeResult::kTimedOut;
      if (connected_ && watch_ && poller_.ready(polled_.monitorAt)) {
        handshake = watch_->wait(0, &handshakeDetail);
        if (handshake == transport::HandshakeResult::kTimedOut) poller_.drained(polled_.monitorAt);
      }
      if (handshake == transport::HandshakeResult::kRefused) {
        MESH_ERROR("nexus %s refused this spore's key %s: if the key is new, on the nexus host run `mesh keys "
                   "accept %s --role node --data-dir NEXUS_DATA_DIR`; if it is accepted already, check that %s is the nexus's node port (7700 by default, "
                   "not the client port) and that the key's role is node (`mesh keys list` on the nexus host)",
                   endpoint_.c_str(), keys_.publicKey.fingerprint().c_str(), keys_.publicKey.fingerprint().c_str(),
                   endpoint_.c_str());
      } else if (handshake == transport::HandshakeResult::kFailed) {
        // A wrong pinned key fails the Curve handshake: say so instead of waiting in silence.
        counters_.add("handshake_failures");
        MESH_ERROR("the handshake with nexus %s failed (%s): is --nexus-key the public key of this nexus?",
                   endpoint_.c_str(), handshakeDetail.c_str());
      }
      if (handshake == transport::HandshakeResult::kRefused || handshake == transport::HandshakeResult::kFailed) {
        disconnect();
        reconnectAtMono_ = clock_.monotonicMs() + backoffMs_;
        backoffMs_ = std::min<std::int64_t>(backoffMs_ * 2, 32000);
      }
      now = clock_.monotonicMs();
      if (connected_ && now - lastHeardMono_ > heartbeatMs_ * missedBeats_) {
        MESH_WARN("nexus %s silent for %lld ms%s: reconnecting in %lld ms", endpoint_.c_str(),
                  static_cast<long long>(now - lastHeardMono_),
                  welcomed_ ? "" : " (never answered: not running, not reachable, a host name that does not resolve, or another port?)",
                  static_cast<long long>(backoffMs_));
        counters_.add("nexus_lost");
        disconnect();
        reconnectAtMono_ = now + backoffMs_;
        backoffMs_ = std::min<std::int64_t>(backoffMs_ * 2, 32000);
      }
      if (now >= nextHeartbeat_) heartbeat(now);
      if (now >= nextStraySweep_) {
        exec::strays::sweep();
        nextStraySweep_ = now + kStraySweepEveryMs;
      }
      if (installer_) bundleTimers(now);
      feedWorkers();
      flushResults();
      resendHandBack();
    } catch (const std::exception& e) {
      counters_.add("internal_errors");
      MESH_ERROR("internal error in the spore loop (continuing): %s", e.what());
    } catch (const kj::Exception& e) {
      counters_.add("internal_errors");
      MESH_ERROR("internal error in the spore loop (continuing): %s", e.getDescription().cStr());
    }
  }
  bundleStop_.store(true);  // the loop is done: an install in progress stops (see stopBundleWorker)
  disconnect(true);
  // The spore's own counters (bad frames, duplicates, tasks run on the loop, ...) have no other
  // outlet: say them once, at the stop.
  std::string said;
  for (const auto& [name, value] : counters_.all()) {
    if (value == 0) continue;
    said += (said.empty() ? "" : ", ") + name + "=" + std::to_string(value);
  }
  if (!said.empty()) MESH_INFO("counters: %s", said.c_str());
}

// ---- Spore -----------------------------------------------------------------------------------

util::Result<std::unique_ptr<Spore>> Spore::start(zmq::context_t& ctx, const config::SporeConfig& config,
                                                  exec::HandlerRegistry& registry) {
  auto impl = std::make_unique<SporeImpl>(ctx, config, registry);
  if (auto s = impl->start(); !s) return s.error();
  return std::unique_ptr<Spore>(new Spore(std::move(impl)));
}

Spore::Spore(std::unique_ptr<SporeImpl> impl) : impl_(std::move(impl)) {}
Spore::~Spore() = default;
void Spore::run(const std::atomic<int>& stops) { impl_->run(stops); }

}  // namespace mesh::node
