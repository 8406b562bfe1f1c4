#include "mesh/node/nexus.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <sstream>
#include <optional>
#include <set>
#include <unordered_map>

#include "mesh/bundle/audit.h"
#include "mesh/bundle/fs.h"
#include "mesh/bundle/ledger.h"
#include "mesh/bundle/receiver.h"
#include "mesh/bundle/release_key.h"
#include "mesh/crypto/keys.h"
#include "mesh/discovery/beacon_udp.h"
#include "mesh/exec/mapreduce.h"
#include "mesh/node/common.h"
#include "mesh/routing/scheduler.h"
#include "mesh/store/key_store.h"
#include "mesh/store/task_store.h"
#include "mesh/store/writer.h"
#include "mesh/transport/poller.h"
#include "mesh/transport/sockets.h"
#include "mesh/transport/zap.h"
#include "mesh/util/bytes.h"
#include "mesh/util/clock.h"
#include "mesh/util/counters.h"
#include "mesh/util/log.h"
#include "mesh/util/log_throttle.h"
#include "mesh/wire/codec.h"

namespace mesh::node {

namespace {

constexpr int kMaxMessagesPerTurn = 4096;
constexpr std::uint32_t kResultPageMax = 1000;
constexpr std::size_t kResultPageBytes = 8u << 20;
constexpr std::size_t kAssignFrameBytes = 8u << 20;
constexpr std::uint32_t kMaxTasksPerSubmit = 1'000'000;
constexpr std::int64_t kProgressEveryMs = 250;
constexpr std::int64_t kKeyCheckEveryMs = 1000;
constexpr std::size_t kBundleChunkMax = 1u << 20;      // largest upload chunk and fetch reply
constexpr std::uint64_t kFetchSlackBytes = 16u << 20;  // bundle bytes served past a spore's progress (onBundleFetch)
constexpr std::uint64_t kFetchRestarts = 8;            // fetches of one bundle started again lower, per connection
constexpr std::size_t kMaxUploads = 4;                 // publishes in progress at once
constexpr std::int64_t kUploadIdleMs = 60'000;         // an upload silent this long is dropped
constexpr std::size_t kPublishRefusalsKept = 20;
// The results that ride with a small batch's last Progress (protocol section 4.9).
constexpr std::size_t kInlineRowsMax = 1000;           // per batch: one result page
constexpr std::size_t kInlineBatchBytes = 256u << 10;  // per batch: outputs, errors, node names
constexpr std::size_t kInlineTotalBytes = 16u << 20;   // over every batch held
// Dispatch before commit (protocol section 4.8): a new, sealed, plain batch of at most this many
// tasks goes to the scheduler as it arrives and runs while its submit is being committed.
constexpr std::uint32_t kEarlyDispatchMax = 256;
// Ids handed out before their commit stay at most this far above the highest committed task id,
// and a starting nexus continues this far above the highest stored one: an id that an earlier
// run handed out but never stored is never given to another task (a spore could still hold
// that task's result).
constexpr std::uint64_t kEarlyIdWindow = 4096;

using Which = proto::Envelope::Body::Which;

struct NodeConn {
  routing::NodeId id = routing::kNoNode;
  std::string routingId;
  std::string key;
  std::string fingerprint;
  std::string name, address, foundBy, softwareVersion;
  std::vector<std::string> handlers, tags;
  std::uint16_t slots = 0;
  std::int64_t lastSeenMono = 0;
  std::int64_t connectedWallMs = 0;
  // Bundle fetches of this connection, per bundle name: a spore asks for chunks in order, so
  // the offsets it asks for show how far it has read; what was served beyond that is queued.
  struct Fetch {
    std::uint64_t version = 0;
    std::uint64_t firstOffset = 0, highestOffset = 0, served = 0;
    std::uint64_t servedTotal = 0;  // over restarts
    std::uint32_t restarts = 0;     // requests that went back below the highest offset
    bool refused = false;           // logged once
  };
  std::map<std::string, Fetch> fetches;
};

// A bundle the nexus accepted and serves (the highest version of its name), as listed in
// DATA_DIR/bundles/index.
struct StoredBundle {
  std::string name;
  std::uint64_t version = 0;
  std::uint64_t size = 0;
  std::string manifestSha256;
  std::int64_t publishedMs = 0;
  std::string path;
};

// A publish in progress: chunks stream into a receiver (memory bounded by its head buffer).
struct Upload {
  std::string key;
  std::unique_ptr<bundle::BundleReceiver> rx;
  std::int64_t lastMono = 0;
};

// What one spore last reported about one bundle name.
struct SporeBundle {
  std::string spore, fingerprint;
  std::uint64_t running = 0, version = 0;
  std::string event, reason, message;
  std::uint32_t rollbacks = 0;
};

struct Watcher {
  std::string routingId;
  std::uint64_t requestId = 0;
};

// The final results of a watched batch, kept (while it stays small) until they go out with its
// last Progress, so that a client that waited for it needs no FetchResults round trip.
struct InlineRow {
  std::uint64_t task = 0, index = 0;
  std::uint8_t status = 0, attempts = 0;
  std::string output, error, node;
};
struct InlineResults {
  std::vector<InlineRow> rows;
  std::size_t bytes = 0;
  bool overflow = false;  // too big (or the total budget was spent): the client pages instead
};

// A submit chunk waiting for its commit.
struct PendingSubmit {
  std::string routingId;
  std::uint64_t requestId = 0;
  std::uint64_t batch = 0;
  std::uint64_t firstId = 0, firstIndex = 0;
  std::uint32_t count = 0;
  bool seal = false;
  bool watch = false;
  bool newBatch = false;
  bool early = false;  // its tasks went to the scheduler before the commit
  // The payloads, read from the message once (every read of a Cap'n Proto message counts
  // against its traversal limit): views into `frame` (a client's submit) or `owned` (a reduce
  // stage the nexus made), which they keep alive.
  std::vector<std::string_view> payloads;
  std::shared_ptr<wire::Decoded> frame;
  std::shared_ptr<std::vector<std::string>> owned;
};

// A map-reduce job's link from its map batch to its reduce batch, or why there is none.
struct JobLink {
  std::uint64_t next = 0;
  std::string note;
};

// What a write ticket carries besides its WriteSet: what to do once it is durable.
// A CancelAck waiting for the commit of the cancel it answers.
struct PendingCancel {
  std::string routingId;
  std::uint64_t requestId = 0;
  std::uint64_t batch = 0;
  std::uint64_t cancelled = 0;
};

struct TicketInfo {
  std::vector<PendingSubmit> submits;
  std::vector<PendingCancel> cancels;
  std::map<std::uint64_t, std::array<std::uint64_t, 3>> finals;  // batch -> ok, failed, cancelled
  std::vector<std::uint64_t> finishing;
  std::uint64_t submitTasks = 0;
};

// The row of a new batch, from the spec the scheduler holds (defaults already applied).
store::BatchRecord batchRecord(std::uint64_t id, const routing::BatchSpec& s, bool sealed, std::uint64_t total) {
  store::BatchRecord rec;
  rec.id = id;
  rec.label = s.label;
  rec.handler = s.handler;
  rec.priority = s.priority;
  rec.requiredTags = s.requiredTags;
  rec.timeoutMs = s.timeoutMs;
  rec.maxAttempts = s.maxAttempts;
  rec.clientKey = s.clientKey;
  rec.submittedMs = s.submittedMs;
  rec.sealed = sealed;
  rec.total = total;
  rec.mrStage = s.mrStage;
  rec.mrPartitions = s.mrPartitions;
  rec.mrCombiner = s.mrCombiner;
  rec.mrReducer = s.mrReducer;
  return rec;
}

bool validName(std::string_view s, std::size_t max) {
  if (s.empty() || s.size() > max) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
  });
}


std::string portName(const std::string& domain) {
  if (domain == kNodeDomain) return "node";
  if (domain == kClientDomain) return "client";
  return "events";
}

}  // namespace

class NexusImpl {
 public:
  NexusImpl(zmq::context_t& ctx, config::NexusConfig config)
      : ctx_(ctx), config_(std::move(config)), clock_(util::systemClock()), scheduler_(config_.scheduler) {
    limits_.maxFrameBytes = config_.maxFrameBytes;
  }

  util::Status start();
  void run(const std::atomic<bool>& stop);

 private:
  // ---- set-up
  util::Status openKeys();
  util::Status reloadKeys();
  util::Status bindAndCheck();
  util::Status recover();

  // ---- messages
  template <typename Serve, typename OnBad>
  bool drainRouter(zmq::socket_t& socket, Serve&& serve, OnBad&& onBad);
  bool drainNodes();
  bool drainClients();
  void onNodeMessage(const std::string& routingId, zmq::message_t& body);
  void onHello(const std::string& routingId, const std::string& key, zmq::message_t& frame,
               proto::Hello::Reader hello);
  void onResults(routing::NodeId from, proto::Results::Reader results);
  void onClientMessage(const std::string& routingId, zmq::message_t& body);
  void serveClient(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                   wire::Decoded decoded);
  void onSubmit(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                std::shared_ptr<wire::Decoded> frame);
  void onWatch(const std::string& routingId, std::uint64_t requestId, std::uint64_t batch);
  void onFetchResults(const std::string& routingId, std::uint64_t requestId, proto::FetchResults::Reader req);
  void onStatus(const std::string& routingId, std::uint64_t requestId);
  void onNodes(const std::string& routingId, std::uint64_t requestId);
  void onTask(const std::string& routingId, std::uint64_t requestId, std::uint64_t taskId);
  void onCancel(const std::string& routingId, const std::string& key, std::uint64_t requestId, std::uint64_t batch);

  // ---- bundles
  util::Status openBundles();
  util::Status saveBundleIndex();
  void onBundleUpload(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                      proto::BundleUpload::Reader upload);
  void refusePublish(const std::string& routingId, std::uint64_t requestId, const bundle::Refused& r);
  void onBundleFetch(NodeConn& conn, std::uint64_t requestId, proto::BundleFetch::Reader fetch);
  void onBundleReport(const NodeConn& conn, proto::BundleReport::Reader report);
  void onBundles(const std::string& routingId, std::uint64_t requestId);
  void fillBundleRef(proto::BundleRef::Builder out, const StoredBundle& b);

  // ---- work
  void dispatch();
  void collectEffects();
  void flushWrites();
  void onCommits();
  void timers();
  // nodeFault: the node died or went silent (charged to its tasks toward quarantine), as
  // opposed to a reconnection or a revoked key.
  void dropNode(routing::NodeId id, const std::string& why, bool nodeFault = true);
  void sendWelcome(const std::string& routingId);
  void sendProgress(std::uint64_t batch, bool final);
  void keepInline(const routing::FinalResult& f);
  void dropInline(std::uint64_t batch);
  void fillInline(proto::Progress::Builder out, std::uint64_t batch, std::uint64_t total);
  // A map stage finished: start its reduce batch from the map outputs (or record why not).
  void startReduce(const store::BatchRecord& map);
  void publish(proto::Event::Kind kind, std::uint64_t batch, const std::string& node, const std::string& text);

