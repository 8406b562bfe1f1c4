// The nexus's node port: hello, heartbeats, results, welcome, dropping a node.
#include "mesh/node/nexus_impl.h"

#include <cmath>

namespace mesh::node {

// ---- node port -------------------------------------------------------------------------------

void NexusImpl::onNodeMessage(const std::string& routingId, zmq::message_t& body) {
  std::string key = transport::userId(body);
  std::string address = transport::peerAddress(body);
  auto decoded = wire::decode(std::move(body), limits_);
  if (!decoded) {
    counters_.add("bad_frames");
    MESH_WARN("dropped a bad frame from node %s (%s): %s", fingerprintOf(key).c_str(), address.c_str(),
              decoded.error().message.c_str());
    return;
  }
  if (decoded->which() != Which::HEARTBEAT) nodesBusyMono_ = clock_.monotonicMs();  // no rest (nexus_impl.h)
  auto role = roleOf(key);
  if (!role || *role != store::Role::kNode) {
    counters_.add("refused_messages");
    sendTo(nodeSocket_, routingId, wire::encodeError(0, proto::Error::Code::FORBIDDEN, "key not accepted as a node"));
    return;
  }
  auto env = decoded->envelope();
  auto bodyReader = env.getBody();
  auto it = conns_.find(routingId);
  if (decoded->which() == Which::HELLO) {
    onHello(routingId, key, address, bodyReader.getHello());
    return;
  }
  if (it == conns_.end()) {
    // Not (or no longer) known: a spore we declared lost (it was stopped or cut off), or one
    // that has not said hello to this nexus since it restarted. Nothing it sends counts before
    // its hello (results from a connection that is no node could name any task); a spore
    // sends its results again after the welcome, their tasks named in the hello's `done`.
    counters_.add("messages_before_hello");
    if (decoded->which() == Which::RESULTS) {
      counters_.add("results_before_hello");
      if (auto held = nodeLog_.admit("before_hello")) {
        MESH_WARN("refused results from node %s (%s) before its hello%s", fingerprintOf(key).c_str(),
                  address.c_str(), util::heldBack(*held).c_str());
      }
    }
    sendTo(nodeSocket_, routingId, wire::encodeError(0, proto::Error::Code::HELLO_FIRST, "hello first"));
    return;
  }
  NodeConn& conn = it->second;
  if (conn.key != key) {
    // A routing id is not an identity: the key of every message must be the connection's.
    counters_.add("refused_messages");
    MESH_WARN("dropped a message whose key %s does not match its connection's (%s)", fingerprintOf(key).c_str(),
              conn.fingerprint.c_str());
    return;
  }
  conn.lastSeenMono = clock_.monotonicMs();
  switch (decoded->which()) {
    case Which::HEARTBEAT: {
      // The beat counts for liveness (above) whatever it says; its load figures feed the load
      // score only when they are percentages (a NaN would break pickNode's ordering).
      auto hb = bodyReader.getHeartbeat();
      // Starts of its running tasks (for `mesh task`); one for a task that ended meanwhile, or
      // that is not its, is dropped (the check is the scheduler's). A spore sends at most
      // kHeartbeatStartsMax per beat: a longer list is a broken or hostile one, and dropped whole.
      auto started = hb.getStarted();
      if (started.size() > kHeartbeatStartsMax) {
        counters_.add("bad_heartbeats");
        if (auto held = nodeLog_.admit("bad_heartbeat_starts")) {
          MESH_WARN("ignored the %u starts of a heartbeat from node %s (at most %zu)%s", started.size(), conn.name.c_str(),
                    kHeartbeatStartsMax, util::heldBack(*held).c_str());
        }
      } else {
        for (auto s : started) {
          if (!scheduler_.noteStarted(conn.id, s.getId(), s.getAttempt(), s.getStartedMs())) counters_.add("starts_unheld");
        }
      }
      float cpu = hb.getCpuPct(), mem = hb.getMemPct();
      auto percent = [](float v) { return std::isfinite(v) && v >= 0.0f && v <= 100.0f; };
      if (!percent(cpu) || !percent(mem)) {
        counters_.add("bad_heartbeats");
        if (auto held = nodeLog_.admit("bad_heartbeat")) {
          MESH_WARN("ignored the load of a heartbeat from node %s: cpu %g %%, mem %g %% (0-100)%s", conn.name.c_str(),
                    static_cast<double>(cpu), static_cast<double>(mem), util::heldBack(*held).c_str());
        }
        break;
      }
      scheduler_.updateLoad(conn.id, cpu, mem);
      break;
    }
    case Which::RESULTS:
      onResults(conn.id, bodyReader.getResults());
      break;
    case Which::LEAVING:
      onLeaving(conn, bodyReader.getLeaving());
      break;
    case Which::HAND_BACK:
      onHandBack(conn, bodyReader.getHandBack());
      break;
    case Which::BUNDLE_FETCH:
      onBundleFetch(conn, env.getRequestId(), bodyReader.getBundleFetch());
      break;
    case Which::BUNDLE_REPORT:
      onBundleReport(conn, bodyReader.getBundleReport());
      break;
    case Which::BUNDLE_LIST_REQUEST: {
      wire::Encoder e(env.getRequestId(), 256);
      auto list = e.body().initBundleList(static_cast<unsigned>(bundles_.size()));
      unsigned i = 0;
      for (const auto& [name, b] : bundles_) fillBundleRef(list[i++], b);
      sendTo(nodeSocket_, routingId, e.finish());
      break;
    }
    default:
      counters_.add("unknown_messages");
      MESH_WARN("dropped a message of unknown kind %u from node %s", static_cast<unsigned>(decoded->which()),
                conn.name.c_str());
  }
}

void NexusImpl::onResults(routing::NodeId from, proto::Results::Reader message) {
  std::int64_t nowMono = clock_.monotonicMs(), nowWall = clock_.wallMs();
  auto results = message.getResults();
  counters_.add("results_received", results.size());
  const std::uint64_t unassignedBefore = scheduler_.counters().get("results_unassigned");
  std::uint64_t badBundles = 0;
  for (auto r : results) {
    routing::Report rep;
    rep.task = r.getId();
    rep.attempt = r.getAttempt();
    auto st = static_cast<unsigned>(r.getStatus());
    rep.status = st <= static_cast<unsigned>(routing::Status::kQuarantined) ? static_cast<routing::Status>(st)
                                                                            : routing::Status::kFailed;
    rep.output = std::string(wire::view(r.getOutput()));
    rep.error = std::string(wire::view(r.getError()));
    rep.startedMs = r.getStartedMs();
    rep.durationUs = r.getDurationUs();
    if (r.hasBundle()) {
      rep.bundle = std::string(wire::view(r.getBundle()));
      if (bundle::isValidBundleName(rep.bundle) && r.getBundleVersion() > 0) {
        rep.bundleVersion = r.getBundleVersion();
      } else {  // shown to users and stored: only a name a bundle may have
        if (!rep.bundle.empty()) ++badBundles;
        rep.bundle.clear();
      }
    }
    scheduler_.onReport(from, std::move(rep), nowMono, nowWall);
  }
  auto sender = [&] {
    auto c = nodeRoute_.find(from);
    auto conn = c == nodeRoute_.end() ? conns_.end() : conns_.find(c->second);
    return conn == conns_.end() ? std::string("?") : conn->second.name;
  };
  if (badBundles > 0) {
    counters_.add("bad_result_bundles", badBundles);
    if (auto held = nodeLog_.admit("bad_result_bundles")) {
      MESH_WARN("ignored the bundle named by %llu results from node %s (not a bundle name and version)%s",
                static_cast<unsigned long long>(badBundles), sender().c_str(), util::heldBack(*held).c_str());
    }
  }
  auto unassigned = scheduler_.counters().get("results_unassigned") - unassignedBefore;
  if (unassigned > 0) {
    if (auto held = nodeLog_.admit("unassigned")) {
      MESH_WARN("dropped %llu results from node %s for tasks never assigned to it%s",
                static_cast<unsigned long long>(unassigned), sender().c_str(), util::heldBack(*held).c_str());
    }
  }
}

// Reads a hello into plain values, each list once (every read of a Cap'n Proto list counts
// against the message's traversal limit: reading one again per element made a hello with a few
// dozen running ids throw half-way through registering its node), and checks it whole. Returns
// what is wrong with it, or nothing.
std::optional<std::string> NexusImpl::readHello(proto::Hello::Reader hello, HelloFields& out) {
  try {
    out.name = std::string(wire::view(hello.getName()));
    if (out.name.empty() || out.name.size() > 128) return "name of " + std::to_string(out.name.size()) + " bytes (1-128)";
    out.slots = hello.getSlots();
    if (out.slots == 0 || out.slots > 4096) return std::to_string(out.slots) + " slots (1-4096)";
    auto handlers = hello.getHandlers();
    auto tags = hello.getTags();
    auto running = hello.getRunning();
    auto attempts = hello.getRunningAttempts();
    auto done = hello.getDone();
    if (handlers.size() > kHelloHandlersMax) return std::to_string(handlers.size()) + " handlers (at most 10000)";
    if (tags.size() > kHelloTagsMax) return std::to_string(tags.size()) + " tags (at most 256)";
    if (running.size() > kHelloTasksMax) return std::to_string(running.size()) + " running tasks (at most 65536)";
    if (attempts.size() > running.size()) return "more running attempts than running tasks";
    if (done.size() > kHelloTasksMax) return std::to_string(done.size()) + " done tasks (at most 65536)";
    out.foundBy = bundle::printable(wire::view(hello.getFoundBy()), 16);
    out.pid = hello.getPid();
    out.instance = hello.getInstance();
    out.softwareVersion = bundle::printable(wire::view(hello.getSoftwareVersion()), 128);
    out.handlers.reserve(handlers.size());
    for (auto h : handlers) out.handlers.emplace_back(wire::view(h));
    out.tags.reserve(tags.size());
    for (auto t : tags) out.tags.emplace_back(wire::view(t));
    out.running.reserve(running.size());
    for (unsigned i = 0; i < running.size(); ++i) {
      out.running.emplace_back(running[i], i < attempts.size() ? attempts[i] : 0);
    }
    out.done.reserve(done.size());
    for (auto id : done) out.done.push_back(id);
  } catch (const kj::Exception& e) {
    return std::string("unreadable: ") + e.getDescription().cStr();
  }
  return std::nullopt;
}

void NexusImpl::onHello(const std::string& routingId, const std::string& key, const std::string& address,
                        proto::Hello::Reader hello) {
  // Everything is read and checked before anything changes: a bad hello changes nothing.
  HelloFields f;
  if (auto bad = readHello(hello, f)) {
    counters_.add("bad_hellos");
    if (auto held = nodeLog_.admit("bad_hello")) {
      MESH_WARN("refused a malformed hello from node %s: %s%s", fingerprintOf(key).c_str(), bad->c_str(),
                util::heldBack(*held).c_str());
    }
    sendTo(nodeSocket_, routingId, wire::encodeError(0, proto::Error::Code::BAD_REQUEST, "malformed hello: " + *bad));
    return;
  }
  auto keepsHandlers = [&f](const std::vector<std::string>& had) {
    std::unordered_set<std::string> now(f.handlers.begin(), f.handlers.end());
    return std::all_of(had.begin(), had.end(), [&now](const std::string& h) { return now.count(h) > 0; });
  };
  if (auto same = conns_.find(routingId); same != conns_.end() && same->second.key == key &&
                                          same->second.instance == f.instance && keepsHandlers(same->second.handlers)) {
    // The same process on its live connection says hello again: a repeat (several messages were
    // refused at once), or new handlers after a bundle install that kept every handler it had.
    // The node is updated in place; nothing it runs or holds ends. (A hello that drops a handler,
    // after a rollback or a bundle that lost one, registers the node again below: the tasks it
    // holds for that handler go back to the queue uncharged, the others are adopted.)
    NodeConn& c = same->second;
    if (c.handlers == f.handlers && c.tags == f.tags && c.slots == f.slots && c.name == f.name) {
      counters_.add("repeated_hellos");
    } else {
      counters_.add("hellos_updated");
      MESH_INFO("node %s (%s) updated: %zu handlers (was %zu), %u slots", f.name.c_str(), c.fingerprint.c_str(),
                f.handlers.size(), c.handlers.size(), f.slots);
      routing::NodeInfo info;
      info.name = f.name;
      info.slots = f.slots;
      info.tags.insert(f.tags.begin(), f.tags.end());
      info.handlers.insert(f.handlers.begin(), f.handlers.end());
      scheduler_.updateNode(c.id, std::move(info));
      c.name = f.name;
      c.slots = f.slots;
      c.handlers = std::move(f.handlers);
      c.tags = std::move(f.tags);
    }
    c.lastSeenMono = clock_.monotonicMs();
    c.address = address;
    scheduler_.adoptDone(c.id, f.done);
    sendWelcome(routingId);
    return;
  }
  // One connection per key. While the key's connection is alive, a hello from another one is
  // refused: two spores with one key (a copied data dir, a cloned image) would otherwise
  // displace each other for ever. Once the old connection has stayed silent since such a
  // refusal, for longer than a heartbeat, it is presumed dead (the spore restarted) and the
  // retry replaces it: a restarted spore is back within about its retry interval.
  std::int64_t now = clock_.monotonicMs();
  for (auto& [rid, c] : conns_) {
    if (c.key != key || rid == routingId) continue;
    bool alive = now - c.lastSeenMono <= config_.heartbeatMs * config_.missedBeats;
    bool silentSinceRefusal =
        c.keyConflictMono >= 0 && c.lastSeenMono <= c.keyConflictMono && now - c.lastSeenMono > config_.heartbeatMs;
    if (!alive || silentSinceRefusal) continue;
    c.keyConflictMono = now;
    counters_.add("node_key_conflicts");
    if (auto held = nodeLog_.admit("key_conflict:" + key)) {
      MESH_WARN("refused a hello from node %s (%s): key %s is already connected from spore %s at %s; give each "
                "spore its own data dir / key%s",
                f.name.c_str(), address.c_str(), c.fingerprint.c_str(), c.name.c_str(),
                c.address.c_str(), util::heldBack(*held).c_str());
    }
    sendTo(nodeSocket_, routingId,
           wire::encodeError(0, proto::Error::Code::KEY_IN_USE,
                             "key " + c.fingerprint + " is already connected from another spore (" + c.name + " at " +
                                 c.address + "): give each spore its own data dir / key"));
    return;
  }
  // A new hello replaces whatever that key had. For the tasks it still holds (its running and
  // done lists) that is a reconnection, not a failure: they go back to the queue (or are adopted
  // below) without being charged. The others died with the spore's old process (a restart by
  // its supervisor, faster than the nexus declares a silent spore dead): charged, as for a spore
  // that died, so that a task that kills its spore is quarantined however fast it comes back.
  // The same process (the same connection after a bundle install, or the spore's reconnect):
  // an assign still on its way is not in its hello but reaches it or was never taken, so nothing
  // is charged. Another process (its instance differs; for a spore that sends none, its pid):
  // what its hello does not list died with the old one.
  std::vector<std::pair<routing::NodeId, bool>> replaced;  // node, restarted
  for (const auto& [rid, c] : conns_) {
    if (c.key != key && rid != routingId) continue;
    const bool sameProcess = rid == routingId || (f.instance != 0 && c.instance == f.instance) ||
                             (f.instance == 0 && c.instance == 0 && f.pid != 0 && c.pid == f.pid);
    replaced.emplace_back(c.id, !sameProcess);
  }
  if (!replaced.empty()) {
    std::unordered_set<std::uint64_t> stillHeld(f.running.size() + f.done.size());
    for (const auto& [id, attempt] : f.running) stillHeld.insert(id);
    stillHeld.insert(f.done.begin(), f.done.end());
    for (auto [id, restarted] : replaced) dropNode(id, "reconnected", /*nodeFault=*/false, restarted ? &stillHeld : nullptr);
  }
  NodeConn conn;
  conn.routingId = routingId;
  conn.key = key;
  conn.fingerprint = fingerprintOf(key);
  conn.address = address;
  conn.name = f.name;
  conn.foundBy = std::move(f.foundBy);
  conn.softwareVersion = std::move(f.softwareVersion);
  conn.slots = f.slots;
  conn.pid = f.pid;
  conn.instance = f.instance;
  conn.handlers = std::move(f.handlers);
  conn.tags = std::move(f.tags);
  conn.lastSeenMono = clock_.monotonicMs();
  conn.connectedWallMs = clock_.wallMs();
  routing::NodeInfo info;
  info.key = key;
  info.name = f.name;
  info.slots = conn.slots;
  info.tags.insert(conn.tags.begin(), conn.tags.end());
  info.handlers.insert(conn.handlers.begin(), conn.handlers.end());
  // The scheduler's node and its route are made together: a node without a route would hold
  // tasks that are never sent.
  conn.id = scheduler_.addNode(std::move(info));
  nodeRoute_[conn.id] = routingId;
  auto& stored = conns_[routingId] = std::move(conn);
  std::vector<std::uint64_t> behind;
  auto unknown = scheduler_.adoptRunning(stored.id, f.running, clock_.monotonicMs(), clock_.wallMs(), &behind);
  scheduler_.adoptDone(stored.id, f.done);
  // Drained by its key (before a reconnect or a nexus restart): it finishes what it runs, is
  // given nothing, and the next recall check asks back what it has not started.
  bool drained = drained_.count(key) > 0;
  if (drained) scheduler_.setDrained(stored.id, true);
  MESH_INFO("node %s (%s, %u slots, %zu handlers) joined; %zu tasks still running there%s", f.name.c_str(),
            stored.fingerprint.c_str(), stored.slots, stored.handlers.size(), f.running.size() - unknown.size(),
            drained ? "; it is drained (`mesh nodes undrain` gives it work again)" : "");
  // Names are what operators type (`mesh nodes drain NAME`) and read in `mesh task`: two spores
  // with one name (cloned machines, containers: the default is the host name) are told apart
  // only by key. Said at once, not when a drain by name is refused.
  for (const auto& [rid, other] : conns_) {
    if (rid == routingId || other.name != stored.name || other.key == stored.key) continue;
    counters_.add("node_names_shared");
    MESH_WARN("node %s (%s) has the name of connected node %s: give each spore its own --name (the default is the "
              "host name)",
              stored.name.c_str(), stored.fingerprint.c_str(), other.fingerprint.c_str());
    break;
  }
  sendWelcome(routingId);
  if (!unknown.empty()) {
    wire::Encoder cancel(0, 64 + unknown.size());
    auto ids = cancel.body().initCancelTasks().initIds(static_cast<unsigned>(unknown.size()));
    for (unsigned i = 0; i < unknown.size(); ++i) ids.set(i, unknown[i]);
    sendTo(nodeSocket_, routingId, cancel.finish());
  }
  if (!behind.empty()) {
    // It runs them under an attempt the nexus gave up since: assigned again under the nexus's
    // number, the spore reports them under it (it runs them on, not twice: section 4.3).
    std::vector<const routing::Task*> again;
    for (auto id : behind) {
      if (const routing::Task* t = scheduler_.task(id)) again.push_back(t);
    }
    MESH_INFO("node %s runs %zu tasks under an attempt given up since: told their current attempt", f.name.c_str(),
              again.size());
    if (!sendAssign(routingId, again.data(), again.size())) {
      dropNode(stored.id, "cannot send to it");
      return;
    }
  }
  publish(proto::Event::Kind::NODE_JOINED, 0, f.name, "");
}

void NexusImpl::sendWelcome(const std::string& routingId) {
  wire::Encoder welcome(0, 64);
  auto w = welcome.body().initWelcome();
  w.setHeartbeatMs(static_cast<std::uint32_t>(config_.heartbeatMs));
  w.setMissedBeats(static_cast<std::uint8_t>(config_.missedBeats));
  w.setNexusName(config_.name);
  auto colon = eventsEndpoint_.rfind(':');
  w.setEventsPort(static_cast<std::uint16_t>(std::stoi(eventsEndpoint_.substr(colon + 1))));
  auto list = w.initBundles(static_cast<unsigned>(bundles_.size()));
  unsigned i = 0;
  for (const auto& [name, b] : bundles_) fillBundleRef(list[i++], b);
  sendTo(nodeSocket_, routingId, welcome.finish());
}

// A spore that stops: first it is given nothing more and hands back what it has not started;
// at the end (final) it is gone, and what it has not reported goes back to the queue. None of
// it is charged to the tasks (no quarantine, no attempt spent), unlike a spore that goes silent.
void NexusImpl::onLeaving(NodeConn& conn, proto::Leaving::Reader leaving) {
  auto ids = leaving.getGiveBack();
  auto attempts = leaving.getGiveBackAttempts();
  if (attempts.size() != ids.size()) {
    counters_.add("bad_leaving");
    MESH_WARN("dropped a leaving message from node %s: %u tasks but %u attempts", conn.name.c_str(), ids.size(),
              attempts.size());
    return;
  }
  routing::Node* node = scheduler_.node(conn.id);
  if (!node) return;
  std::int64_t nowWall = clock_.wallMs();
  std::size_t back = 0;
  for (unsigned i = 0; i < ids.size(); ++i) back += scheduler_.giveBack(conn.id, ids[i], attempts[i], nowWall) ? 1 : 0;
  if (!node->leaving) {
    scheduler_.setLeaving(conn.id);
    counters_.add("nodes_leaving");
    MESH_INFO("node %s is stopping: it takes no new task, finishes its %u running within %.0f s, and gave back %zu",
              conn.name.c_str(), node->inFlight, leaving.getGraceMs() / 1000.0, back);
  } else if (back > 0) {
    MESH_INFO("node %s (stopping) gave back %zu more tasks", conn.name.c_str(), back);
  }
  if (!leaving.getFinal()) return;
  std::string routingId = conn.routingId, name = conn.name;
  std::uint32_t unfinished = node->inFlight;
  counters_.add("nodes_left");
  MESH_INFO("node %s left (stopped)%s", name.c_str(),
            unfinished ? ("; " + std::to_string(unfinished) + " unfinished tasks go back to the queue").c_str() : "");
  scheduler_.removeNode(conn.id, nowWall, "stopped before its tasks ended", false);
  nodeRoute_.erase(conn.id);
  rememberGone(conn);
  conns_.erase(routingId);  // conn is gone from here on
  publish(proto::Event::Kind::NODE_LOST, 0, name, "stopped");
  wire::Encoder ack(0, 16);
  ack.body().setLeftAck();
  sendTo(nodeSocket_, routingId, ack.finish());
}

// A spore's answer to a recall: the recalled tasks it had not started, back to the queue
// uncharged (as a stopping spore's). Tasks it does not hold under those attempts change nothing
// and are counted (handback_unheld); a malformed one is dropped and counted (bad_handbacks).
void NexusImpl::onHandBack(NodeConn& conn, proto::TaskAttempts::Reader handBack) {
  auto ids = handBack.getIds();
  auto attempts = handBack.getAttempts();
  if (attempts.size() != ids.size() || ids.size() > kHandBackMax) {
    counters_.add("bad_handbacks");
    if (auto held = nodeLog_.admit("bad_handback")) {
      MESH_WARN("dropped a hand-back from node %s: %u tasks and %u attempts (equal, at most %zu)%s", conn.name.c_str(),
                ids.size(), attempts.size(), kHandBackMax, util::heldBack(*held).c_str());
    }
    return;
  }
  std::vector<std::pair<std::uint64_t, std::uint8_t>> tasks;
  tasks.reserve(ids.size());
  for (unsigned i = 0; i < ids.size(); ++i) tasks.emplace_back(ids[i], attempts[i]);
  const std::uint64_t unheldBefore = scheduler_.counters().get("handback_unheld");
  std::size_t back = scheduler_.handBack(conn.id, tasks, clock_.wallMs());
  auto unheld = scheduler_.counters().get("handback_unheld") - unheldBefore;
  if (back > 0) MESH_INFO("node %s handed back %zu recalled tasks it had not started", conn.name.c_str(), back);
  if (unheld > 0) {
    if (auto held = nodeLog_.admit("handback_unheld")) {
      MESH_WARN("node %s handed back %llu tasks it does not hold (ended, re-sent, or never its own): ignored%s",
                conn.name.c_str(), static_cast<unsigned long long>(unheld), util::heldBack(*held).c_str());
    }
  }
}

void NexusImpl::checkRecalls() {
  auto check = scheduler_.recalls(clock_.monotonicMs());
  for (auto id : check.unanswered) {
    auto r = nodeRoute_.find(id);
    auto c = r == nodeRoute_.end() ? conns_.end() : conns_.find(r->second);
    MESH_WARN("node %s did not answer a recall within %lld ms (a spore older than recall?): it is sent no more "
              "recalls; what it holds runs there",
              c == conns_.end() ? "?" : c->second.name.c_str(),
              static_cast<long long>(scheduler_.config().recallAnswerMs));
  }
  for (const auto& r : check.recalls) sendRecall(r);
}

void NexusImpl::sendRecall(const routing::Recall& r) {
  auto route = nodeRoute_.find(r.node);
  if (route == nodeRoute_.end() || r.tasks.empty()) return;
  auto c = conns_.find(route->second);
  std::string name = c == conns_.end() ? "?" : c->second.name;
  wire::Encoder e(0, static_cast<unsigned>(64 + r.tasks.size() * 2));
  auto body = e.body().initRecall();
  auto ids = body.initIds(static_cast<unsigned>(r.tasks.size()));
  auto attempts = body.initAttempts(static_cast<unsigned>(r.tasks.size()));
  for (unsigned i = 0; i < r.tasks.size(); ++i) {
    ids.set(i, r.tasks[i].first);
    attempts.set(i, r.tasks[i].second);
  }
  if (!sendTo(nodeSocket_, route->second, e.finish())) {
    // The node is gone (its tasks go back when it is dropped): nothing to wait for.
    counters_.add("recalls_unsent");
    scheduler_.recallUnsent(r);
    return;
  }
  if (r.drain) {
    MESH_INFO("recalled %zu tasks from node %s (drained): it hands back those it has not started; its running ones "
              "finish there",
              r.tasks.size(), name.c_str());
    return;
  }
  const routing::Task* t = scheduler_.task(r.longTask);
  std::string why = t ? "task " + std::to_string(t->id) + " of batch " + std::to_string(t->batch->id) +
                            " has been in flight there for " +
                            std::to_string((clock_.monotonicMs() - t->frontSinceMono) / 1000) +
                            " s, far past its batch's average of " +
                            std::to_string(static_cast<long long>(t->batch->avgTaskUs / 1000)) + " ms"
                      : "its slots are held by tasks that overran";
  MESH_INFO("recalled %zu tasks from node %s, which may wait there behind long tasks (%s): it hands back those it "
            "has not started",
            r.tasks.size(), name.c_str(), why.c_str());
}

void NexusImpl::rememberGone(const NodeConn& c) {
  if (c.key.empty()) return;
  goneNodes_[c.key] = GoneNode{c.name, c.address, clock_.wallMs()};
}

// With stillHeld (a key's new hello replaces its connection): the tasks it lists end uncharged,
// the others charged (Scheduler::replaceNode).
void NexusImpl::dropNode(routing::NodeId id, const std::string& why, bool nodeFault,
                         const std::unordered_set<std::uint64_t>* stillHeld) {
  auto r = nodeRoute_.find(id);
  if (r == nodeRoute_.end()) return;
  auto c = conns_.find(r->second);
  std::string name = c != conns_.end() ? c->second.name : "?";
  MESH_WARN("node %s lost: %s; its tasks go back to the queue", name.c_str(), why.c_str());
  if (stillHeld) {
    scheduler_.replaceNode(id, clock_.wallMs(), *stillHeld);
  } else {
    scheduler_.removeNode(id, clock_.wallMs(), why, nodeFault);
  }
  if (c != conns_.end()) {
    rememberGone(c->second);
    conns_.erase(c);
  }
  nodeRoute_.erase(r);
  publish(proto::Event::Kind::NODE_LOST, 0, name, why);
}

}  // namespace mesh::node
