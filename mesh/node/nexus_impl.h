// The nexus's implementation class, shared by its source files: nexus.cpp (set-up, the loop,
// the public Nexus), nexus_nodes.cpp (the node port), nexus_clients.cpp (the client port),
// nexus_work.cpp (dispatch, commits, map-reduce stages, timers) and nexus_bundles.cpp (signed
// bundles). Private to mesh/node: include it from those files only.
//
// Thread rule: as nexus.h says, one actor; every member runs on the thread of run() (start()
// before it), except the StoreWriter's and ZapHandler's own threads, reached by messages.
#pragma once

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
#include "mesh/routing/dependencies.h"
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

// The nexus's own constants and records, shared by its source files (nexus*.cpp) only.
namespace nexus_detail {

constexpr int kMaxMessagesPerTurn = 4096;
// Resting node port: once nothing but heartbeats has come from the spores for kNodeRestAfterMs
// and no task is queued or running, the loop reads the node port at most once every
// kNodeRestMs (or a quarter of the heartbeat interval, if shorter) instead of waking for every
// heartbeat; the first message after the quiet waits at most that long, and anything else
// (a result, a hello, a fetch, a queued task) ends the rest. Heartbeats arrive spread over the
// second (one per spore), so this turns a thousand wake-ups a second into about twenty.
constexpr std::int64_t kNodeRestAfterMs = 1000;
constexpr std::int64_t kNodeRestMs = 50;
constexpr std::uint32_t kResultPageMax = 1000;
constexpr std::size_t kResultPageBytes = 8u << 20;
// `mesh batches` (protocol section 4.19): at most this many batches per reply, and batch rows
// looked at per request (ids): a request costs the loop a bounded read whatever its filter.
constexpr std::uint32_t kBatchesPageMax = 1000;
constexpr std::uint64_t kBatchesScanIds = 5000;
constexpr std::size_t kLabelMax = 256;  // a Submit's label is cut to this many bytes
constexpr std::size_t kAssignFrameBytes = 8u << 20;
constexpr std::uint32_t kMaxTasksPerSubmit = 1'000'000;
constexpr std::int64_t kProgressEveryMs = 250;
constexpr std::int64_t kKeyCheckEveryMs = 1000;
constexpr std::int64_t kRecallCheckEveryMs = 250;  // Scheduler::recalls (docs/protocol.md section 4.20)
constexpr std::size_t kHandBackMax = 65536;        // ids in one handBack (more: refused as malformed)
constexpr std::size_t kBundleChunkMax = 1u << 20;      // largest upload chunk and fetch reply
constexpr std::uint64_t kFetchSlackBytes = 16u << 20;  // bundle bytes served past a spore's progress (onBundleFetch)
constexpr std::uint64_t kFetchRestarts = 8;            // fetches of one bundle started again lower, per connection
constexpr std::size_t kMaxUploads = 4;                 // publishes in progress at once
constexpr std::int64_t kUploadIdleMs = 60'000;         // an upload silent this long is dropped
constexpr std::size_t kPublishRefusalsKept = 20;
// Bundle names one spore may report beyond the bundles the nexus serves (onBundleReport).
constexpr std::size_t kSporeBundlesSlack = 16;
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
// Commit hold (protocol section 4.8): the write set that carries such a batch waits for the
// batch's results, at most as long as a commit takes (a running average of the writer's, kept
// within these bounds), so that the submit and its results share one flush.
constexpr std::int64_t kCommitHoldMinUs = 100;
constexpr std::int64_t kCommitHoldMaxUs = 1000;
// A retry batch's tasks go from the store into the scheduler at most this many, or this many
// payload bytes, per loop turn (a step may pass the byte budget by one payload), so that a
// large retry neither stalls the loop nor holds more than one step in memory beyond the
// scheduler's own copies.
constexpr std::uint64_t kRetryLoadTasks = 10'000;
constexpr std::size_t kRetryLoadBytes = 16u << 20;
// A reduce stage whose submit the store refused (a full disk) is started again this much later,
// doubling per attempt up to the maximum (NexusImpl::retryReduces).
constexpr std::int64_t kReduceRetryFirstMs = 1000;
constexpr std::int64_t kReduceRetryMaxMs = 30'000;

// A hello's lists (protocol section 3.3, `hello`): longer ones are refused as malformed.
constexpr std::size_t kHelloHandlersMax = 10000;
constexpr std::size_t kHelloTagsMax = 256;
constexpr std::size_t kHelloTasksMax = 65536;  // `running`, `done`
constexpr std::size_t kHeartbeatStartsMax = 4096;  // Heartbeat.started (the spore's limit too)

using Which = proto::Envelope::Body::Which;

// A hello read once into plain values (NexusImpl::readHello).
struct HelloFields {
  std::string name, foundBy, softwareVersion;
  std::uint16_t slots = 0;
  std::vector<std::string> handlers, tags;
  std::vector<std::pair<std::uint64_t, std::uint8_t>> running;  // task id, attempt
  std::vector<std::uint64_t> done;
  std::uint32_t pid = 0;
  std::uint64_t instance = 0;  // 0: a spore that does not send one
};

struct NodeConn {
  routing::NodeId id = routing::kNoNode;
  std::string routingId;
  std::string key;
  std::string fingerprint;
  std::string name, address, foundBy, softwareVersion;
  std::vector<std::string> handlers, tags;
  std::uint16_t slots = 0;
  std::uint32_t pid = 0;        // from its hello
  std::uint64_t instance = 0;   // from its hello: which process of the spore (0: not sent)
  std::int64_t lastSeenMono = 0;
  std::int64_t connectedWallMs = 0;
  // When a hello with this connection's key from another connection was last refused (-1:
  // never); if this one has sent nothing since when the newcomer tries again, it is presumed
  // dead and replaced.
  std::int64_t keyConflictMono = -1;
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
  std::string warning;  // goes with the ack (SubmitAck.warning)
  std::string routingId;
  std::uint64_t requestId = 0;
  std::uint64_t batch = 0;
  std::uint64_t firstId = 0, firstIndex = 0;
  std::uint32_t count = 0;
  bool seal = false;
  bool watch = false;
  bool newBatch = false;
  bool early = false;  // its tasks went to the scheduler before the commit
  std::uint16_t dependencies = 0;  // of a new batch: --after and --after-done ids (SubmitAck)
  // A retry (onRetry): the batch whose failed tasks the store copies; no payloads here. Its
  // tasks are loaded from the store in steps once committed (loadRetries), and it is acked
  // with a RetryAck.
  std::uint64_t retryOf = 0;
  // A reduce stage (made by the nexus, no routingId): the job's map batch.
  std::uint64_t reduceOf = 0;
  // Set when the writer did not store this chunk although its set was committed (an earlier
  // chunk of the batch was refused, CommitNotice::refusedChunks): refused like a failed one.
  std::string refused;
  // The payloads, read from the message once (every read of a Cap'n Proto message counts
  // against its traversal limit): views into `frame` (a client's submit) or `owned` (a reduce
  // stage the nexus made), which they keep alive.
  std::vector<std::string_view> payloads;
  std::shared_ptr<wire::Decoded> frame;
  std::shared_ptr<std::vector<std::string>> owned;
};

// A committed retry batch whose tasks are still being loaded from the store into the scheduler,
// a step per loop turn (NexusImpl::loadRetries).
struct RetryLoad {
  std::uint64_t batch = 0;
  std::uint64_t nextId = 0;  // the first task id not loaded yet
  std::uint64_t left = 0;    // tasks not loaded yet
};

// A map-reduce job's link from its map batch to its reduce batch, or why there is none.
// `pending`: the reduce stage is made but not yet stored (its submit waits for its commit, or
// is to be tried again after the store refused it); the map stage is not finished for clients
// until then, and `next` is 0: a client only ever follows a reduce batch that exists.
struct JobLink {
  std::uint64_t next = 0;
  std::string note;
  bool pending = false;
};

// A reduce stage to start again (the store refused its submit): when, and how many refusals.
struct ReduceRetry {
  std::uint32_t refusals = 0;
  std::int64_t atMono = 0;  // INT64_MAX while an attempt waits for its commit
  // The reduce tasks' payloads built for the refused attempt: the next one reuses them instead
  // of reading every map output again (up to --max-shuffle, on the loop).
  std::shared_ptr<std::vector<std::string>> payloads;
};

// What a write ticket carries besides its WriteSet: what to do once it is durable.
// A CancelAck waiting for the commit of the cancel it answers.
struct PendingCancel {
  std::string routingId;
  std::uint64_t requestId = 0;
  std::uint64_t batch = 0;
  std::uint64_t cancelled = 0;
  // Set when the batch turned out never stored (its submit was refused after the cancel came):
  // the client gets this as a NOT_FOUND error instead of an ack.
  std::string refused;
};

struct TicketInfo {
  std::vector<PendingSubmit> submits;
  std::vector<PendingCancel> cancels;
  std::vector<std::pair<std::string, zmq::message_t>> replies;  // (routing id, reply) to send once durable
  std::map<std::uint64_t, std::array<std::uint64_t, 3>> finals;  // batch -> ok, failed, cancelled
  std::vector<std::uint64_t> finishing;
  std::uint64_t submitTasks = 0;
};

// The row of a new batch, from the spec the scheduler holds (defaults already applied).
inline store::BatchRecord batchRecord(std::uint64_t id, const routing::BatchSpec& s, bool sealed, std::uint64_t total) {
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
  if (s.retryOf != 0) rec.retryOf = s.retryOf;
  rec.after = s.after;
  rec.afterDone = s.afterDone;
  return rec;
}

inline bool validName(std::string_view s, std::size_t max) {
  if (s.empty() || s.size() > max) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
  });
}