  // ---- helpers
  bool sendTo(zmq::socket_t& socket, const std::string& routingId, zmq::message_t&& body);
  void replyError(const std::string& routingId, std::uint64_t requestId, proto::Error::Code code,
                  const std::string& message);
  void fillProgress(proto::Progress::Builder out, std::uint64_t batchId, const routing::Progress& p);
  // Whether the batch has finished (every result committed), as progressOf(...).finished says,
  // without counting its results.
  bool batchFinished(std::uint64_t batchId);
  std::optional<routing::Progress> progressOf(std::uint64_t batchId);
  bool mayHaveLink(std::uint64_t batchId);
  std::optional<store::Role> roleOf(const std::string& key);

  zmq::context_t& ctx_;
  config::NexusConfig config_;
  const util::Clock& clock_;
  wire::Limits limits_;
  routing::Scheduler scheduler_;
  util::Counters counters_;

  crypto::KeyPair serverKeys_;
  std::string dbPath_;
  store::Db readDb_;
  std::unique_ptr<store::PayloadReader> payloadReader_;
  std::unique_ptr<store::TaskStore> readStore_;
  std::unique_ptr<store::KeyStore> keys_;
  std::int64_t keysVersion_ = -1;
  std::unordered_map<std::string, store::Role> accepted_;

  std::unique_ptr<transport::ZapHandler> zap_;
  std::unique_ptr<store::StoreWriter> writer_;
  // The loop's wait while run() runs (null otherwise); every send on a socket it watches goes
  // through sendTo() or flushWrites(), which tell it (Poller's contract).
  transport::Poller* poller_ = nullptr;
  zmq::socket_t nodeSocket_, clientSocket_, eventsSocket_;
  std::string nodeEndpoint_, clientEndpoint_, eventsEndpoint_;
  std::unique_ptr<discovery::BeaconSender> beacon_;

  std::unordered_map<std::string, NodeConn> conns_;           // by routing id
  std::unordered_map<routing::NodeId, std::string> nodeRoute_;  // node id -> routing id
  std::unordered_map<std::string, std::uint64_t> batchOwner_;   // not used for lookup by key
  std::map<std::uint64_t, std::string> owners_;                 // batch -> client key
  std::map<std::uint64_t, std::vector<Watcher>> watchers_;
  std::unordered_map<std::uint64_t, InlineResults> inline_;  // watched batches' results so far
  std::size_t inlineBytes_ = 0;
  util::LogThrottle storeLog_{clock_};  // failed writes (a full disk): one line a minute
  std::map<std::uint64_t, JobLink> jobLinks_;  // map batch -> its reduce stage

  std::uint64_t nextBatchId_ = 1;
  std::uint64_t nextTaskId_ = 1;
  std::uint64_t pendingSubmitTasks_ = 0;
  std::uint64_t durableTaskIdMax_ = 0;  // the highest task id known committed
  // Task ids [first, end) of batches withdrawn after their commit failed, while write sets that
  // may carry their results are still in flight.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> withdrawnIds_;
  bool withdrawn(std::uint64_t task) const {
    for (const auto& [first, end] : withdrawnIds_) {
      if (task >= first && task < end) return true;
    }
    return false;
  }
  void dropWithdrawn(store::WriteSet& set);

  std::unique_ptr<store::WriteSet> current_ = std::make_unique<store::WriteSet>();
  TicketInfo currentInfo_;
  std::map<std::uint64_t, TicketInfo> tickets_;
  std::vector<std::pair<std::unique_ptr<store::WriteSet>, TicketInfo>> retryWrites_;
  std::int64_t retryAtMono_ = 0;

  std::int64_t startedMono_ = 0;
  std::int64_t nextHeartbeat_ = 0, nextProgress_ = 0, nextKeyCheck_ = 0;

  // Signed bundles (docs/bundles.md): trusted release keys, the version ledger (the same check 4
  // a spore runs), the stored bundles, publishes in progress and what the spores reported.
  bundle::TrustedKeys trusted_;
  std::optional<bundle::FileVersionLedger> ledger_;
  std::optional<bundle::AuditLog> audit_;
  std::string bundlesDir_;
  std::map<std::string, StoredBundle> bundles_;  // by name
  std::map<std::uint64_t, Upload> uploads_;
  std::uint64_t nextUpload_ = 1;
  std::map<std::string, std::map<std::string, SporeBundle>> sporeBundles_;  // name -> spore key -> state
  std::deque<bundle::Refused> publishRefusals_;
};

// ---- set-up ----------------------------------------------------------------------------------

util::Status NexusImpl::start() {
  startedMono_ = clock_.monotonicMs();
  if (mkdir(config_.dataDir.c_str(), 0700) != 0 && errno != EEXIST) {
    return util::err("cannot create data dir " + config_.dataDir + ": " + std::strerror(errno));
  }
  std::string keyPath = config_.dataDir + "/nexus.key";
  if (access(keyPath.c_str(), F_OK) != 0) {
    if (auto s = crypto::saveKeyPair(keyPath, crypto::KeyPair::generate()); !s) return s;
    MESH_INFO("generated the nexus key pair in %s (public key in %s.pub)", keyPath.c_str(), keyPath.c_str());
  }
  auto keys = crypto::loadKeyPair(keyPath);
  if (!keys) return keys.error();
  serverKeys_ = std::move(*keys);
  dbPath_ = config_.dataDir + "/nexus.db";
  auto db = store::Db::open(dbPath_);
  if (!db) return db.error();
  readDb_ = std::move(*db);
  payloadReader_ = std::make_unique<store::PayloadReader>(store::PayloadLog::dirFor(dbPath_));
  readStore_ = std::make_unique<store::TaskStore>(readDb_, nullptr, payloadReader_.get());
  if (auto s = openKeys(); !s) return s;
  auto writer = store::StoreWriter::start(ctx_, dbPath_);
  if (!writer) return writer.error();
  writer_ = std::move(*writer);
  if (auto s = openBundles(); !s) return s;
  if (auto s = bindAndCheck(); !s) return s;
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
  // The ZAP thread brings its own connection (a Db belongs to one thread).
  struct ZapState {
    std::string path;
    std::optional<store::Db> db;
  };
  auto state = std::make_shared<ZapState>();
  state->path = dbPath_;
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
    store::Role wanted = r.domain == kClientDomain ? store::Role::kClient : store::Role::kNode;
    if (auto s = keys.recordRefusal(r.key, wanted, r.address, util::systemClock().wallMs()); !s) {
      MESH_WARN("could not record refused key %s: %s", r.key.fingerprint().c_str(), s.error().message.c_str());
    }
    if (revoked) {
      MESH_WARN("refused revoked key %s from %s on the %s port", r.key.fingerprint().c_str(), r.address.c_str(),
                port.c_str());
    } else {
      MESH_WARN("refused unknown key %s from %s on the %s port; to let it in: mesh keys accept %s",
                r.key.fingerprint().c_str(), r.address.c_str(), port.c_str(), r.key.fingerprint().c_str());
    }
    return transport::ZapVerdict{false, revoked ? "revoked key" : "unknown key"};
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
    routing::Batch& b = scheduler_.addBatch(rec.id, spec);
    b.total = rec.total;
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
    scheduler_.addTask(*b, t.id, t.index, std::move(t.payload), t.attemptsMade, t.nodesLost);
    ++pending;
  });
  if (!s) return s;
  for (auto& rec : *batches) {
    routing::Batch* b = scheduler_.batch(rec.id);
    auto counts = readStore_->countResults(rec.id);
    if (!counts) return counts.error();
    scheduler_.restoreCounts(*b, counts->succeeded, counts->failed, counts->cancelled);
    if (rec.sealed) scheduler_.seal(*b, rec.total);
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
  collectEffects();
  return {};
}

// ---- the loop --------------------------------------------------------------------------------

void NexusImpl::run(const std::atomic<bool>& stop) {
  transport::Poller poller;
  const std::size_t nodes = poller.add(nodeSocket_), clients = poller.add(clientSocket_),
                    commits = poller.add(writer_->socket());
  poller_ = &poller;
  while (!stop.load()) {
    std::int64_t now = clock_.monotonicMs();
    std::int64_t wake = std::min({nextHeartbeat_, nextProgress_, nextKeyCheck_, now + 250});
    if (auto d = scheduler_.nextDeadline()) wake = std::min(wake, *d);
    if (!retryWrites_.empty()) wake = std::min(wake, retryAtMono_);
    if (beacon_) wake = std::min(wake, beacon_->sendIfDue());
    std::int64_t timeout = std::max<std::int64_t>(0, wake - now);
    try {
      poller.wait(timeout);
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) {
        poller_ = nullptr;
        return;
      }
      if (e.num() != EINTR) MESH_WARN("poll failed: %s", e.what());
      continue;
    }
    try {
      if (poller.ready(commits)) {
        onCommits();
        poller.drained(commits);
      }
      if (poller.ready(nodes) && drainNodes()) poller.drained(nodes);
      if (poller.ready(clients) && drainClients()) poller.drained(clients);
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
  poller_ = nullptr;
  // Write what is pending before stopping; the writer's destructor drains its queue.
  collectEffects();
  flushWrites();
}

bool NexusImpl::sendTo(zmq::socket_t& socket, const std::string& routingId, zmq::message_t&& body) {
  if (poller_) poller_->touched(socket);
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
    onHello(routingId, key, body, bodyReader.getHello());
    if (auto c = conns_.find(routingId); c != conns_.end()) c->second.address = address;
    return;
  }
  if (it == conns_.end()) {
    // Not (or no longer) known: a spore we declared lost (it was stopped or cut off), or one
    // that has not said hello to this nexus since it restarted. Its results still count (the
    // first result for a task wins; later ones are counted duplicates), then it must say hello.
    counters_.add("messages_before_hello");
    if (decoded->which() == Which::RESULTS) onResults(routing::kNoNode, bodyReader.getResults());
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
      auto hb = bodyReader.getHeartbeat();
      scheduler_.updateLoad(conn.id, hb.getCpuPct(), hb.getMemPct());
      break;
    }
    case Which::RESULTS:
      onResults(conn.id, bodyReader.getResults());
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
    scheduler_.onReport(from, std::move(rep), nowMono, nowWall);
  }
}

