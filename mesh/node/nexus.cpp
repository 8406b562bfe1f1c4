// The nexus: set-up, recovery and the loop (nexus_impl.h says which file holds the rest).
#include "mesh/node/nexus_impl.h"

namespace mesh::node {

// ---- set-up ----------------------------------------------------------------------------------

util::Status NexusImpl::start() {
  startedMono_ = clock_.monotonicMs();
  if (mkdir(config_.dataDir.c_str(), 0700) != 0 && errno != EEXIST) {
    return util::err("cannot create data dir " + config_.dataDir + ": " + std::strerror(errno));
  }
  auto lock = util::lockDir(config_.dataDir, "nexus");
  if (!lock) return lock.error();
  dataDirLock_ = std::move(*lock);
  std::string keyPath = config_.dataDir + "/nexus.key";
  if (access(keyPath.c_str(), F_OK) != 0) {
    if (auto s = crypto::saveKeyPair(keyPath, crypto::KeyPair::generate()); !s) return s;
    MESH_INFO("generated the nexus key pair in %s (public key in %s.pub)", keyPath.c_str(), keyPath.c_str());
  }
  auto keys = crypto::loadKeyPair(keyPath);
  if (!keys) return keys.error();
  serverKeys_ = std::move(*keys);
  dbPath_ = config_.dataDir + "/nexus.db";
  // Results and small payloads are in the database: files made from here on are the nexus
  // user's only (run by hand, the shell's umask would leave them readable by every user); an
  // existing database others can read is pointed out, not changed (a backup group, say).
  umask(077);
  for (const char* suffix : {"", "-wal", "-shm"}) {
    struct stat st {};
    std::string path = dbPath_ + suffix;
    if (stat(path.c_str(), &st) == 0 && (st.st_mode & S_IROTH) != 0) {
      MESH_WARN("%s is readable by every user of this host (it holds results and payloads): chmod o-rwx %s",
                path.c_str(), path.c_str());
    }
  }
  auto db = store::Db::open(dbPath_);
  if (!db) return db.error();
  readDb_ = std::move(*db);
  payloadReader_ = std::make_unique<store::PayloadReader>(store::PayloadLog::dirFor(dbPath_));
  readStore_ = std::make_unique<store::TaskStore>(readDb_, nullptr, payloadReader_.get());
  if (auto s = openKeys(); !s) return s;
  store::WriterOptions writerOptions;
  writerOptions.keepFinishedMs = config_.keepFinishedMs;
  writerOptions.keepFinishedText = config_.keepFinishedText;
  // Once a minute, or twice per keep duration when that is shorter (but not more than once a second).
  writerOptions.expiryCheckMs = std::clamp<std::int64_t>(config_.keepFinishedMs / 2, 1000, 60'000);
  auto writer = store::StoreWriter::start(ctx_, dbPath_, writerOptions);
  if (!writer) return writer.error();
  writer_ = std::move(*writer);
  if (auto s = openBundles(); !s) return s;
  if (auto s = bindAndCheck(); !s) return s;
  nodeHandshakes_ = std::make_unique<transport::ServerHandshakeWatch>(ctx_, nodeSocket_);
  clientHandshakes_ = std::make_unique<transport::ServerHandshakeWatch>(ctx_, clientSocket_);
  if (auto s = recover(); !s) return s;
  payloadReader_->closeAll();  // recovery is its only reader; keep no deleted segment alive
  std::string endpoints = "node " + nodeEndpoint_ + "\nclient " + clientEndpoint_ + "\nevents " + eventsEndpoint_ + "\n";
  if (auto s = util::writeFileAtomic(config_.dataDir + "/endpoints", endpoints, 0644); !s) return s;
  if (config_.beacon) {
    discovery::Beacon b;
    b.cluster = config_.cluster;
    auto colon = nodeEndpoint_.rfind(':');
    b.nodePort = static_cast<std::uint16_t>(std::stoi(nodeEndpoint_.substr(colon + 1)));
    auto raw = serverKeys_.publicKey.bytes();
    std::memcpy(b.nexusKey.data(), raw.data(), 32);
    b.advertisedHost = config_.advertise;
    discovery::BeaconSenderOptions opts;
    opts.interfaces = config_.beaconInterfaces;
    opts.targets = config_.beaconTargets;
    opts.port = config_.beaconPort;
    auto sender = discovery::BeaconSender::open(b, opts, counters_);
    if (!sender) return sender.error();
    beacon_ = std::make_unique<discovery::BeaconSender>(std::move(*sender));
    MESH_INFO("beacon for cluster '%s' on UDP port %u", config_.cluster.c_str(), config_.beaconPort);
  }
  MESH_INFO("nexus %s serving: nodes %s, clients %s, events %s; key %s", config_.name.c_str(), nodeEndpoint_.c_str(),
            clientEndpoint_.c_str(), eventsEndpoint_.c_str(), serverKeys_.publicKey.fingerprint().c_str());
  return {};
}

util::Status NexusImpl::openKeys() {
  keys_ = std::make_unique<store::KeyStore>(readDb_);
  if (auto s = reloadKeys(); !s) return s;
  auto drained = keys_->drained();
  if (!drained) return drained.error();
  drained_ = std::move(*drained);
  if (!drained_.empty()) MESH_INFO("%zu spores are drained (`mesh nodes` shows them once connected)", drained_.size());
  // The ZAP thread brings its own connection (a Db belongs to one thread).
  struct ZapState {
    std::string path;
    std::optional<store::Db> db;
    std::shared_ptr<transport::RefusalGate> gate;  // made-up keys cannot flood the table or the log
    std::string dataDir;                            // for the hint in the log
  };
  auto state = std::make_shared<ZapState>();
  state->path = dbPath_;
  state->gate = zapGate_;
  {
    char* abs = realpath(config_.dataDir.c_str(), nullptr);
    state->dataDir = abs ? std::string(abs) : config_.dataDir;
    std::free(abs);
  }
  zap_ = std::make_unique<transport::ZapHandler>(ctx_, [state](const transport::ZapRequest& r) {
    if (!state->db) {
      auto db = store::Db::open(state->path);
      if (!db) return transport::ZapVerdict{false, "key database unavailable: " + db.error().message};
      state->db = std::move(*db);
    }
    store::KeyStore keys(*state->db);
    std::string port = portName(r.domain);
    auto found = keys.find(r.key);
    if (!found) return transport::ZapVerdict{false, "key lookup failed: " + found.error().message};
    if (*found && (*found)->state == store::KeyState::kAccepted) {
      store::Role role = (*found)->role;
      bool ok = (r.domain == kNodeDomain && role == store::Role::kNode) ||
                (r.domain == kClientDomain && (role == store::Role::kClient || role == store::Role::kAdmin)) ||
                r.domain == kEventsDomain;
      if (ok) return transport::ZapVerdict{true, ""};
      MESH_WARN("refused key %s (role %s) from %s on the %s port: that role may not use it",
                r.key.fingerprint().c_str(), store::roleName(role), r.address.c_str(), port.c_str());
      return transport::ZapVerdict{false, "role not allowed on this port"};
    }
    if (r.probe) return transport::ZapVerdict{false, "unknown key"};
    bool revoked = *found && (*found)->state == store::KeyState::kRevoked;
    const char* verdict = revoked ? "revoked key" : "unknown key";
    store::Role wanted = r.domain == kClientDomain ? store::Role::kClient : store::Role::kNode;
    auto gate = state->gate->admit(r.key.z85(), util::systemClock().monotonicMs());
    if (!gate.record) return transport::ZapVerdict{false, verdict};
    if (auto s = keys.recordRefusal(r.key, wanted, r.address, util::systemClock().wallMs()); !s) {
      MESH_WARN("could not record refused key %s: %s", r.key.fingerprint().c_str(), s.error().message.c_str());
    }
    if (!gate.log) return transport::ZapVerdict{false, verdict};
    const std::string more = util::heldBack(state->gate->takeUnlogged());
    if (revoked) {
      MESH_WARN("refused revoked key %s from %s on the %s port%s", r.key.fingerprint().c_str(), r.address.c_str(),
                port.c_str(), more.c_str());
    } else {
      // The role follows the port; a spore given the client port by mistake would be let in as a client.
      const bool nodePort = r.domain == kNodeDomain;
      MESH_WARN("refused unknown key %s from %s on the %s port; to let it in: mesh keys accept %s --role %s "
                "--data-dir %s%s%s",
                r.key.fingerprint().c_str(), r.address.c_str(), port.c_str(), r.key.fingerprint().c_str(),
                nodePort ? "node" : "client", state->dataDir.c_str(),
                nodePort ? "" : " (a spore? then it has the client port by mistake: give it the node port)", more.c_str());
    }
    return transport::ZapVerdict{false, verdict};
  });
  return {};
}

util::Status NexusImpl::reloadKeys() {
  auto version = readDb_.dataVersion();
  if (!version) return version.error();
  if (*version == keysVersion_) return {};
  keysVersion_ = *version;
  auto list = keys_->list(store::KeyState::kAccepted);
  if (!list) return list.error();
  std::unordered_map<std::string, store::Role> fresh;
  for (const auto& k : *list) fresh[k.publicKey] = k.role;
  accepted_ = std::move(fresh);
  // A node whose key was revoked (or changed role) is shut out now, not at its next handshake.
  std::vector<routing::NodeId> gone;
  for (const auto& [rid, c] : conns_) {
    auto role = roleOf(c.key);
    if (!role || *role != store::Role::kNode) gone.push_back(c.id);
  }
  for (auto id : gone) dropNode(id, "its key is no longer accepted", /*nodeFault=*/false);
  return {};
}

std::optional<store::Role> NexusImpl::roleOf(const std::string& key) {
  auto it = accepted_.find(key);
  if (it == accepted_.end()) {
    // The ZAP thread admitted this key, so it may have been accepted since the last reload.
    if (auto s = reloadKeys(); !s) MESH_WARN("reloading keys failed: %s", s.error().message.c_str());
    it = accepted_.find(key);
    if (it == accepted_.end()) return std::nullopt;
  }
  return it->second;
}

util::Status NexusImpl::bindAndCheck() {
  transport::SocketLimits limits;
  limits.maxMessageBytes = static_cast<std::int64_t>(config_.maxFrameBytes);
  limits.lingerMs = 100;
  limits.sendHwm = 100000;
  limits.recvHwm = 100000;
  nodeSocket_ = transport::makeServerSocket(ctx_, zmq::socket_type::router, serverKeys_, kNodeDomain, limits);
  clientSocket_ = transport::makeServerSocket(ctx_, zmq::socket_type::router, serverKeys_, kClientDomain, limits);
  eventsSocket_ = transport::makeServerSocket(ctx_, zmq::socket_type::pub, serverKeys_, kEventsDomain, limits);
  if (zmq_ctx_get(ctx_.handle(), ZMQ_IO_THREADS) >= 2) {
    // Spores on the first I/O thread, clients on the second: the Curve work of a submit
    // (decrypting it) and of its dispatch (encrypting it again) then run on two cores. Left to
    // itself libzmq put every connection on the same thread.
    nodeSocket_.set(zmq::sockopt::affinity, std::uint64_t{1});
    clientSocket_.set(zmq::sockopt::affinity, std::uint64_t{2});
  }
  auto n = transport::bindSocket(nodeSocket_, config_.nodeEndpoint);
  if (!n) return n.error();
  auto c = transport::bindSocket(clientSocket_, config_.clientEndpoint);
  if (!c) return c.error();
  auto e = transport::bindSocket(eventsSocket_, config_.eventsEndpoint);
  if (!e) return e.error();
  nodeEndpoint_ = *n;
  clientEndpoint_ = *c;
  eventsEndpoint_ = *e;
  // The self-check: a key nobody accepted must not get in on any port.
  struct Port {
    const std::string& endpoint;
    zmq::socket_type type;
  };
  for (const Port& p : {Port{nodeEndpoint_, zmq::socket_type::dealer}, Port{clientEndpoint_, zmq::socket_type::dealer},
                        Port{eventsEndpoint_, zmq::socket_type::sub}}) {
    auto r = transport::probeWithKey(ctx_, p.endpoint, serverKeys_.publicKey, zap_->probeKeys(), p.type, 3000);
    if (r == transport::HandshakeResult::kSucceeded) {
      return util::err("security self-check failed: an unknown key was admitted on " + p.endpoint +
                       "; refusing to serve (is another process bound to inproc ZAP?)");
    }
    if (r != transport::HandshakeResult::kRefused) {
      return util::err("security self-check could not complete on " + p.endpoint +
                       ": the probe was neither admitted nor refused; refusing to serve");
    }
  }
  MESH_INFO("security self-check passed: an unknown key is refused on all three ports");
  return {};
}

util::Status NexusImpl::recover() {
  auto maxTask = readStore_->maxTaskId();
  if (!maxTask) return maxTask.error();
  auto maxBatch = readStore_->maxBatchId();
  if (!maxBatch) return maxBatch.error();
  durableTaskIdMax_ = *maxTask;
  nextTaskId_ = *maxTask + 1 + kEarlyIdWindow;  // past any id the last run handed out early
  nextBatchId_ = *maxBatch + 1;
  auto batches = readStore_->unfinishedBatches();
  if (!batches) return batches.error();
  for (auto& rec : *batches) {
    routing::BatchSpec spec;
    spec.handler = rec.handler;
    spec.priority = rec.priority;
    spec.requiredTags = rec.requiredTags;
    spec.timeoutMs = rec.timeoutMs;
    spec.maxAttempts = rec.maxAttempts;
    spec.label = rec.label;
    spec.clientKey = rec.clientKey;
    spec.submittedMs = rec.submittedMs;
    spec.mrStage = rec.mrStage;
    spec.mrPartitions = rec.mrPartitions;
    spec.mrCombiner = rec.mrCombiner;
    spec.mrReducer = rec.mrReducer;
    if (!rec.mrCombiner.empty()) spec.alsoNeeds.push_back(rec.mrCombiner);
    spec.retryOf = rec.retryOf.value_or(0);
    spec.after = rec.after;
    spec.afterDone = rec.afterDone;
    routing::Batch& b = scheduler_.addBatch(rec.id, spec);
    b.total = rec.total;
    // Held before its tasks are added, so that none of them takes a turn; judged below.
    b.held = rec.held && !rec.cancelledMs;
    if (rec.cancelledMs && !rec.note.empty()) b.cancelWhy = rec.note;  // cancelled by a dependency
    owners_[rec.id] = rec.clientKey;
  }
  std::uint64_t pending = 0;
  std::vector<store::PendingTask> lost;
  auto s = readStore_->forEachPendingTask([&](store::PendingTask&& t) {
    routing::Batch* b = scheduler_.batch(t.batch);
    if (!b) return;
    if (!t.payloadError.empty()) {
      lost.push_back(std::move(t));  // failed below, once the batch's counts are restored
      return;
    }
    scheduler_.addTask(*b, t.id, t.index, std::move(t.payload), t.attemptsMade, t.nodesLost, t.reconnects);
    ++pending;
  });
  if (!s) return s;
  for (auto& rec : *batches) {
    routing::Batch* b = scheduler_.batch(rec.id);
    auto counts = readStore_->countResults(rec.id);
    if (!counts) return counts.error();
    scheduler_.restoreCounts(*b, counts->succeeded, counts->failed, counts->cancelled);
    if (rec.sealed) scheduler_.seal(*b, rec.total);
    if (rec.cancelledMs && !rec.sealed) {
      // Cancelled while its sealing chunk waited for a commit that failed, by a release that
      // then never sealed it: no more tasks can come, so it ends at the tasks it has.
      MESH_WARN("batch %llu was cancelled but never sealed (its last chunk was not stored): sealed at its %llu tasks",
                static_cast<unsigned long long>(rec.id), static_cast<unsigned long long>(rec.total));
      counters_.add("batches_sealed_at_start");
      store::BatchUpdate u;
      u.batch = rec.id;
      u.total = rec.total;
      u.sealed = true;
      current_->updates.push_back(u);
      scheduler_.seal(*b, rec.total);
    }
    if (rec.cancelledMs) scheduler_.cancel(*b, clock_.wallMs());
  }
  for (auto& t : lost) {
    // Its bytes are gone (a payload segment deleted or cut short): the task fails with the
    // reason instead of running on the wrong input.
    MESH_ERROR("task %llu of batch %llu cannot run again: %s", static_cast<unsigned long long>(t.id),
               static_cast<unsigned long long>(t.batch), t.payloadError.c_str());
    counters_.add("payloads_lost");
    scheduler_.addFailedTask(*scheduler_.batch(t.batch), t.id, t.index, "its payload was lost: " + t.payloadError,
                             clock_.wallMs());
  }
  if (!batches->empty()) {
    MESH_INFO("recovered %zu unfinished batches with %llu tasks to run", batches->size(),
              static_cast<unsigned long long>(pending));
  }
  // Map stages that finished just before a crash, whose reduce stage was never started.
  auto orphans = readStore_->mapStagesWithoutReduce();
  if (!orphans) return orphans.error();
  for (const auto& rec : *orphans) {
    MESH_INFO("starting the reduce stage of job %llu (the nexus stopped before it could)",
              static_cast<unsigned long long>(rec.id));
    startReduce(rec);
  }
  // Held batches (protocol section 4.21): what they waited for may have finished meanwhile.
  std::size_t held = 0;
  for (auto& rec : *batches) {
    routing::Batch* b = scheduler_.batch(rec.id);
    if (!b || !b->held) continue;
    ++held;
    judgeWaiting(rec.id);
  }
  if (held > 0) MESH_INFO("%zu batches were waiting for others: judged again", held);
  collectEffects();
  return {};
}

// ---- the loop --------------------------------------------------------------------------------

void NexusImpl::run(const std::atomic<bool>& stop) {
  poller_.reset();
  const std::size_t nodes = poller_.add(nodeSocket_), clients = poller_.add(clientSocket_),
                    commits = poller_.add(writer_->socket()), nodeShakes = poller_.add(nodeHandshakes_->socket()),
                    clientShakes = poller_.add(clientHandshakes_->socket());
  const std::int64_t restMs = std::max<std::int64_t>(1, std::min(kNodeRestMs, config_.heartbeatMs / 4));
  while (!stop.load()) {
    std::int64_t now = clock_.monotonicMs();
    std::int64_t wake = std::min({nextHeartbeat_, nextProgress_, nextKeyCheck_, now + 250});
    // The node port rests while only heartbeats come and no task is queued or running.
    if (scheduler_.queuedTotal() + scheduler_.runningTotal() > 0) nodesBusyMono_ = now;
    const bool resting = now - nodesBusyMono_ >= kNodeRestAfterMs;
    if (resting && !nodesResting_) counters_.add("node_port_rests");
    nodesResting_ = resting;
    const bool nodesPaused = resting && now < nodesNextReadMono_;
    poller_.pause(nodes, nodesPaused);
    if (nodesPaused) wake = std::min(wake, nodesNextReadMono_);
    if (auto d = scheduler_.nextDeadline()) wake = std::min(wake, *d);
    if (beacon_) wake = std::min(wake, beacon_->sendIfDue());
    std::int64_t timeoutUs = std::max<std::int64_t>(0, wake - now) * 1000;
    if (holdSinceUs_ >= 0) timeoutUs = std::min(timeoutUs, holdLeftUs());
    if (!retryLoads_.empty()) timeoutUs = 0;
    try {
      poller_.waitUs(timeoutUs);
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
      if (e.num() != EINTR) MESH_WARN("poll failed: %s", e.what());
      continue;
    }
    try {
      if (poller_.ready(commits)) {
        onCommits();
        poller_.drained(commits);
      }
      if (poller_.ready(nodes)) {
        if (drainNodes()) poller_.drained(nodes);
        if (resting) nodesNextReadMono_ = clock_.monotonicMs() + restMs;
      }
      if (poller_.ready(clients) && drainClients()) poller_.drained(clients);
      if (poller_.ready(nodeShakes) && onHandshakeFailures(*nodeHandshakes_, "node")) poller_.drained(nodeShakes);
      if (poller_.ready(clientShakes) && onHandshakeFailures(*clientHandshakes_, "client")) {
        poller_.drained(clientShakes);
      }
      loadRetries();
      timers();
      scheduler_.tick(clock_.monotonicMs(), clock_.wallMs());
      dispatch();
      collectEffects();
      flushWrites();
    } catch (const std::exception& e) {
      // A bug, not bad input: log it and keep serving.
      counters_.add("internal_errors");
      MESH_ERROR("internal error in the nexus loop (continuing): %s", e.what());
    } catch (const kj::Exception& e) {
      counters_.add("internal_errors");
      MESH_ERROR("internal error in the nexus loop (continuing): %s", e.getDescription().cStr());
    }
  }
  // Write what is pending before stopping; the writer's destructor drains its queue.
  collectEffects();
  flushWrites(true);
  // What the operator leaves behind: nothing is lost, and it resumes at the next start.
  std::uint64_t queued = scheduler_.queuedTotal(), running = scheduler_.runningTotal();
  if (queued + running > 0) {
    MESH_INFO("stopping with %llu tasks queued and %llu running on %zu spores: they are in nexus.db and resume at "
              "the next start (running ones are adopted from spores that still run them, or run again)",
              static_cast<unsigned long long>(queued), static_cast<unsigned long long>(running), conns_.size());
  } else {
    MESH_INFO("stopping with no task queued or running");
  }
}

bool NexusImpl::onHandshakeFailures(transport::ServerHandshakeWatch& watch, const char* port) {
  auto f = watch.drain();
  // A peer that hangs up mid-handshake (a port check, a scanner) is only counted; one whose
  // handshake does not decrypt is most likely pinned to another nexus key: that is logged.
  if (f.dropped > 0) counters_.add("handshakes_dropped", f.dropped);
  if (f.broken == 0) return !f.more;
  std::size_t n = f.broken;
  const std::string& last = f.last;
  counters_.add("handshakes_failed", n);
  if (auto held = nodeLog_.admit(std::string("handshake_") + port)) {
    MESH_WARN("a Curve handshake failed on the %s port: most likely a spore or client with another nexus's public "
              "key (check its --nexus-key or MESH_NEXUS_KEY against nexus.key.pub in the data dir), or a peer that "
              "does not speak CurveZMQ; libzmq says: %s%s",
              port, last.c_str(), util::heldBack(*held + n - 1).c_str());
  }
  return !f.more;
}

bool NexusImpl::sendTo(zmq::socket_t& socket, const std::string& routingId, zmq::message_t&& body) {
  poller_.touched(socket);
  try {
    if (!socket.send(zmq::buffer(routingId), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) return false;
    return socket.send(std::move(body), zmq::send_flags::dontwait).has_value();
  } catch (const zmq::error_t& e) {
    return false;  // EHOSTUNREACH: the peer is gone
  }
}

void NexusImpl::replyError(const std::string& routingId, std::uint64_t requestId, proto::Error::Code code,
                           const std::string& message) {
  sendTo(clientSocket_, routingId, wire::encodeError(requestId, code, message));
}

// Reads up to a turn's worth of [routing id][body] messages from a ROUTER and hands each to
// `serve`; true when it read the socket empty. A message with a missing body or extra frames is
// dropped and counted (one Envelope per message); `onBad` may answer the sender.
template <typename Serve, typename OnBad>
bool NexusImpl::drainRouter(zmq::socket_t& socket, Serve&& serve, OnBad&& onBad) {
  for (int i = 0; i < kMaxMessagesPerTurn; ++i) {
    zmq::message_t routing, body;
    if (!socket.recv(routing, zmq::recv_flags::dontwait)) return true;
    if (!routing.more()) {
      counters_.add("bad_frames");
      continue;
    }
    (void)socket.recv(body);
    if (body.more()) {
      zmq::message_t extra;
      while (body.more() && socket.recv(extra) && extra.more()) {
      }
      counters_.add("bad_frames");
      onBad(routing.to_string());
      continue;
    }
    serve(routing.to_string(), body);
  }
  return false;  // more may be waiting: the next wait asks
}

bool NexusImpl::drainNodes() {
  return drainRouter(nodeSocket_, [this](const std::string& rid, zmq::message_t& body) { onNodeMessage(rid, body); },
              [](const std::string&) {});
}

bool NexusImpl::drainClients() {
  return drainRouter(clientSocket_, [this](const std::string& rid, zmq::message_t& body) { onClientMessage(rid, body); },
              [this](const std::string& rid) {
                replyError(rid, 0, proto::Error::Code::BAD_REQUEST, "one message per request, please");
              });
}

// ---- Nexus -----------------------------------------------------------------------------------

util::Result<std::unique_ptr<Nexus>> Nexus::start(zmq::context_t& ctx, const config::NexusConfig& config) {
  auto impl = std::make_unique<NexusImpl>(ctx, config);
  if (auto s = impl->start(); !s) return s.error();
  return std::unique_ptr<Nexus>(new Nexus(std::move(impl)));
}

Nexus::Nexus(std::unique_ptr<NexusImpl> impl) : impl_(std::move(impl)) {}
Nexus::~Nexus() = default;
void Nexus::run(const std::atomic<bool>& stop) { impl_->run(stop); }

}  // namespace mesh::node