inline std::string portName(const std::string& domain) {
  if (domain == kNodeDomain) return "node";
  if (domain == kClientDomain) return "client";
  return "events";
}

}  // namespace nexus_detail

// The nexus's files use these names unqualified; this header is private to them.
using namespace nexus_detail;

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
  void onHello(const std::string& routingId, const std::string& key, const std::string& address,
               proto::Hello::Reader hello);
  // What is wrong with the hello, or nothing; `out` is filled as far as it was read.
  std::optional<std::string> readHello(proto::Hello::Reader hello, HelloFields& out);
  void onResults(routing::NodeId from, proto::Results::Reader results);
  void onLeaving(NodeConn& conn, proto::Leaving::Reader leaving);
  void onHandBack(NodeConn& conn, proto::TaskAttempts::Reader handBack);
  // The periodic recall check: sends what Scheduler::recalls() decides, logs the nodes that
  // left a recall unanswered.
  void checkRecalls();
  // Sends one recall to its node and logs it (one line).
  void sendRecall(const routing::Recall& r);
  void onDrain(const std::string& routingId, const std::string& key, std::uint64_t requestId,
               proto::DrainRequest::Reader req);
  void onClientMessage(const std::string& routingId, zmq::message_t& body);
  void serveClient(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                   wire::Decoded decoded);
  void onSubmit(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                std::shared_ptr<wire::Decoded> frame);
  void onWatch(const std::string& routingId, std::uint64_t requestId, std::uint64_t batch);
  void onFetchResults(const std::string& routingId, std::uint64_t requestId, proto::FetchResults::Reader req);
  void onStatus(const std::string& routingId, std::uint64_t requestId);
  void onNodes(const std::string& routingId, std::uint64_t requestId, bool all);
  void onTask(const std::string& routingId, std::uint64_t requestId, std::uint64_t taskId);
  void onTaskAt(const std::string& routingId, std::uint64_t requestId, proto::TaskRef::Reader at);
  void onBatches(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                 proto::BatchesRequest::Reader req);
  void onCancel(const std::string& routingId, const std::string& key, std::uint64_t requestId, std::uint64_t batch);
  void onRetry(const std::string& routingId, const std::string& key, std::uint64_t requestId, proto::Retry::Reader req);
  // Whether some live spore can run `handler`: if not, the refusal (code, message); if it can
  // but none has every tag, `warning` says so (a tagged spore may join later).
  std::optional<std::pair<proto::Error::Code, std::string>> checkServable(const std::string& handler,
                                                                          const std::vector<std::string>& tags,
                                                                          std::string* warning);
  // Loads the next step of the committed retry batches' tasks into the scheduler.
  void loadRetries();

  // ---- batches that wait for others (`mesh submit --after`, protocol section 4.21)
  // What the nexus knows of a batch for routing::judgeDependencies: in memory means not finished;
  // else its row (kept counts, stage link). A store that cannot be read answers "not finished".
  routing::BatchEnd endOf(std::uint64_t batch);
  routing::BatchEnd readEnd(std::uint64_t batch);  // endOf without the cache
  // While one wake judges many waiting batches, the ends looked up so far (each is read from
  // the store at most once per wake, however many batches wait on it).
  std::unordered_map<std::uint64_t, routing::BatchEnd>* endCache_ = nullptr;
  // The refusal of a new batch's dependency lists (normalized), or nothing. `held` says whether
  // the batch must wait; `warning` what its ack says then.
  std::optional<std::pair<proto::Error::Code, std::string>> checkDependencies(const std::vector<std::uint64_t>& after,
                                                                              const std::vector<std::uint64_t>& afterDone,
                                                                              routing::Verdict* verdict);
  // Judges a held batch again: it waits on (registered in waiters_), is released, or is cancelled.
  void judgeWaiting(std::uint64_t batch);
  // `ended` has finished (its end committed) or is gone: judges the batches that waited on it.
  void wakeWaiters(std::uint64_t ended);
  // Registers a held batch's verdict (kWait) in waiters_ and waitingFor_.
  void holdOn(std::uint64_t batch, const routing::Verdict& v);
  // "batch 12 (--after)" ... : what the held batch still waits for, in one line.
  std::string waitingLine(std::uint64_t batch);
  // Cancels a batch in memory (mesh cancel, or a dependency that failed: `why`, stored as its
  // note and as its tasks' error): seals it, ends its tasks, writes cancelled_ms. Returns the
  // tasks it ended.
  std::uint64_t cancelLive(routing::Batch& b, const std::string& why);

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
  // Sends `assign` messages for these tasks (under their current attempt) to a node, in frames
  // of about kAssignFrameBytes. False if a frame could not be sent (the node is gone).
  bool sendAssign(const std::string& routingId, const routing::Task* const* tasks, std::size_t count);
  void collectEffects();
  // Hands the current write set to the writer, unless it is held for an early batch's results
  // (commit hold); `force` hands it over regardless (when the nexus stops).
  void flushWrites(bool force = false);
  // Whether the current write set is still held; ends the hold when it should not be.
  bool holdingWrites();
  // Microseconds left of the current hold (0 when there is none).
  std::int64_t holdLeftUs() const;
  void onCommits();
  // A submit the store refused (its set failed, or the writer dropped its chunk because an
  // earlier one of the batch was refused): undoes what it did in memory and tells its client.
  // A chunk of a batch that exists already breaks that batch: it is cancelled and, once no
  // chunk of it waits, sealed at the tasks stored. A refused reduce stage is tried again later.
  void refuseSubmit(PendingSubmit& ps, const std::string& error);
  // Cancels of `batch` not yet acknowledged get `why` as their answer (the batch was never stored).
  void refuseCancels(std::uint64_t batch, const std::string& why);
  // Starts again the reduce stages whose retry is due.
  void retryReduces();
  // Whether a map stage's reduce stage is stored (or the reason it has none is known).
  bool reduceLinked(std::uint64_t mapBatch) const;
  void timers();
  // nodeFault: the node died or went silent (charged to its tasks toward quarantine), as
  // opposed to a reconnection or a revoked key.
  void dropNode(routing::NodeId id, const std::string& why, bool nodeFault = true,
                const std::unordered_set<std::uint64_t>* stillHeld = nullptr);
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
  // The Progress of a batch that is not in memory (finished), from its row alone: its kept
  // (final) counts; queued and running 0; no expiry line.
  void fillStoredProgress(proto::Progress::Builder out, const store::BatchRecord& rec);
  // Whether the batch has finished (every result committed), as progressOf(...).finished says,
  // and whether it was cancelled, without counting its results. Both false for an unknown batch.
  struct BatchEnd {
    bool finished = false, cancelled = false;
  };
  BatchEnd batchEnd(std::uint64_t batchId);
  std::optional<routing::Progress> progressOf(std::uint64_t batchId);
  std::optional<store::Role> roleOf(const std::string& key);
  // One line for a batch whose tasks and results were removed (--keep-finished).
  std::string expiryLine(const store::BatchRecord& rec) const;

  zmq::context_t& ctx_;
  config::NexusConfig config_;
  const util::Clock& clock_;
  wire::Limits limits_;
  routing::Scheduler scheduler_;
  util::Counters counters_;

  crypto::KeyPair serverKeys_;
  util::UniqueFd dataDirLock_;  // one nexus per data dir
  std::string dbPath_;
  store::Db readDb_;
  std::unique_ptr<store::PayloadReader> payloadReader_;
  std::unique_ptr<store::TaskStore> readStore_;
  std::unique_ptr<store::KeyStore> keys_;
  std::int64_t keysVersion_ = -1;
  std::unordered_map<std::string, store::Role> accepted_;

  std::unique_ptr<transport::ZapHandler> zap_;
  // Curve handshakes that fail before ZAP (a peer pinned to another nexus key): counted, logged.
  std::unique_ptr<transport::ServerHandshakeWatch> nodeHandshakes_, clientHandshakes_;
  // True when it read every event waiting.
  bool onHandshakeFailures(transport::ServerHandshakeWatch& watch, const char* port);
  // Refusals of unknown keys: the ZAP thread decides with it, the loop reads its count.
  std::shared_ptr<transport::RefusalGate> zapGate_ = std::make_shared<transport::RefusalGate>();
  std::unique_ptr<store::StoreWriter> writer_;
  // The loop's wait, filled by run(); every send on a socket it watches goes through sendTo() or
  // flushWrites(), which tell it (Poller's contract; before run() it watches nothing).
  transport::Poller poller_;
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
  util::LogThrottle nodeLog_{clock_, 10'000};  // refused node messages: a line per kind each 10 s
  std::map<std::uint64_t, JobLink> jobLinks_;  // map batch -> its reduce stage
  std::map<std::uint64_t, ReduceRetry> reduceRetries_;  // map batch -> its refused reduce stage
  std::deque<RetryLoad> retryLoads_;           // committed retries still loading, oldest first
  // Held batches (protocol section 4.21): by the batch whose end each waits on (a named one, or
  // a job's reduce stage), and what each still waits for (named ids). Entries of a batch that
  // left memory or was released are dropped when found (wakeWaiters) or at once.
  std::map<std::uint64_t, std::set<std::uint64_t>> waiters_;
  std::map<std::uint64_t, std::vector<std::uint64_t>> waitingFor_;
  // Held batches judged while a dependency's row could not be read (a store error): judged
  // again at the next heartbeat tick, as the dependency may have ended and will not wake them.
  std::set<std::uint64_t> rejudge_;
  bool endReadFailed_ = false;  // set by readEnd, looked at by judgeWaiting

  std::uint64_t nextBatchId_ = 1;
  std::uint64_t nextTaskId_ = 1;
  std::uint64_t pendingSubmitTasks_ = 0;
  std::uint64_t durableTaskIdMax_ = 0;  // the highest task id known committed
  std::int64_t holdSinceUs_ = -1;       // when the current write set began to wait (commit hold)
  std::int64_t commitUsAverage_ = 300;  // the writer's commit time, a running average

  std::unique_ptr<store::WriteSet> current_ = std::make_unique<store::WriteSet>();
  TicketInfo currentInfo_;
  std::map<std::uint64_t, TicketInfo> tickets_;

  std::int64_t startedMono_ = 0;
  std::int64_t nextHeartbeat_ = 0, nextProgress_ = 0, nextKeyCheck_ = 0, nextRecallCheck_ = 0;
  // The resting node port (kNodeRestAfterMs): when it last had a reason to be prompt (a node
  // message other than a heartbeat, or tasks queued or running), and when a resting loop reads
  // it next.
  std::int64_t nodesBusyMono_ = 0, nodesNextReadMono_ = 0;
  bool nodesResting_ = false;
  // Drained node keys (z85) and since when (wall ms), as the store keeps them (keys.drained_ms).
  std::map<std::string, std::int64_t> drained_;
  // Node keys whose spore was connected since this nexus started and is not now: its name and
  // address then, and when it went (wall ms), for `mesh nodes --all`. At most one entry per
  // accepted node key (an entry goes when its key connects again or is no longer accepted).
  struct GoneNode {
    std::string name, address;
    std::int64_t goneWallMs = 0;
  };
  std::unordered_map<std::string, GoneNode> goneNodes_;
  void rememberGone(const NodeConn& c);

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


}  // namespace mesh::node