void NexusImpl::onHello(const std::string& routingId, const std::string& key, zmq::message_t&,
                        proto::Hello::Reader hello) {
  std::string name(wire::view(hello.getName()));
  if (name.empty() || name.size() > 128 || hello.getSlots() == 0 || hello.getSlots() > 4096 ||
      hello.getHandlers().size() > 10000 || hello.getTags().size() > 256) {
    counters_.add("bad_hellos");
    MESH_WARN("refused a malformed hello from node %s", fingerprintOf(key).c_str());
    sendTo(nodeSocket_, routingId, wire::encodeError(0, proto::Error::Code::BAD_REQUEST, "malformed hello"));
    return;
  }
  std::vector<std::string> helloHandlers;
  for (auto h : hello.getHandlers()) helloHandlers.emplace_back(wire::view(h));
  if (auto same = conns_.find(routingId);
      same != conns_.end() && same->second.key == key && same->second.handlers == helloHandlers) {
    // A repeated hello on a live connection (several messages were refused at once): the node is
    // already registered, so only welcome it again. (A hello with other handlers, after a bundle
    // install or rollback, registers the node again below; its running tasks are adopted.)
    counters_.add("repeated_hellos");
    same->second.lastSeenMono = clock_.monotonicMs();
    sendWelcome(routingId);
    return;
  }
  // One connection per key: a new hello replaces whatever that key had. That is a reconnection,
  // not a failure: its tasks go back to the queue (or are adopted below) without being charged.
  std::vector<routing::NodeId> replaced;
  for (const auto& [rid, c] : conns_) {
    if (c.key == key || rid == routingId) replaced.push_back(c.id);
  }
  for (auto id : replaced) dropNode(id, "reconnected", /*nodeFault=*/false);
  NodeConn conn;
  conn.routingId = routingId;
  conn.key = key;
  conn.fingerprint = fingerprintOf(key);
  conn.name = name;
  conn.foundBy = std::string(wire::view(hello.getFoundBy()));
  conn.softwareVersion = std::string(wire::view(hello.getSoftwareVersion()));
  conn.slots = hello.getSlots();
  for (auto h : hello.getHandlers()) conn.handlers.emplace_back(wire::view(h));
  for (auto t : hello.getTags()) conn.tags.emplace_back(wire::view(t));
  conn.lastSeenMono = clock_.monotonicMs();
  conn.connectedWallMs = clock_.wallMs();
  routing::NodeInfo info;
  info.key = key;
  info.name = name;
  info.slots = conn.slots;
  info.tags.insert(conn.tags.begin(), conn.tags.end());
  info.handlers.insert(conn.handlers.begin(), conn.handlers.end());
  conn.id = scheduler_.addNode(std::move(info));
  std::vector<std::pair<std::uint64_t, std::uint8_t>> running;
  auto attempts = hello.getRunningAttempts();
  for (unsigned i = 0; i < hello.getRunning().size(); ++i) {
    running.emplace_back(hello.getRunning()[i], i < attempts.size() ? attempts[i] : 0);
  }
  auto unknown = scheduler_.adoptRunning(conn.id, running, clock_.monotonicMs());
  nodeRoute_[conn.id] = routingId;
  MESH_INFO("node %s (%s, %u slots, %zu handlers) joined; %zu tasks still running there", name.c_str(),
            conn.fingerprint.c_str(), conn.slots, conn.handlers.size(), running.size() - unknown.size());
  conns_[routingId] = std::move(conn);
  sendWelcome(routingId);
  if (!unknown.empty()) {
    wire::Encoder cancel(0, 64 + unknown.size());
    auto ids = cancel.body().initCancelTasks().initIds(static_cast<unsigned>(unknown.size()));
    for (unsigned i = 0; i < unknown.size(); ++i) ids.set(i, unknown[i]);
    sendTo(nodeSocket_, routingId, cancel.finish());
  }
  publish(proto::Event::Kind::NODE_JOINED, 0, name, "");
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

void NexusImpl::dropNode(routing::NodeId id, const std::string& why, bool nodeFault) {
  auto r = nodeRoute_.find(id);
  if (r == nodeRoute_.end()) return;
  auto c = conns_.find(r->second);
  std::string name = c != conns_.end() ? c->second.name : "?";
  MESH_WARN("node %s lost: %s; its tasks go back to the queue", name.c_str(), why.c_str());
  scheduler_.removeNode(id, clock_.wallMs(), why, nodeFault);
  if (c != conns_.end()) conns_.erase(c);
  nodeRoute_.erase(r);
  publish(proto::Event::Kind::NODE_LOST, 0, name, why);
}

// ---- client port -----------------------------------------------------------------------------

void NexusImpl::onClientMessage(const std::string& routingId, zmq::message_t& body) {
  std::string key = transport::userId(body);
  auto decoded = wire::decode(std::move(body), limits_);
  if (!decoded) {
    counters_.add("bad_frames");
    MESH_WARN("dropped a bad frame from client %s: %s", fingerprintOf(key).c_str(), decoded.error().message.c_str());
    replyError(routingId, 0, proto::Error::Code::BAD_REQUEST, "malformed message: " + decoded.error().message);
    return;
  }
  auto role = roleOf(key);
  std::uint64_t requestId = decoded->envelope().getRequestId();
  if (!role || *role == store::Role::kNode) {
    counters_.add("refused_messages");
    replyError(routingId, requestId, proto::Error::Code::FORBIDDEN, "this key is not accepted as a client");
    return;
  }
  try {
    serveClient(routingId, key, requestId, std::move(*decoded));
  } catch (const std::exception& e) {
    counters_.add("internal_errors");
    MESH_ERROR("request from %s failed: %s", fingerprintOf(key).c_str(), e.what());
    replyError(routingId, requestId, proto::Error::Code::INTERNAL, "the nexus failed on this request; see its log");
  } catch (const kj::Exception& e) {
    counters_.add("internal_errors");
    MESH_ERROR("request from %s failed: %s", fingerprintOf(key).c_str(), e.getDescription().cStr());
    replyError(routingId, requestId, proto::Error::Code::INTERNAL, "the nexus failed on this request; see its log");
  }
}

void NexusImpl::serveClient(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                            wire::Decoded decoded) {
  auto b = decoded.envelope().getBody();
  switch (decoded.which()) {
    case Which::SUBMIT:
      onSubmit(routingId, key, requestId, std::make_shared<wire::Decoded>(std::move(decoded)));
      break;
    case Which::WATCH:
      onWatch(routingId, requestId, b.getWatch().getBatch());
      break;
    case Which::FETCH_RESULTS:
      onFetchResults(routingId, requestId, b.getFetchResults());
      break;
    case Which::STATUS_REQUEST:
      onStatus(routingId, requestId);
      break;
    case Which::NODES_REQUEST:
      onNodes(routingId, requestId);
      break;
    case Which::TASK_REQUEST:
      onTask(routingId, requestId, b.getTaskRequest());
      break;
    case Which::CANCEL_BATCH:
      onCancel(routingId, key, requestId, b.getCancelBatch());
      break;
    case Which::BUNDLE_UPLOAD:
      onBundleUpload(routingId, key, requestId, b.getBundleUpload());
      break;
    case Which::BUNDLES_REQUEST:
      onBundles(routingId, requestId);
      break;
    default:
      counters_.add("unknown_messages");
      replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST,
                 "unknown request kind " + std::to_string(static_cast<unsigned>(decoded.which())) +
                     ": is this client newer than the nexus?");
  }
}

void NexusImpl::onSubmit(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                         std::shared_ptr<wire::Decoded> frame) {
  auto submit = frame->envelope().getBody().getSubmit();
  auto payloads = submit.getPayloads();
  auto bad = [&](proto::Error::Code code, const std::string& message) {
    counters_.add("submits_refused");
    replyError(routingId, requestId, code, message);
  };
  if (payloads.size() > kMaxTasksPerSubmit) {
    return bad(proto::Error::Code::TOO_LARGE, "at most " + std::to_string(kMaxTasksPerSubmit) + " tasks per message");
  }
  std::vector<std::string_view> views;
  views.reserve(payloads.size());
  for (auto p : payloads) {
    views.push_back(wire::view(p));
    if (views.back().size() > config_.maxPayloadBytes) {
      return bad(proto::Error::Code::TOO_LARGE,
                 "task " + std::to_string(views.size() - 1) + " has a payload of " +
                     std::to_string(views.back().size()) + " bytes, over the nexus limit of " +
                     std::to_string(config_.maxPayloadBytes) + " (--max-payload)");
    }
  }
  std::uint64_t unfinished = scheduler_.queuedTotal() + scheduler_.runningTotal() + pendingSubmitTasks_;
  if (unfinished + payloads.size() > config_.maxQueuedTasks) {
    return bad(proto::Error::Code::UNAVAILABLE, "the nexus holds " + std::to_string(unfinished) +
                                                    " unfinished tasks (limit " + std::to_string(config_.maxQueuedTasks) +
                                                    "): wait for some to finish and retry");
  }
  PendingSubmit ps;
  ps.routingId = routingId;
  ps.requestId = requestId;
  ps.count = payloads.size();
  ps.seal = submit.getSeal();
  ps.watch = submit.getWatch();
  routing::Batch* b = nullptr;
  if (submit.getBatch() == 0) {
    auto spec = submit.getSpec();
    std::string handler(wire::view(spec.getHandler()));
    if (!validName(handler, 128)) {
      return bad(proto::Error::Code::BAD_REQUEST, "handler name '" + handler +
                                                      "' is not valid: use letters, digits, '.', '_' and '-'");
    }
    routing::BatchSpec s;
    s.handler = handler;
    for (auto t : spec.getRequires()) {
      std::string tag(wire::view(t));
      if (!validName(tag, 64)) return bad(proto::Error::Code::BAD_REQUEST, "tag '" + tag + "' is not valid");
      s.requiredTags.push_back(tag);
    }
    if (!scheduler_.handlerOffered(handler)) {
      std::set<std::string> offered;
      for (const auto& [id, n] : scheduler_.nodes()) offered.insert(n.info.handlers.begin(), n.info.handlers.end());
      std::string list;
      for (const auto& h : offered) list += (list.empty() ? "" : ", ") + h;
      return bad(proto::Error::Code::UNKNOWN_HANDLER,
                 scheduler_.nodes().empty()
                     ? "no spore is connected, so no handler '" + handler + "' is offered: start a spore first"
                     : "no live spore offers handler '" + handler + "' (offered: " + list + ")");
    }
    auto mr = spec.getMapreduce();
    if (mr.getStage() == proto::MapReduce::Stage::REDUCE) {
      return bad(proto::Error::Code::BAD_REQUEST, "a reduce stage is started by the nexus, not submitted");
    }
    if (mr.getStage() == proto::MapReduce::Stage::MAP) {
      std::string combiner(wire::view(mr.getCombiner())), reducer(wire::view(mr.getReducer()));
      if (mr.getPartitions() < 1 || mr.getPartitions() > 10000) {
        return bad(proto::Error::Code::BAD_REQUEST, "the number of reducers must be 1-10000");
      }
      if (!validName(reducer, 128) || (!combiner.empty() && !validName(combiner, 128))) {
        return bad(proto::Error::Code::BAD_REQUEST, "reducer and combiner names must be valid handler names");
      }
      for (const auto& h : {reducer, combiner}) {
        if (!h.empty() && !scheduler_.handlerOffered(h)) {
          return bad(proto::Error::Code::UNKNOWN_HANDLER, "no live spore offers handler '" + h + "'");
        }
      }
      s.mrStage = 1;
      s.mrPartitions = mr.getPartitions();
      s.mrCombiner = combiner;
      s.mrReducer = reducer;
      if (!combiner.empty()) s.alsoNeeds.push_back(combiner);
    }
    s.priority = spec.getPriority();
    s.timeoutMs = spec.getTimeoutMs();
    s.maxAttempts = spec.getMaxAttempts();
    s.label = std::string(wire::view(spec.getLabel())).substr(0, 256);
    s.clientKey = key;
    s.submittedMs = clock_.wallMs();
    ps.batch = nextBatchId_++;
    ps.newBatch = true;
    b = &scheduler_.addBatch(ps.batch, s);
    owners_[ps.batch] = key;
    current_->newBatches.push_back(batchRecord(ps.batch, b->spec, ps.seal, ps.count));
    ps.firstIndex = 0;
    counters_.add("batches_submitted");
  } else {
    ps.batch = submit.getBatch();
    b = scheduler_.batch(ps.batch);
    auto owner = owners_.find(ps.batch);
    if (!b || owner == owners_.end()) return bad(proto::Error::Code::NOT_FOUND, "no open batch " + std::to_string(ps.batch));
    if (owner->second != key) return bad(proto::Error::Code::FORBIDDEN, "batch " + std::to_string(ps.batch) + " belongs to another client");
    if (b->sealed || b->sealPending || b->cancelled) {
      return bad(proto::Error::Code::BAD_REQUEST, "batch " + std::to_string(ps.batch) + " is sealed or cancelled: no tasks can be added");
    }
    ps.firstIndex = b->total + b->pendingAdds;
    store::BatchUpdate u;
    u.batch = ps.batch;
    u.total = ps.firstIndex + ps.count;
    u.sealed = ps.seal;
    current_->updates.push_back(u);
  }
  ps.firstId = nextTaskId_;
  nextTaskId_ += ps.count;
  ps.early = ps.newBatch && ps.seal && b->spec.mrStage == 0 && ps.count > 0 && ps.count <= kEarlyDispatchMax &&
             ps.firstId + ps.count - 1 <= durableTaskIdMax_ + kEarlyIdWindow;
  if (ps.early) {
    // Runs while the submit is committed. The writer commits in order, so no result of these
    // tasks can be stored before them; the ack still waits for the commit.
    for (std::uint32_t i = 0; i < ps.count; ++i) scheduler_.addTask(*b, ps.firstId + i, i, std::string(views[i]));
    b->total = ps.count;
    scheduler_.seal(*b, ps.count);
    counters_.add("tasks_dispatched_early", ps.count);
    // Its watcher is registered with the ack; its results may come before that.
    if (ps.watch) inline_.try_emplace(ps.batch);
  } else {
    if (ps.seal) b->sealPending = true;
    b->pendingAdds += ps.count;
  }
  if (ps.count > 0) {
    store::TaskChunk chunk;
    chunk.batch = ps.batch;
    chunk.firstId = ps.firstId;
    chunk.firstIndex = ps.firstIndex;
    chunk.payloads = views;
    chunk.keepAlive = frame;
    current_->chunks.push_back(std::move(chunk));
  }
  ps.payloads = std::move(views);
  ps.frame = std::move(frame);
  if (!ps.early) pendingSubmitTasks_ += ps.count;  // early ones count as queued already
  currentInfo_.submitTasks += ps.count;
  currentInfo_.submits.push_back(std::move(ps));
}

void NexusImpl::fillProgress(proto::Progress::Builder out, std::uint64_t batchId, const routing::Progress& p) {
  out.setBatch(batchId);
  out.setTotal(p.total);
  out.setSealed(p.sealed);
  out.setQueued(p.queued);
  out.setRunning(p.running);
  out.setSucceeded(p.succeeded);
  out.setFailed(p.failed);
  out.setCancelled(p.cancelled);
  out.setFinished(p.finished);
  auto link = jobLinks_.find(batchId);
  if (link != jobLinks_.end()) {
    out.setNextBatch(link->second.next);
    out.setNote(link->second.note);
  } else if (p.finished && mayHaveLink(batchId)) {
    auto rec = readStore_->batch(batchId);
    if (rec && *rec) {
      out.setNextBatch((*rec)->nextBatch.value_or(0));
      out.setNote((*rec)->note);
    }
  }
}

// Only map-reduce stages get a next batch or a note; a plain batch still in memory needs no read.
bool NexusImpl::mayHaveLink(std::uint64_t batchId) {
  routing::Batch* b = scheduler_.batch(batchId);
  return b == nullptr || b->spec.mrStage != 0;
}

bool NexusImpl::batchFinished(std::uint64_t batchId) {
  if (routing::Batch* b = scheduler_.batch(batchId)) {
    if (b->spec.mrStage == 1 && !jobLinks_.count(batchId)) return false;  // as progressOf says
    return scheduler_.progress(*b).finished;
  }
  auto rec = readStore_->batch(batchId);  // one row, not the count progressOf makes
  return rec && *rec && (*rec)->finishedMs.has_value();
}

std::optional<routing::Progress> NexusImpl::progressOf(std::uint64_t batchId) {
  if (routing::Batch* b = scheduler_.batch(batchId)) {
    routing::Progress p = scheduler_.progress(*b);
    // A map stage is finished for its client only once the reduce stage is linked (or the
    // reason it is not), so that `finished` always comes with nextBatch or a note.
    if (b->spec.mrStage == 1 && !jobLinks_.count(batchId)) p.finished = false;
    return p;
  }
  auto rec = readStore_->batch(batchId);
  if (!rec || !*rec) return std::nullopt;
  auto counts = readStore_->countResults(batchId);
  if (!counts) return std::nullopt;
  routing::Progress p;
  p.total = (*rec)->total;
  p.sealed = (*rec)->sealed;
  p.succeeded = counts->succeeded;
  p.failed = counts->failed;
  p.cancelled = counts->cancelled;
  p.finished = (*rec)->finishedMs.has_value();
  return p;
}

void NexusImpl::onWatch(const std::string& routingId, std::uint64_t requestId, std::uint64_t batch) {
  counters_.add("watch_requests");
  auto p = progressOf(batch);
  if (!p) {
    replyError(routingId, requestId, proto::Error::Code::NOT_FOUND, "no batch " + std::to_string(batch));
    return;
  }
  wire::Encoder e(requestId, 64);
  fillProgress(e.body().initProgress(), batch, *p);
  sendTo(clientSocket_, routingId, e.finish());
  if (!p->finished) {
    auto& list = watchers_[batch];
    for (auto& w : list) {
      if (w.routingId == routingId) {
        w.requestId = requestId;
        return;
      }
    }
    list.push_back({routingId, requestId});
  }
}

void NexusImpl::sendProgress(std::uint64_t batch, bool final) {
  auto it = watchers_.find(batch);
  if (it == watchers_.end()) return;
  auto p = progressOf(batch);
  if (!p) return;
  auto held = p->finished ? inline_.find(batch) : inline_.end();
  std::size_t words = 64;
  if (held != inline_.end()) words += held->second.bytes / 8 + 8 * held->second.rows.size();
  for (auto w = it->second.begin(); w != it->second.end();) {
    wire::Encoder e(w->requestId, static_cast<unsigned>(words));
    auto out = e.body().initProgress();
    fillProgress(out, batch, *p);
    if (held != inline_.end()) fillInline(out, batch, p->total);
    if (!sendTo(clientSocket_, w->routingId, e.finish())) {
      w = it->second.erase(w);  // the client went away
    } else {
      ++w;
    }
  }
  if (final || p->finished || it->second.empty()) {
    watchers_.erase(it);
    dropInline(batch);
  }
}

void NexusImpl::keepInline(const routing::FinalResult& f) {
  InlineResults& in = inline_[f.batch];
  if (in.overflow) return;
  std::size_t add = f.output.size() + f.error.size() + f.node.size() + 32;
  if (in.rows.size() >= kInlineRowsMax || in.bytes + add > kInlineBatchBytes || inlineBytes_ + add > kInlineTotalBytes) {
    inlineBytes_ -= in.bytes;
    in.bytes = 0;
    in.overflow = true;
    std::vector<InlineRow>().swap(in.rows);
    return;
  }
  in.rows.push_back({f.task, f.index, static_cast<std::uint8_t>(f.status), f.attempts, f.output, f.error, f.node});
  in.bytes += add;
  inlineBytes_ += add;
}

void NexusImpl::dropInline(std::uint64_t batch) {
  auto it = inline_.find(batch);
  if (it == inline_.end()) return;
  inlineBytes_ -= it->second.bytes;
  inline_.erase(it);
}

// Every final result of the batch, in index order, when all of them were kept; else nothing.
void NexusImpl::fillInline(proto::Progress::Builder out, std::uint64_t batch, std::uint64_t total) {
  auto it = inline_.find(batch);
  if (it == inline_.end() || it->second.overflow || it->second.rows.size() != total) return;
  auto& rows = it->second.rows;
  std::sort(rows.begin(), rows.end(), [](const InlineRow& a, const InlineRow& b) { return a.index < b.index; });
  auto list = out.initResults(static_cast<unsigned>(rows.size()));
  for (unsigned i = 0; i < rows.size(); ++i) {
    auto r = list[i];
    r.setTask(rows[i].task);
    r.setIndex(rows[i].index);
    r.setStatus(static_cast<proto::TaskStatus>(rows[i].status));
    r.setOutput(wire::asData(rows[i].output));
    r.setError(rows[i].error);
    r.setAttempts(rows[i].attempts);
    r.setNode(rows[i].node);
  }
  counters_.add("results_with_finished");
}

void NexusImpl::onFetchResults(const std::string& routingId, std::uint64_t requestId, proto::FetchResults::Reader req) {
  counters_.add("result_pages");
  std::uint32_t limit = std::clamp<std::uint32_t>(req.getLimit(), 1, kResultPageMax);
  // Asked before the rows are read: a batch finished by then has every result committed.
  bool finished = batchFinished(req.getBatch());
  auto rows = readStore_->resultsPage(req.getBatch(), req.getFromIndex(), static_cast<int>(limit));
  if (!rows) {
    MESH_ERROR("reading results failed: %s", rows.error().message.c_str());
    replyError(routingId, requestId, proto::Error::Code::INTERNAL, "reading results failed; see the nexus log");
    return;
  }
  if (rows->empty() && !progressOf(req.getBatch())) {
    replyError(routingId, requestId, proto::Error::Code::NOT_FOUND, "no batch " + std::to_string(req.getBatch()));
    return;
  }
  // Keep a page under the frame budget.
  std::size_t bytes = 0, n = 0;
  for (; n < rows->size(); ++n) {
    bytes += (*rows)[n].result.output.size() + (*rows)[n].result.error.size() + 64;
    if (n > 0 && bytes > kResultPageBytes) break;
  }
  wire::Encoder e(requestId, static_cast<unsigned>(bytes / 8 + 256));
  auto page = e.body().initResultPage();
  page.setBatch(req.getBatch());
  auto list = page.initRows(static_cast<unsigned>(n));
  std::uint64_t next = req.getFromIndex();
  for (std::size_t i = 0; i < n; ++i) {
    const auto& r = (*rows)[i];
    auto out = list[static_cast<unsigned>(i)];
    out.setTask(r.task);
    out.setIndex(r.index);
    out.setStatus(static_cast<proto::TaskStatus>(r.result.status));
    out.setOutput(wire::asData(r.result.output));
    out.setError(r.result.error);
    out.setAttempts(r.result.attempts);
    out.setNode(r.result.node);
    next = r.index + 1;
  }
  page.setNextIndex(next);
  page.setEnd(n == rows->size() && rows->size() < limit);
  page.setFinished(finished);
  sendTo(clientSocket_, routingId, e.finish());
}

void NexusImpl::onStatus(const std::string& routingId, std::uint64_t requestId) {
  wire::Encoder e(requestId, 1024);
  auto s = e.body().initStatusReply();
  s.setNexusName(config_.name);
  s.setSoftwareVersion(kSoftwareVersion);
  s.setUptimeMs(static_cast<std::uint64_t>(clock_.monotonicMs() - startedMono_));
  std::uint32_t slots = 0;
  for (const auto& [id, n] : scheduler_.nodes()) slots += n.info.slots;
  s.setNodesAlive(static_cast<std::uint32_t>(scheduler_.nodes().size()));
  s.setSlotsTotal(slots);
  s.setQueued(scheduler_.queuedTotal());
  s.setRunning(scheduler_.runningTotal());
  std::vector<std::uint64_t> shown;
  for (const auto& [id, b] : scheduler_.batches()) shown.push_back(id);
  auto recent = readStore_->recentBatches(5);
  if (recent) {
    for (const auto& r : *recent) {
      if (!scheduler_.batch(r.id)) shown.push_back(r.id);
    }
  }
  std::sort(shown.begin(), shown.end());
  auto list = s.initBatches(static_cast<unsigned>(shown.size()));
  for (unsigned i = 0; i < shown.size(); ++i) {
    auto out = list[i];
    out.setId(shown[i]);
    if (routing::Batch* b = scheduler_.batch(shown[i])) {
      out.setLabel(b->spec.label);
      out.setHandler(b->spec.handler);
      out.setPriority(b->spec.priority);
      out.setSubmittedMs(b->spec.submittedMs);
    } else if (recent) {
      for (const auto& r : *recent) {
        if (r.id != shown[i]) continue;
        out.setLabel(r.label);
        out.setHandler(r.handler);
        out.setPriority(r.priority);
        out.setSubmittedMs(r.submittedMs);
      }
    }
    if (auto p = progressOf(shown[i])) fillProgress(out.initProgress(), shown[i], *p);
  }
  std::map<std::string, std::uint64_t> counters = counters_.all();
  for (const auto& [k, v] : scheduler_.counters().all()) counters[k] += v;
  counters["zap_admitted"] = zap_->admitted();
  counters["zap_refused"] = zap_->refused();
  counters["write_queue"] = writer_->queued();
  auto checkpoints = writer_->checkpoints();
  counters["wal_checkpoints"] = checkpoints.done;
  counters["wal_checkpoints_in_line"] = checkpoints.inLine;
  counters["wal_checkpoints_finished_in_line"] = checkpoints.finished;
  counters["wal_checkpoint_errors"] = checkpoints.errors;
  counters["payload_segments_deleted"] = writer_->payloadSegmentsDeleted();
  counters["tasks_in_memory"] = scheduler_.tasksInMemory();
  auto cl = s.initCounters(static_cast<unsigned>(counters.size()));
  unsigned i = 0;
  for (const auto& [k, v] : counters) {
    cl[i].setName(k);
    cl[i].setValue(v);
    ++i;
  }
  sendTo(clientSocket_, routingId, e.finish());
}

void NexusImpl::onNodes(const std::string& routingId, std::uint64_t requestId) {
  wire::Encoder e(requestId, 1024);
  auto list = e.body().initNodesReply().initNodes(static_cast<unsigned>(conns_.size()));
  std::vector<const NodeConn*> sorted;
  for (const auto& [rid, c] : conns_) sorted.push_back(&c);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name || (a->name == b->name && a->id < b->id); });
  std::int64_t now = clock_.monotonicMs();
  for (unsigned i = 0; i < sorted.size(); ++i) {
    const NodeConn& c = *sorted[i];
    auto out = list[i];
    out.setKey(c.key);
    out.setFingerprint(c.fingerprint);
    out.setName(c.name);
    out.setAddress(c.address);
    out.setFoundBy(c.foundBy);
    out.setSoftwareVersion(c.softwareVersion);
    auto tags = out.initTags(static_cast<unsigned>(c.tags.size()));
    for (unsigned t = 0; t < c.tags.size(); ++t) tags.set(t, c.tags[t]);
    auto handlers = out.initHandlers(static_cast<unsigned>(c.handlers.size()));
    for (unsigned h = 0; h < c.handlers.size(); ++h) handlers.set(h, c.handlers[h]);
    out.setSlots(c.slots);
    out.setConnectedMs(c.connectedWallMs);
    out.setLastBeatMsAgo(static_cast<std::uint64_t>(std::max<std::int64_t>(0, now - c.lastSeenMono)));
    out.setAlive(true);
    if (routing::Node* n = scheduler_.node(c.id)) {
      out.setInFlight(n->inFlight);
      out.setCpuPct(static_cast<float>(n->cpuPct));
      out.setMemPct(static_cast<float>(n->memPct));
      out.setScore(static_cast<float>(scheduler_.score(*n)));
      out.setTasksDone(n->done);
    }
  }
  sendTo(clientSocket_, routingId, e.finish());
}

void NexusImpl::onTask(const std::string& routingId, std::uint64_t requestId, std::uint64_t taskId) {
  auto row = readStore_->task(taskId);
  if (!row) {
    replyError(routingId, requestId, proto::Error::Code::INTERNAL, "reading the task failed; see the nexus log");
    return;
  }
  if (!*row) {
    replyError(routingId, requestId, proto::Error::Code::NOT_FOUND,
               "no task " + std::to_string(taskId) + (taskId >= nextTaskId_ ? "" : " (not yet committed?)"));
    return;
  }
  const store::TaskRow& t = **row;
  const routing::Task* live = scheduler_.task(taskId);
  wire::Encoder e(requestId, 512);
  auto info = e.body().initTaskReply();
  info.setId(t.id);
  info.setBatch(t.batch);
  info.setIndex(t.index);
  info.setHandler(t.batchRecord.handler);
  info.setPriority(t.batchRecord.priority);
  auto req = info.initRequires(static_cast<unsigned>(t.batchRecord.requiredTags.size()));
  for (unsigned i = 0; i < t.batchRecord.requiredTags.size(); ++i) req.set(i, t.batchRecord.requiredTags[i]);
  info.setSubmittedMs(t.batchRecord.submittedMs);
  std::size_t extra = (live && live->state == routing::Task::State::kRunning) ? 1 : 0;
  std::size_t final = t.result ? 1 : 0;
  auto attempts = info.initAttempts(static_cast<unsigned>(t.attempts.size() + extra + final));
  unsigned i = 0;
  for (const auto& a : t.attempts) {
    auto out = attempts[i++];
    out.setNumber(a.attempt);
    out.setNode(a.node);
    out.setAssignedMs(a.assignedMs);
    out.setEndedMs(a.endedMs);
    out.setOutcome(a.outcome);
    out.setError(a.error);
  }
  if (t.result) {
    auto out = attempts[i++];
    out.setNumber(t.result->attempts);
    out.setNode(t.result->node);
    out.setAssignedMs(t.result->assignedMs);
    out.setStartedMs(t.result->startedMs);
    out.setEndedMs(t.result->finishedMs);
    out.setOutcome(routing::statusName(static_cast<routing::Status>(t.result->status)));
    out.setError(t.result->error);
    info.setState(routing::statusName(static_cast<routing::Status>(t.result->status)));
    info.setOutput(wire::asData(t.result->output));
    info.setError(t.result->error);
    info.setFinishedMs(t.result->finishedMs);
  } else if (live) {
    if (live->state == routing::Task::State::kRunning) {
      auto out = attempts[i++];
      out.setNumber(live->attempts);
      auto r = nodeRoute_.find(live->node);
      std::string node = "?";
      if (r != nodeRoute_.end()) node = conns_[r->second].name;
      out.setNode(node);
      out.setAssignedMs(live->assignedWallMs);
      out.setOutcome("running");
      info.setState("running");
    } else {
      info.setState(live->state == routing::Task::State::kWaiting ? "waiting" : "queued");
      info.setWhy(scheduler_.whyWaiting(*live, clock_.monotonicMs()));
    }
  } else {
    info.setState("finishing");
    info.setWhy("its result is being written");
  }
  sendTo(clientSocket_, routingId, e.finish());
}

void NexusImpl::onCancel(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                         std::uint64_t batchId) {
  routing::Batch* b = scheduler_.batch(batchId);
  auto owner = owners_.find(batchId);
  if (!b) {
    auto p = progressOf(batchId);
    replyError(routingId, requestId, proto::Error::Code::NOT_FOUND,
               p ? "batch " + std::to_string(batchId) + " has finished already" : "no batch " + std::to_string(batchId));
    return;
  }
  auto role = roleOf(key);
  if (owner != owners_.end() && owner->second != key && (!role || *role != store::Role::kAdmin)) {
    replyError(routingId, requestId, proto::Error::Code::FORBIDDEN,
               "batch " + std::to_string(batchId) + " belongs to another client (an admin key can cancel it)");
    return;
  }
  std::int64_t now = clock_.wallMs();
  if (!b->sealed && !b->sealPending) {
    std::uint64_t total = b->total + b->pendingAdds;
    store::BatchUpdate u;
    u.batch = batchId;
    u.total = total;
    u.sealed = true;
    current_->updates.push_back(u);
    if (b->pendingAdds == 0) scheduler_.seal(*b, total);
    else b->sealPending = true;
  }
  std::uint64_t n = scheduler_.cancel(*b, now);
  store::BatchUpdate u;
  u.batch = batchId;
  u.cancelledMs = now;
  current_->updates.push_back(u);
  MESH_INFO("batch %llu cancelled: %llu tasks will not run", static_cast<unsigned long long>(batchId),
            static_cast<unsigned long long>(n));
  // Acknowledged once the cancel is committed (onCommits), so that a nexus crash cannot undo a
  // cancel its client was told about.
  currentInfo_.cancels.push_back({routingId, requestId, batchId, n});
}

// ---- work ------------------------------------------------------------------------------------

void NexusImpl::dispatch() {
  auto assignments = scheduler_.dispatch(clock_.monotonicMs(), clock_.wallMs());
  for (auto& a : assignments) {
    auto route = nodeRoute_.find(a.node);
    if (route == nodeRoute_.end()) continue;
    std::size_t start = 0;
    bool failed = false;
    while (start < a.tasks.size() && !failed) {
      std::size_t end = start, bytes = 0;
      while (end < a.tasks.size() && (end == start || bytes + a.tasks[end]->payload.size() < kAssignFrameBytes)) {
        bytes += a.tasks[end]->payload.size() + 64;
        ++end;
      }
      wire::Encoder e(0, static_cast<unsigned>(bytes / 8 + 64));
      auto list = e.body().initAssign().initTasks(static_cast<unsigned>(end - start));
      for (std::size_t i = start; i < end; ++i) {
        const routing::Task* t = a.tasks[i];
        auto out = list[static_cast<unsigned>(i - start)];
        out.setId(t->id);
        out.setAttempt(t->attempts);
        out.setHandler(t->batch->spec.handler);
        out.setPayload(wire::asData(t->payload));
        out.setTimeoutMs(t->batch->spec.timeoutMs);
        const auto& spec = t->batch->spec;
        if (spec.mrStage != 0) {
          auto mr = out.initMapreduce();
          mr.setStage(static_cast<proto::MapReduce::Stage>(spec.mrStage));
          mr.setPartitions(spec.mrPartitions);
          mr.setCombiner(spec.mrCombiner);
        }
      }
      failed = !sendTo(nodeSocket_, route->second, e.finish());
      start = end;
    }
    counters_.add("tasks_dispatched", a.tasks.size());
    if (failed) dropNode(a.node, "cannot send to it");
  }
}

void NexusImpl::collectEffects() {
  routing::Effects fx = scheduler_.takeEffects();
  for (auto& f : fx.finals) {
    if (watchers_.count(f.batch) || inline_.count(f.batch)) keepInline(f);
    auto& c = currentInfo_.finals[f.batch];
    if (f.status == routing::Status::kOk) ++c[0];
    else if (f.status == routing::Status::kCancelled) ++c[2];
    else ++c[1];
    store::ResultRecord r;
    r.task = f.task;
    r.status = static_cast<std::uint8_t>(f.status);
    r.output = std::move(f.output);
    r.error = std::move(f.error);
    r.attempts = f.attempts;
    r.node = std::move(f.node);
    r.assignedMs = f.assignedMs;
    r.startedMs = f.startedMs;
    r.finishedMs = f.finishedMs;
    r.durationUs = f.durationUs;
    current_->results.push_back(std::move(r));
  }
  for (auto& a : fx.attempts) {
    store::AttemptRecord r;
    r.task = a.task;
    r.attempt = a.attempt;
    r.node = std::move(a.node);
    r.assignedMs = a.assignedMs;
    r.endedMs = a.endedMs;
    r.outcome = std::move(a.outcome);
    r.error = std::move(a.error);
    r.nodeLost = a.nodeLost;
    current_->attempts.push_back(std::move(r));
  }
  std::map<routing::NodeId, std::vector<std::uint64_t>> cancels;
  for (auto& [node, task] : fx.cancels) cancels[node].push_back(task);
  for (auto& [node, ids] : cancels) {
    auto route = nodeRoute_.find(node);
    if (route == nodeRoute_.end()) continue;
    wire::Encoder e(0, static_cast<unsigned>(64 + ids.size()));
    auto list = e.body().initCancelTasks().initIds(static_cast<unsigned>(ids.size()));
    for (unsigned i = 0; i < ids.size(); ++i) list.set(i, ids[i]);
    sendTo(nodeSocket_, route->second, e.finish());
  }
  std::int64_t now = clock_.wallMs();
  for (auto batch : fx.finishedBatches) {
    store::BatchUpdate u;
    u.batch = batch;
    u.finishedMs = now;
    current_->updates.push_back(u);
    currentInfo_.finishing.push_back(batch);
  }
}

// Results and attempts of withdrawn tasks are not written: their tasks were never stored.
void NexusImpl::dropWithdrawn(store::WriteSet& set) {
  if (withdrawnIds_.empty()) return;
  std::size_t before = set.results.size();
  set.results.erase(std::remove_if(set.results.begin(), set.results.end(),
                                   [&](const store::ResultRecord& r) { return withdrawn(r.task); }),
                    set.results.end());
  set.attempts.erase(std::remove_if(set.attempts.begin(), set.attempts.end(),
                                    [&](const store::AttemptRecord& a) { return withdrawn(a.task); }),
                     set.attempts.end());
  counters_.add("results_withdrawn", before - set.results.size());
}

void NexusImpl::flushWrites() {
  if (!retryWrites_.empty() && clock_.monotonicMs() >= retryAtMono_) {
    for (auto& [set, info] : retryWrites_) {
      std::uint64_t ticket = writer_->submit(std::move(set));
      tickets_[ticket] = std::move(info);
    }
    retryWrites_.clear();
    if (poller_) poller_->touched(writer_->socket());
  }
  if (current_->empty() && currentInfo_.submits.empty() && currentInfo_.finishing.empty() &&
      currentInfo_.cancels.empty()) {
    return;
  }
  std::uint64_t ticket = writer_->submit(std::exchange(current_, std::make_unique<store::WriteSet>()));
  tickets_[ticket] = std::exchange(currentInfo_, TicketInfo{});
  if (poller_) poller_->touched(writer_->socket());
}

void NexusImpl::onCommits() {
  while (auto notice = writer_->receive()) {
    counters_.add("group_commits");
    for (std::uint64_t ticket : notice->committed) {
      auto it = tickets_.find(ticket);
      if (it == tickets_.end()) continue;
      TicketInfo info = std::move(it->second);
      tickets_.erase(it);
      for (auto& ps : info.submits) {
        if (ps.count > 0) durableTaskIdMax_ = std::max(durableTaskIdMax_, ps.firstId + ps.count - 1);
        routing::Batch* b = scheduler_.batch(ps.batch);
        if (!ps.early) pendingSubmitTasks_ -= ps.count;
        if (b && !ps.early) {
          b->pendingAdds -= ps.count;
          for (std::uint32_t i = 0; i < ps.count; ++i) {
            scheduler_.addTask(*b, ps.firstId + i, ps.firstIndex + i, std::string(ps.payloads[i]));
          }
          b->total = std::max<std::uint64_t>(b->total, ps.firstIndex + ps.count);
          if (ps.seal || (b->sealPending && b->pendingAdds == 0)) {
            b->sealPending = false;
            if (!b->sealed) scheduler_.seal(*b, b->total);
          }
          if (b->cancelled) scheduler_.cancel(*b, clock_.wallMs());
        }
        counters_.add("tasks_submitted", ps.count);
        if (ps.routingId.empty()) continue;  // made by the nexus itself (a reduce stage)
        wire::Encoder e(ps.requestId, 32);
        auto ack = e.body().initSubmitAck();
        ack.setBatch(ps.batch);
        ack.setFirstTask(ps.firstId);
        ack.setFirstIndex(ps.firstIndex);
        ack.setCount(ps.count);
        sendTo(clientSocket_, ps.routingId, e.finish());
        if (ps.watch) {
          counters_.add("watches_with_submit");
          auto& list = watchers_[ps.batch];
          bool known = false;
          for (auto& w : list) known = known || w.routingId == ps.routingId;
          if (!known) list.push_back({ps.routingId, ps.requestId});
        }
      }
      for (const auto& c : info.cancels) {
        wire::Encoder e(c.requestId, 32);
        auto ack = e.body().initCancelAck();
        ack.setBatch(c.batch);
        ack.setCancelled(c.cancelled);
        sendTo(clientSocket_, c.routingId, e.finish());
      }
      for (const auto& [batch, c] : info.finals) {
        scheduler_.markDurable(batch, routing::Status::kOk, c[0]);
        scheduler_.markDurable(batch, routing::Status::kFailed, c[1]);
        scheduler_.markDurable(batch, routing::Status::kCancelled, c[2]);
      }
      for (std::uint64_t batch : info.finishing) {
        routing::Batch* b = scheduler_.batch(batch);
        if (!b) continue;
        auto p = scheduler_.progress(*b);
        MESH_INFO("batch %llu finished: %llu succeeded, %llu failed, %llu cancelled",
                  static_cast<unsigned long long>(batch), static_cast<unsigned long long>(p.succeeded),
                  static_cast<unsigned long long>(p.failed), static_cast<unsigned long long>(p.cancelled));
        publish(proto::Event::Kind::BATCH_FINISHED, batch, "", "");
        if (b->spec.mrStage == 1) {
          auto rec = readStore_->batch(batch);
          if (rec && *rec) startReduce(**rec);
        }
        sendProgress(batch, true);
        dropInline(batch);
        scheduler_.forget(batch);
        owners_.erase(batch);
      }
    }
    for (std::size_t i = 0; i < notice->failed.size(); ++i) {
      auto [ticket, error] = notice->failed[i];
      auto it = tickets_.find(ticket);
      if (it == tickets_.end()) continue;
      TicketInfo info = std::move(it->second);
      tickets_.erase(it);
      counters_.add("store_errors");
      if (auto n = storeLog_.admit("write")) {
        MESH_ERROR("a write to %s failed: %s; submits are refused, results are kept and written again%s",
                   dbPath_.c_str(), error.c_str(), util::heldBack(*n).c_str());
      }
      auto& set = notice->failedSets[i];
      // Refuse the submits it carried; keep results and attempts to write again later.
      for (auto& ps : info.submits) {
        if (!ps.early) pendingSubmitTasks_ -= ps.count;
        if (ps.early) {
          // Its tasks may be running or done: take them back, results and all.
          scheduler_.withdraw(ps.batch);
          counters_.add("tasks_withdrawn", ps.count);  // ended ones too: none of them was stored
          owners_.erase(ps.batch);
          dropInline(ps.batch);
          withdrawnIds_.emplace_back(ps.firstId, ps.firstId + ps.count);
          MESH_WARN("batch %llu withdrawn: its %u tasks were dispatched before the failed commit",
                    static_cast<unsigned long long>(ps.batch), ps.count);
        } else if (routing::Batch* b = scheduler_.batch(ps.batch)) {
          b->pendingAdds -= ps.count;
          if (ps.newBatch && b->total == 0 && b->pendingAdds == 0) {
            scheduler_.forget(ps.batch);
            owners_.erase(ps.batch);
          }
        }
        replyError(ps.routingId, ps.requestId, proto::Error::Code::INTERNAL,
                   "the nexus could not store the batch (" + error + "); nothing was accepted: retry");
      }
      if (!withdrawnIds_.empty()) dropWithdrawn(*current_);
      // The refused chunks' batch updates (total, sealed) must not be written either.
      std::set<std::uint64_t> refused;
      for (auto& ps : info.submits) refused.insert(ps.batch);
      info.submits.clear();
      set->newBatches.clear();
      set->chunks.clear();
      set->updates.erase(std::remove_if(set->updates.begin(), set->updates.end(),
                                        [&](const store::BatchUpdate& u) { return u.total && refused.count(u.batch); }),
                         set->updates.end());
      dropWithdrawn(*set);
      if (!set->results.empty() || !set->attempts.empty() || !set->updates.empty()) {
        retryWrites_.emplace_back(std::move(set), std::move(info));
        retryAtMono_ = clock_.monotonicMs() + 1000;
      }
    }
  }
  // Once no write set from before a withdrawal is left, its ranges have nothing more to filter.
  if (!withdrawnIds_.empty() && tickets_.empty() && retryWrites_.empty()) withdrawnIds_.clear();
}

void NexusImpl::startReduce(const store::BatchRecord& map) {
  JobLink& link = jobLinks_[map.id];
  auto stop = [&](const std::string& why) {
    MESH_WARN("job %llu: %s", static_cast<unsigned long long>(map.id), why.c_str());
    link.note = why;
    store::BatchUpdate u;
    u.batch = map.id;
    u.note = why;
    current_->updates.push_back(u);
  };
  if (map.cancelledMs) return stop("cancelled: the reduce stage did not start");
  auto outputs = readStore_->outputs(map.id);
  if (!outputs) return stop("cannot read the map outputs: " + outputs.error().message);
  if (outputs->size() != map.total) {
    return stop(std::to_string(map.total - outputs->size()) + " of " + std::to_string(map.total) +
                " map tasks failed: the reduce stage did not start (see mesh results " + std::to_string(map.id) + ")");
  }
  const std::uint32_t r = map.mrPartitions;
  std::vector<std::vector<std::string_view>> runs(r);
  for (std::size_t i = 0; i < outputs->size(); ++i) {
    auto parts = exec::decodeParts((*outputs)[i]);
    if (!parts || parts->size() != r) {
      return stop("map task " + std::to_string(i) + " returned malformed output: the reduce stage did not start");
    }
    for (std::uint32_t k = 0; k < r; ++k) runs[k].push_back((*parts)[k]);
  }
  auto payloads = std::make_shared<std::vector<std::string>>();
  for (std::uint32_t k = 0; k < r; ++k) {
    payloads->push_back(exec::encodeParts(runs[k]));
    if (payloads->back().size() > config_.maxFrameBytes / 2) {
      return stop("reduce partition " + std::to_string(k) + " would be " + std::to_string(payloads->back().size()) +
                  " bytes, over the limit of " + std::to_string(config_.maxFrameBytes / 2) + ": use more reducers");
    }
  }
  routing::BatchSpec s;
  s.handler = map.mrReducer;
  s.priority = map.priority;
  s.requiredTags = map.requiredTags;
  s.timeoutMs = map.timeoutMs;
  s.maxAttempts = map.maxAttempts;
  s.label = map.label.empty() ? "reduce" : map.label + " (reduce)";
  s.clientKey = map.clientKey;
  s.submittedMs = clock_.wallMs();
  s.mrStage = 2;
  s.mrPartitions = r;
  std::uint64_t id = nextBatchId_++;
  routing::Batch& b = scheduler_.addBatch(id, s);
  b.total = r;  // known now: progress shows 0/R, not 0/0, until the tasks are committed
  owners_[id] = map.clientKey;
  current_->newBatches.push_back(batchRecord(id, b.spec, /*sealed=*/true, r));
  PendingSubmit ps;
  ps.batch = id;
  ps.firstId = nextTaskId_;
  ps.firstIndex = 0;
  ps.count = r;
  ps.seal = true;
  ps.newBatch = true;
  ps.owned = payloads;
  ps.payloads.assign(payloads->begin(), payloads->end());
  nextTaskId_ += r;
  b.pendingAdds += r;
  b.sealPending = true;
  store::TaskChunk chunk;
  chunk.batch = id;
  chunk.firstId = ps.firstId;
  chunk.firstIndex = 0;
  for (const auto& p : *payloads) chunk.payloads.push_back(p);
  chunk.keepAlive = payloads;
  current_->chunks.push_back(std::move(chunk));
  store::BatchUpdate u;
  u.batch = map.id;
  u.nextBatch = id;
  current_->updates.push_back(u);
  link.next = id;
  pendingSubmitTasks_ += r;
  currentInfo_.submitTasks += r;
  currentInfo_.submits.push_back(std::move(ps));
  counters_.add("reduce_stages_started");
  MESH_INFO("job %llu: map stage done; reduce stage is batch %llu with %u tasks",
            static_cast<unsigned long long>(map.id), static_cast<unsigned long long>(id), r);
}

void NexusImpl::timers() {
  std::int64_t now = clock_.monotonicMs();
  if (now >= nextHeartbeat_) {
    nextHeartbeat_ = now + config_.heartbeatMs;
    std::vector<routing::NodeId> dead;
    std::int64_t silentLimit = config_.heartbeatMs * config_.missedBeats;
    for (auto& [rid, c] : conns_) {
      if (now - c.lastSeenMono > silentLimit) {
        dead.push_back(c.id);
        continue;
      }
      wire::Encoder e(0, 32);
      e.body().initHeartbeat();
      if (!sendTo(nodeSocket_, rid, e.finish())) dead.push_back(c.id);
    }
    for (auto id : dead) {
      counters_.add("heartbeats_missed");
      dropNode(id, "no heartbeat for " + std::to_string(silentLimit) + " ms");
    }
  }
  if (now >= nextProgress_) {
    nextProgress_ = now + kProgressEveryMs;
    std::vector<std::uint64_t> watched;
    for (const auto& [batch, list] : watchers_) watched.push_back(batch);
    for (auto batch : watched) sendProgress(batch, false);
  }
  for (auto it = uploads_.begin(); it != uploads_.end();) {
    if (now - it->second.lastMono > kUploadIdleMs) {
      MESH_WARN("dropped bundle upload %llu: silent for %lld ms", static_cast<unsigned long long>(it->first),
                static_cast<long long>(kUploadIdleMs));
      it->second.rx->discard();
      it = uploads_.erase(it);
    } else {
      ++it;
    }
  }
  if (now >= nextKeyCheck_) {
    nextKeyCheck_ = now + kKeyCheckEveryMs;
    if (auto s = reloadKeys(); !s) MESH_WARN("reloading keys failed: %s", s.error().message.c_str());
  }
}

void NexusImpl::publish(proto::Event::Kind kind, std::uint64_t batch, const std::string& node, const std::string& text) {
  wire::Encoder e(0, 64);
  auto ev = e.body().initEvent();
  ev.setKind(kind);
  ev.setBatch(batch);
  ev.setNode(node);
  ev.setText(text);
  try {
    eventsSocket_.send(e.finish(), zmq::send_flags::dontwait);
  } catch (const zmq::error_t&) {
    counters_.add("events_dropped");
  }
}

// ---- bundles ---------------------------------------------------------------------------------
//
// DATA_DIR/bundles/NAME-VERSION.bundle   the verified bundle files served to spores
// DATA_DIR/bundles/index                 one line per name: name version size sha256 publishedMs
// DATA_DIR/bundles/.incoming/upload-N/   receive scratch of a publish in progress
// DATA_DIR/bundles/audit.log             every publish accepted or refused
// DATA_DIR/bundle-state/NAME             the highest version accepted per name (check 4)

util::Status NexusImpl::openBundles() {
  for (const auto& f : config_.trust) {
    if (auto s = trusted_.addFile(f); !s) return util::err("--trust " + f + ": " + s.error().message);
  }
  bundlesDir_ = config_.dataDir + "/bundles";
  if (auto s = bundle::makeDirs(bundlesDir_, 0700); !s) return s;
  (void)bundle::removeTree(bundlesDir_ + "/.incoming");  // uploads do not survive a restart
  auto ledger = bundle::FileVersionLedger::open(config_.dataDir + "/bundle-state");
  if (!ledger) return ledger.error();
  ledger_.emplace(std::move(*ledger));
  auto audit = bundle::AuditLog::open(bundlesDir_ + "/audit.log");
  if (!audit) return audit.error();
  audit_.emplace(std::move(*audit));
  auto index = util::readFile(bundlesDir_ + "/index", 1u << 20);
  if (index) {
    for (const auto& line : util::splitList(*index, '\n')) {
      std::istringstream in(line);
      StoredBundle b;
      if (!(in >> b.name >> b.version >> b.size >> b.manifestSha256 >> b.publishedMs)) {
        MESH_WARN("ignored a malformed line of %s/index: %s", bundlesDir_.c_str(), line.c_str());
        continue;
      }
      b.path = bundlesDir_ + "/" + b.name + "-" + std::to_string(b.version) + ".bundle";
      struct stat st {};
      if (::stat(b.path.c_str(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) != b.size) {
        MESH_WARN("bundle file %s is missing or has the wrong size: not served", b.path.c_str());
        continue;
      }
      bundles_[b.name] = b;
    }
  }
  if (!trusted_.empty() || !bundles_.empty()) {
    MESH_INFO("bundles: %zu trusted release keys, %zu bundles served", trusted_.size(), bundles_.size());
  }
  return {};
}

util::Status NexusImpl::saveBundleIndex() {
  std::string text;
  for (const auto& [name, b] : bundles_) {
    text += b.name + " " + std::to_string(b.version) + " " + std::to_string(b.size) + " " + b.manifestSha256 + " " +
            std::to_string(b.publishedMs) + "\n";
  }
  return util::writeFileAtomic(bundlesDir_ + "/index", text, 0600);
}

void NexusImpl::fillBundleRef(proto::BundleRef::Builder out, const StoredBundle& b) {
  out.setName(b.name);
  out.setVersion(b.version);
  out.setSize(b.size);
  out.setManifestSha256(b.manifestSha256);
  out.setPublishedMs(b.publishedMs);
}

void NexusImpl::refusePublish(const std::string& routingId, std::uint64_t requestId, const bundle::Refused& r) {
  counters_.add("bundles_refused");
  MESH_WARN("refused a published bundle: %s", r.describe().c_str());
  bundle::AuditEvent ev{"refused", r.name, r.version, bundle::refusalName(r.reason), r.message, r.keyFingerprint};
  if (auto s = audit_->append(ev, clock_.wallMs()); !s) MESH_WARN("audit log: %s", s.error().message.c_str());
  publishRefusals_.push_back(r);
  while (publishRefusals_.size() > kPublishRefusalsKept) publishRefusals_.pop_front();
  replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST, "bundle refused: " + r.describe());
}

void NexusImpl::onBundleUpload(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                               proto::BundleUpload::Reader upload) {
  auto role = roleOf(key);
  if (!role || *role != store::Role::kAdmin) {
    counters_.add("bundles_forbidden");
    replyError(routingId, requestId, proto::Error::Code::FORBIDDEN,
               "publishing a bundle needs an admin key (mesh keys accept FP --role admin)");
    return;
  }
  if (trusted_.empty()) {
    replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST,
               "this nexus trusts no release key: start it with --trust release.key.pub");
    return;
  }
  auto data = wire::view(upload.getData());
  if (data.size() > kBundleChunkMax) {
    replyError(routingId, requestId, proto::Error::Code::TOO_LARGE,
               "upload chunks are at most " + std::to_string(kBundleChunkMax) + " bytes");
    return;
  }
  std::uint64_t id = upload.getUpload();
  if (id == 0) {
    if (upload.getOffset() != 0) {
      replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST, "a new upload starts at offset 0");
      return;
    }
    if (uploads_.size() >= kMaxUploads) {
      replyError(routingId, requestId, proto::Error::Code::UNAVAILABLE,
                 std::to_string(kMaxUploads) + " publishes are in progress: retry later");
      return;
    }
    id = nextUpload_++;
    std::string scratch = bundlesDir_ + "/.incoming/upload-" + std::to_string(id);
    (void)bundle::removeTree(scratch);
    auto rx = bundle::BundleReceiver::open(scratch, bundle::ReceiveLimits{}, trusted_, clock_);
    if (!rx) {
      MESH_ERROR("cannot start a bundle upload: %s", rx.error().message.c_str());
      replyError(routingId, requestId, proto::Error::Code::INTERNAL, "cannot start the upload; see the nexus log");
      return;
    }
    Upload u;
    u.key = key;
    u.rx = std::make_unique<bundle::BundleReceiver>(std::move(*rx));
    uploads_[id] = std::move(u);
  }
  auto it = uploads_.find(id);
  if (it == uploads_.end() || it->second.key != key) {
    replyError(routingId, requestId, proto::Error::Code::NOT_FOUND,
               "no upload " + std::to_string(id) + " (it was idle too long or the nexus restarted): publish again");
    return;
  }
  Upload& up = it->second;
  up.lastMono = clock_.monotonicMs();
  bundle::BundleReceiver& rx = *up.rx;
  if (upload.getOffset() != rx.offset()) {
    replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST,
               "upload " + std::to_string(id) + " expects offset " + std::to_string(rx.offset()));
    return;
  }
  if (!data.empty() && !rx.feed(data)) {
    bundle::Refused r = *rx.refused();
    rx.discard();
    uploads_.erase(it);
    return refusePublish(routingId, requestId, r);
  }
  if (!upload.getLast()) {
    wire::Encoder e(requestId, 32);
    auto ack = e.body().initBundleUploadAck();
    ack.setUpload(id);
    ack.setReceived(rx.offset());
    sendTo(clientSocket_, routingId, e.finish());
    return;
  }
  // The last chunk: every check a spore runs, with this nexus's ledger.
  auto verified = rx.finish(*ledger_);
  if (!verified) {
    bundle::Refused r = verified.refused();
    rx.discard();
    uploads_.erase(it);
    return refusePublish(routingId, requestId, r);
  }
  const bundle::ManifestInfo& m = verified->manifest;
  StoredBundle b;
  b.name = m.name;
  b.version = m.version;
  b.manifestSha256 = verified->manifestSha256;
  b.publishedMs = clock_.wallMs();
  b.path = bundlesDir_ + "/" + m.name + "-" + std::to_string(m.version) + ".bundle";
  struct stat st {};
  if (::stat(verified->bundlePath.c_str(), &st) == 0) b.size = static_cast<std::uint64_t>(st.st_size);
  bundle::SeenVersion seen;
  seen.version = m.version;
  seen.manifestSha256 = verified->manifestSha256;
  seen.installed = true;
  if (auto old = ledger_->seen(m.name); old && *old) seen.bad = (*old)->bad;
  util::Status stored = rx.keepBundleFile(b.path);
  if (stored) stored = ledger_->record(m.name, seen);
  std::string oldPath;
  if (auto prev = bundles_.find(m.name); prev != bundles_.end()) oldPath = prev->second.path;
  if (stored) {
    bundles_[m.name] = b;
    stored = saveBundleIndex();
  }
  uploads_.erase(it);
  if (!stored) {
    MESH_ERROR("cannot store bundle %s version %llu: %s", m.name.c_str(), static_cast<unsigned long long>(m.version),
               stored.error().message.c_str());
    replyError(routingId, requestId, proto::Error::Code::INTERNAL, "the nexus could not store the bundle; see its log");
    return;
  }
  if (!oldPath.empty() && oldPath != b.path) ::unlink(oldPath.c_str());
  bundle::AuditEvent ev{"installed", m.name, m.version, "", "published", verified->keyFingerprint};
  if (auto s = audit_->append(ev, clock_.wallMs()); !s) MESH_WARN("audit log: %s", s.error().message.c_str());
  counters_.add("bundles_published");
  MESH_INFO("bundle %s version %llu published (%llu bytes, signed by %s): announcing it", m.name.c_str(),
            static_cast<unsigned long long>(m.version), static_cast<unsigned long long>(b.size),
            verified->keyFingerprint.c_str());
  wire::Encoder e(requestId, 64);
  auto ack = e.body().initBundleUploadAck();
  ack.setUpload(id);
  ack.setReceived(b.size);
  ack.setDone(true);
  fillBundleRef(ack.initBundle(), b);
  sendTo(clientSocket_, routingId, e.finish());
  publish(proto::Event::Kind::BUNDLE_AVAILABLE, 0, "", m.name + " " + std::to_string(m.version));
}

void NexusImpl::onBundleFetch(NodeConn& conn, std::uint64_t requestId, proto::BundleFetch::Reader fetch) {
  const std::string& routingId = conn.routingId;
  std::string name(wire::view(fetch.getName()));
  wire::Encoder e(requestId, 64);
  auto chunk = e.body().initBundleChunk();
  chunk.setName(name);
  chunk.setVersion(fetch.getVersion());
  chunk.setOffset(fetch.getOffset());
  auto it = bundles_.find(name);
  if (it == bundles_.end() || it->second.version != fetch.getVersion() || fetch.getOffset() > it->second.size) {
    chunk.setMissing(true);
    sendTo(nodeSocket_, routingId, e.finish());
    return;
  }
  const StoredBundle& b = it->second;
  chunk.setSize(b.size);
  std::size_t n = static_cast<std::size_t>(
      std::min<std::uint64_t>({fetch.getMaxBytes(), kBundleChunkMax, b.size - fetch.getOffset()}));
  // A spore reads its chunks before it asks past them (at most 4 requests outstanding), so
  // served - (highest offset asked - first offset asked) stays within a few chunks. One that
  // asks again and again without reading would grow the send queue by a MiB a request. So,
  // per connection and bundle version: at most kFetchSlackBytes served past the progress; a
  // fetch that starts again lower (a retry after a timeout, a spool discarded) starts a new
  // count, at most kFetchRestarts times; and at most kFetchRestarts + 1 times the bundle in
  // all. Past that, its fetches of the bundle are ignored until it reconnects.
  NodeConn::Fetch& f = conn.fetches[name];
  if (f.version != fetch.getVersion() || f.servedTotal == 0) {
    f = NodeConn::Fetch{};
    f.version = fetch.getVersion();
    f.firstOffset = f.highestOffset = fetch.getOffset();
  } else if (fetch.getOffset() < f.highestOffset) {
    ++f.restarts;
    f.firstOffset = f.highestOffset = fetch.getOffset();
    f.served = 0;
  }
  f.highestOffset = std::max<std::uint64_t>(f.highestOffset, fetch.getOffset());
  if (f.served + n > (f.highestOffset - f.firstOffset) + kFetchSlackBytes || f.restarts > kFetchRestarts ||
      f.servedTotal + n > (kFetchRestarts + 1) * b.size + kFetchSlackBytes) {
    counters_.add("bundle_fetches_refused");
    if (!f.refused) {
      f.refused = true;
      MESH_WARN("spore %s asks for bundle chunks faster than it reads them (%llu bytes of %s version %llu "
                "served past its progress, %u restarts): its fetches are ignored until it reconnects",
                conn.name.c_str(),
                static_cast<unsigned long long>(f.served > f.highestOffset - f.firstOffset
                                                    ? f.served - (f.highestOffset - f.firstOffset) : 0),
                name.c_str(), static_cast<unsigned long long>(f.version), static_cast<unsigned>(f.restarts));
    }
    return;
  }
  f.served += n;
  f.servedTotal += n;
  bundle::UniqueFd fd(::open(b.path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    MESH_ERROR("cannot read bundle file %s: %s", b.path.c_str(), std::strerror(errno));
    chunk.setMissing(true);
    sendTo(nodeSocket_, routingId, e.finish());
    return;
  }
  auto data = chunk.initData(static_cast<unsigned>(n));
  auto got = bundle::preadAll(fd.get(), reinterpret_cast<char*>(data.begin()), n, fetch.getOffset(), b.path);
  if (!got || *got != n) {
    MESH_ERROR("short read of bundle file %s", b.path.c_str());
    chunk.setMissing(true);
  }
  counters_.add("bundle_bytes_served", n);
  sendTo(nodeSocket_, routingId, e.finish());
}

void NexusImpl::onBundleReport(const NodeConn& conn, proto::BundleReport::Reader report) {
  std::string name(wire::view(report.getName()));
  if (!bundle::isValidBundleName(name)) {
    counters_.add("bad_bundle_reports");
    return;
  }
  SporeBundle& s = sporeBundles_[name][conn.key];
  s.spore = conn.name;
  s.fingerprint = conn.fingerprint;
  s.running = report.getRunning();
  s.rollbacks = report.getRollbacks();
  std::string event(wire::view(report.getEvent()));
  if (event == "running" && !s.event.empty() && s.event != "running") return;  // keep the last event
  s.event = event.substr(0, 32);
  s.version = report.getVersion();
  s.reason = bundle::printable(wire::view(report.getReason()), 64);
  s.message = bundle::printable(wire::view(report.getMessage()), 300);
  if (event != "running") {
    MESH_INFO("spore %s: bundle %s version %llu %s%s%s", conn.name.c_str(), name.c_str(),
              static_cast<unsigned long long>(s.version), s.event.c_str(), s.reason.empty() ? "" : ": ",
              s.reason.c_str());
  }
}

void NexusImpl::onBundles(const std::string& routingId, std::uint64_t requestId) {
  std::set<std::string> names;
  for (const auto& [name, b] : bundles_) names.insert(name);
  for (const auto& [name, m] : sporeBundles_) names.insert(name);
  std::set<std::string> live;
  for (const auto& [rid, c] : conns_) live.insert(c.key);
  wire::Encoder e(requestId, 1024);
  auto reply = e.body().initBundlesReply();
  auto list = reply.initBundles(static_cast<unsigned>(names.size()));
  unsigned i = 0;
  for (const auto& name : names) {
    auto out = list[i++];
    auto b = bundles_.find(name);
    if (b != bundles_.end()) fillBundleRef(out.initBundle(), b->second);
    else out.initBundle().setName(name);
    auto states = sporeBundles_.find(name);
    std::size_t n = states == sporeBundles_.end() ? 0 : states->second.size();
    auto spores = out.initSpores(static_cast<unsigned>(n));
    unsigned j = 0;
    if (n == 0) continue;
    for (const auto& [key, s] : states->second) {
      auto o = spores[j++];
      o.setSpore(s.spore);
      o.setFingerprint(s.fingerprint);
      o.setRunning(s.running);
      o.setEvent(s.event);
      o.setReason(s.reason);
      o.setMessage(s.message);
      o.setVersion(s.version);
      o.setRollbacks(s.rollbacks);
      o.setConnected(live.count(key) > 0);
    }
  }
  auto refusals = reply.initRefusals(static_cast<unsigned>(publishRefusals_.size()));
  i = 0;
  for (const auto& r : publishRefusals_) {
    auto o = refusals[i++];
    o.setName(bundle::printable(r.name, 64));
    o.setVersion(r.version);
    o.setEvent("refused");
    o.setReason(bundle::refusalName(r.reason));
    o.setMessage(r.message);
  }
  sendTo(clientSocket_, routingId, e.finish());
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
