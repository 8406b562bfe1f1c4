#include "mesh/node/spore.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "mesh/bundle/installer.h"
#include "mesh/bundle/receiver.h"
#include "mesh/bundle/release_key.h"
#include "mesh/crypto/keys.h"
#include "mesh/discovery/beacon_udp.h"
#include "mesh/exec/mapreduce.h"
#include "mesh/exec/serve.h"
#include "mesh/node/common.h"
#include "mesh/routing/run_queue.h"
#include "mesh/transport/inproc.h"
#include "mesh/transport/poller.h"
#include "mesh/transport/sockets.h"
#include "mesh/util/bytes.h"
#include "mesh/util/clock.h"
#include "mesh/util/counters.h"
#include "mesh/util/log.h"
#include "mesh/wire/codec.h"

namespace mesh::node {

namespace {

using Which = proto::Envelope::Body::Which;
constexpr std::size_t kResultFrameBytes = 8u << 20;
constexpr std::size_t kMaxResultsPerFrame = 4096;
constexpr int kMaxMessagesPerTurn = 1024;
constexpr std::uint32_t kFetchChunkBytes = 256u << 10;  // one bundle fetch request
constexpr unsigned kFetchWindow = 4;                    // fetch requests outstanding at once
constexpr std::int64_t kBundleCheckEveryMs = 10'000;    // ask the nexus for its bundle list
constexpr std::int64_t kFetchStallMs = 10'000;          // re-ask chunks unanswered this long
constexpr std::size_t kInstantPayloadMax = 16u << 10;  // built-ins this small may run on the loop
constexpr std::size_t kInstantQueueMax = 2;            // ... when no more than this is queued
// Built-ins this small take well under 1 ms (sha256 of 256 KiB: 0.13 ms with the CPU's SHA
// extensions, 0.7 ms with libsodium's portable code): no report before them (quickTask).
constexpr std::size_t kQuickPayloadMax = 256u << 10;
// A handler one of whose tasks took this long counts as slow for its next kSlowMemory tasks:
// its tasks go to workers one by one, not in runs (runs are for microsecond tasks; a slow task
// in one holds back the start of the tasks after it, though not the results of those before it:
// see quickTask).
constexpr std::uint64_t kSlowTaskUs = 1000;
// The built-ins that take microseconds (a long sha256 payload aside): echo, sha256, fail.
bool microBuiltin(const std::string& handler) { return handler == "echo" || handler == "sha256" || handler == "fail"; }
constexpr std::uint32_t kSlowMemory = 256;
// Results sent lately are kept (at most this many, this many output bytes, and for a few
// heartbeats) and sent again after the next welcome when the nexus refuses a message with
// "hello first" or the connection is closed: the nexus may have refused or never got them.
constexpr std::size_t kResendMax = 4096;
constexpr std::size_t kResendBytesMax = 8u << 20;
// The ids a hello may name in `running` and in `done` (the nexus refuses longer lists).
constexpr std::size_t kHelloTasksMax = 65536;

// A bundle the nexus serves, as announced in Welcome or a BundleList.
struct BundleOffer {
  std::string name;
  std::uint64_t version = 0;
  std::uint64_t size = 0;
  std::string manifestSha256;
};

// The bundle being fetched: at most one at a time, kFetchWindow chunks in flight, so memory is
// bounded by the window whatever the bundle size; the receiver spools to disk and resumes.
struct BundleFetchState {
  BundleOffer offer;
  std::unique_ptr<bundle::BundleReceiver> rx;
  std::uint64_t requested = 0;  // bytes asked for so far
  unsigned outstanding = 0;
  std::int64_t lastMono = 0;
};

// A newly installed version on trial: rolled back if its handlers fail too often too soon.
struct BundleTrial {
  std::uint64_t version = 0;
  std::int64_t untilMono = 0;
  unsigned failures = 0;
};

struct Job {
  std::uint64_t id = 0;
  std::uint8_t attempt = 0;
  std::uint8_t priority = 0;  // the batch's; queued jobs start highest first
  std::string handler;
  std::string payload;
  std::uint32_t timeoutMs = 0;
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
  proto::MapReduce::Stage stage = proto::MapReduce::Stage::NONE;
  std::uint32_t partitions = 0;
  std::string combiner;
  // A microsecond task (quickTask): the worker runs it without reporting first (below).
  bool quick = false;
};

// A task that takes microseconds: a built-in echo, sha256 or fail of a payload of at most
// kQuickPayloadMax bytes, outside map-reduce. Workers report their results every ~1 ms or 256
// results in a run of such tasks. Any other task may be long, so neither the results of the
// tasks before it in its run nor the tasks after it wait for it (a handler's first long task, or
// a rare one, included): the worker reports and gives the rest of the run back to the loop
// before it starts, or for a serve handler's task (which takes microseconds when the handler is
// quick) as soon as the task turns out long (exec::TaskInput::onLong, within 2 ms).
bool quickTask(const Job& job) {
  return job.stage == proto::MapReduce::Stage::NONE && job.payload.size() <= kQuickPayloadMax &&
         microBuiltin(job.handler);
}

struct Done {
  std::uint64_t id = 0;
  std::uint8_t attempt = 0;
  proto::TaskStatus status = proto::TaskStatus::OK;
  std::string output;
  std::string error;
  std::int64_t startedMs = 0;
  std::uint64_t durationUs = 0;
};

// Messages between the loop and a worker: ownership of a heap object, sent as its pointer,
// except the loop's recall (an empty message): give back the jobs of your run not yet started.
struct WorkBatch {
  std::vector<Job> jobs;  // one priority only (a RunQueue run); empty: stop
};
struct DoneBatch {
  std::vector<Done> done;
  std::vector<Job> returned;  // recalled or given back: the jobs of the run it will not start, in order
  bool idle = false;          // the worker finished its WorkBatch
};

using transport::pointerMessage;
using transport::takePointer;

proto::TaskStatus statusOf(exec::Outcome o) {
  switch (o) {
    case exec::Outcome::kOk: return proto::TaskStatus::OK;
    case exec::Outcome::kFailed: return proto::TaskStatus::FAILED;
    case exec::Outcome::kTimedOut: return proto::TaskStatus::TIMED_OUT;
    case exec::Outcome::kCrashed: return proto::TaskStatus::CRASHED;
    case exec::Outcome::kUnknownHandler: return proto::TaskStatus::UNKNOWN_HANDLER;
    case exec::Outcome::kCancelled: return proto::TaskStatus::CANCELLED;
  }
  return proto::TaskStatus::FAILED;
}

// Whole-host CPU busy % from /proc/stat deltas, and memory used % from /proc/meminfo.
class LoadMeter {
 public:
  double cpuPct() {
    std::ifstream f("/proc/stat");
    std::string cpu;
    unsigned long long v[8] = {0};
    f >> cpu >> v[0] >> v[1] >> v[2] >> v[3] >> v[4] >> v[5] >> v[6] >> v[7];
    if (!f) return last_;
    unsigned long long idle = v[3] + v[4], total = 0;
    for (auto x : v) total += x;
    if (prevTotal_ && total > prevTotal_) {
      double busy = 1.0 - static_cast<double>(idle - prevIdle_) / static_cast<double>(total - prevTotal_);
      last_ = std::clamp(busy * 100.0, 0.0, 100.0);
    }
    prevIdle_ = idle;
    prevTotal_ = total;
    return last_;
  }
  static double memPct() {
    std::ifstream f("/proc/meminfo");
    std::string key, unit;
    unsigned long long value = 0, total = 0, available = 0;
    while (f >> key >> value >> unit) {
      if (key == "MemTotal:") total = value;
      if (key == "MemAvailable:") available = value;
    }
    if (total == 0) return 0;
    return 100.0 * (1.0 - static_cast<double>(available) / static_cast<double>(total));
  }

 private:
  unsigned long long prevIdle_ = 0, prevTotal_ = 0;
  double last_ = 0;
};

}  // namespace

class SporeImpl {
 public:
  SporeImpl(zmq::context_t& ctx, config::SporeConfig config, exec::HandlerRegistry& registry)
      : ctx_(ctx), config_(std::move(config)), registry_(registry), clock_(util::systemClock()) {
    limits_.maxFrameBytes = config_.maxFrameBytes;
  }
  ~SporeImpl();

  util::Status start();
  void run(const std::atomic<bool>& stop);

 private:
  void workerLoop(unsigned index, std::string endpoint);
  void connect(std::int64_t now);
  void disconnect(bool stopping = false);
  void sendHello();
  void onNexusMessage(zmq::message_t& frame);
  void onAssign(proto::Assign::Reader assign);
  void onCancel(proto::CancelTasks::Reader cancel);
  void onWorker(unsigned index, zmq::message_t& frame);
  void onDone(Done&& d);
  // Runs one job in the calling thread (a worker's, or the loop's for instant built-ins).
  // onLong: optional, borrowed, for a serve handler (exec::TaskInput::onLong).
  Done execute(Job& job, exec::ServeProcesses* serve, const std::function<void()>* onLong = nullptr);
  bool isInstant(const Job& job) const;
  void feedWorkers();
  void flushResults();
  void heartbeat(std::int64_t now);
  bool send(zmq::message_t&& frame);
  void onBeacons();

  // ---- bundles
  util::Status openBundles();
  void refreshBundleHandlers();
  void onBundleOffers(capnp::List<proto::BundleRef>::Reader list);
  void maybeFetchBundle();
  void pumpFetch();
  void onBundleChunk(proto::BundleChunk::Reader chunk);
  void finishFetch();
  void sendBundleReport(const std::string& name, std::uint64_t version, const std::string& event,
                        const std::string& reason, const std::string& message);
  void reportBundleState();
  void noteTaskFailure(const std::string& handler);
  void bundleTimers(std::int64_t now);

  zmq::context_t& ctx_;
  config::SporeConfig config_;
  exec::HandlerRegistry& registry_;
  const util::Clock& clock_;
  wire::Limits limits_;
  util::Counters counters_;
  exec::ProgramSettings programSettings_;

  crypto::KeyPair keys_;
  util::UniqueFd dataDirLock_;  // one spore per data dir
  crypto::PublicKey nexusKey_;
  std::vector<std::string> endpoints_;   // candidates, tried in order
  std::size_t nextEndpoint_ = 0;
  std::string endpoint_;                 // current
  std::string foundBy_ = "seed";
  std::unique_ptr<discovery::BeaconListener> beacons_;

  zmq::socket_t dealer_;
  zmq::socket_t events_;
  std::unique_ptr<transport::HandshakeWatch> watch_;
  // The loop's wait, over the worker pipes, then the dealer, the events and the handshake
  // monitor when they exist, then the beacon fd; rebuilt (watchPoller) after socketsChanged_
  // moved on, which connect(), disconnect() and the events socket's creation do.
  transport::Poller poller_;
  std::uint64_t socketsChanged_ = 1, socketsPolled_ = 0;
  struct PollerLayout {
    std::size_t dealerAt = SIZE_MAX, eventsAt = SIZE_MAX, monitorAt = SIZE_MAX, beaconAt = SIZE_MAX;
  } polled_;
  void watchPoller();
  bool connected_ = false;    // a socket exists
  bool welcomed_ = false;
  std::int64_t lastHeardMono_ = 0;
  std::int64_t reconnectAtMono_ = 0;
  std::int64_t backoffMs_ = 1000;
  std::int64_t heartbeatMs_;
  int missedBeats_;
  std::int64_t nextHeartbeat_ = 0;
  LoadMeter load_;

  std::vector<std::thread> threads_;
  std::vector<zmq::socket_t> pipes_;
  // What each worker holds: a run of one priority; `left` counts its jobs without a result yet.
  // A worker whose run has jobs of a lower priority than a queued one is recalled once: at its
  // next report (within about 1 ms, or before or after the job it runs) it gives back what it
  // has not started, so a queued job of a higher priority waits for at most one job per slot.
  struct WorkerRun {
    bool busy = false;
    std::uint8_t priority = 0;
    std::size_t left = 0;
    bool recalled = false;
  };
  std::vector<WorkerRun> workers_;
  void recallRuns();
  void takeBack(std::vector<Job>&& returned);
  routing::RunQueue<Job> queue_;  // not started, not in a worker's run
  std::unordered_map<std::string, std::uint32_t> slowLeft_;  // handler -> tasks it stays slow for
  bool isSlow(const Job& job) const { return slowLeft_.count(job.handler) > 0; }
  // Runs hold only tasks that may take microseconds: the microsecond built-ins, and serve
  // handlers' tasks outside map-reduce whose handler was not seen slow lately. Every other task
  // (a program, a map-reduce stage, `sleep`, a built-in of a large payload) goes to a worker
  // alone: in a run, the worker would give back the rest of the run before it anyway.
  bool runsAlone(const Job& job) const {
    if (job.quick) return false;
    if (isSlow(job) || job.stage != proto::MapReduce::Stage::NONE) return true;
    return !registry_.snapshot()->isServe(job.handler);
  }
  void noteDuration(const std::string& handler, std::uint64_t durationUs);
  struct JobRef {
    std::uint8_t attempt = 0;
    std::shared_ptr<std::atomic<bool>> cancel;
    std::string handler;
  };
  std::unordered_map<std::uint64_t, JobRef> jobs_;  // queued or running
  // Attempts the nexus sent for a task whose cancelled older attempt is still being stopped here;
  // queued when it has ended.
  std::unordered_map<std::uint64_t, Job> reassigned_;
  std::int64_t lastHelloMono_ = -1000000;
  std::vector<Done> outbox_;
  // Results sent lately, with the time they were sent (see kResendMax).
  std::deque<std::pair<std::int64_t, Done>> sentLately_;
  std::size_t sentLatelyBytes_ = 0;
  // Puts the results sent lately back in the outbox, to go again after the next welcome.
  void resendLately();
  unsigned running_ = 0;

  // Signed bundles (enabled by --trust): the installer owns DATA_DIR/bundles.
  bundle::TrustedKeys trusted_;
  std::unique_ptr<bundle::Installer> installer_;
  std::map<std::string, BundleOffer> offers_;           // by name, from the nexus
  std::optional<BundleFetchState> fetch_;
  std::set<std::pair<std::string, std::uint64_t>> givenUp_;  // refused in this run: not fetched again
  std::map<std::string, BundleTrial> trials_;           // by bundle name
  std::map<std::string, std::string> handlerBundle_;    // handler -> bundle name
  std::int64_t nextBundleCheck_ = 0;
};

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
  if (access(config_.keyFile.c_str(), F_OK) != 0) {
    if (auto s = crypto::saveKeyPair(config_.keyFile, crypto::KeyPair::generate()); !s) return s;
    MESH_INFO("generated this spore's key pair in %s", config_.keyFile.c_str());
  }
  auto keys = crypto::loadKeyPair(config_.keyFile);
  if (!keys) return keys.error();
  keys_ = std::move(*keys);
  auto nexusKey = crypto::loadPublicKey(config_.nexusKey);
  if (!nexusKey) return util::err("--nexus-key: " + nexusKey.error().message);
  nexusKey_ = *nexusKey;
  MESH_INFO("spore %s key %s (on the nexus host, let it in with: mesh keys accept %s)", config_.name.c_str(),
            keys_.publicKey.fingerprint().c_str(), keys_.publicKey.fingerprint().c_str());
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
  for (auto& jobEntry : jobs_) jobEntry.second.cancel->store(true);
  for (auto& pipe : pipes_) {
    try {
      pipe.send(pointerMessage(std::make_unique<WorkBatch>()), zmq::send_flags::none);
    } catch (...) {
    }
  }
  for (auto& t : threads_) t.join();
  for (auto& pipe : pipes_) {
    zmq::message_t m;
    while (pipe.recv(m, zmq::recv_flags::dontwait)) takePointer<DoneBatch>(m);
  }
}

Done SporeImpl::execute(Job& job, exec::ServeProcesses* serve, const std::function<void()>* onLong) {
  const auto& clock = util::systemClock();
  Done done;
  done.id = job.id;
  done.attempt = job.attempt;
  done.startedMs = clock.wallMs();
  std::int64_t t0 = clock.monotonicUs();
  if (job.cancel->load()) {
    done.status = proto::TaskStatus::CANCELLED;
  } else {
    exec::TaskInput input;
    input.taskId = job.id;
    input.attempt = job.attempt;
    input.payload = job.payload;
    input.timeoutMs = job.timeoutMs;
    input.cancel = job.cancel.get();
    input.serve = serve;
    input.onLong = onLong;
    exec::TaskOutput result;
    try {
      auto table = registry_.snapshot();
      if (job.stage == proto::MapReduce::Stage::MAP) {
        exec::MapSpec spec{job.handler, job.combiner, job.partitions};
        result = exec::runMapTask(*table, spec, input, programSettings_);
      } else if (job.stage == proto::MapReduce::Stage::REDUCE) {
        result = exec::runReduceTask(*table, job.handler, input, programSettings_);
      } else {
        result = table->run(job.handler, input, programSettings_);
      }
    } catch (const std::exception& e) {
      result.outcome = exec::Outcome::kFailed;
      result.error = std::string("handler threw: ") + e.what();
    }
    done.status = statusOf(result.outcome);
    done.output = std::move(result.output);
    done.error = std::move(result.error);
  }
  done.durationUs = static_cast<std::uint64_t>(clock.monotonicUs() - t0);
  return done;
}

void SporeImpl::workerLoop(unsigned index, std::string endpoint) {
  (void)index;
  zmq::socket_t pipe(ctx_, zmq::socket_type::pair);
  pipe.set(zmq::sockopt::sndhwm, 0);
  pipe.set(zmq::sockopt::rcvhwm, 0);
  pipe.connect(endpoint);
  const auto& clock = util::systemClock();
  // This thread's serve handler processes: used by its tasks only, stopped when idle (the wait
  // for work times out when the next one is due) and when the thread returns.
  exec::ServeProcesses serve;
  for (;;) {
    zmq::message_t m;
    try {
      pipe.set(zmq::sockopt::rcvtimeo, static_cast<int>(serve.msUntilIdle()));
      if (!pipe.recv(m)) {
        serve.stopIdle();
        continue;
      }
    } catch (const zmq::error_t&) {
      return;
    }
    if (m.size() == 0) continue;  // a recall that came after the run had ended
    auto work = takePointer<WorkBatch>(m);
    if (work->jobs.empty()) return;
    auto out = std::make_unique<DoneBatch>();
    std::int64_t lastFlushUs = clock.monotonicUs();
    // Passes the results so far to the loop. If the loop has recalled the run (jobs of a higher
    // priority wait), the jobs from `recallFrom` on go back with them and the run ends there;
    // otherwise those from `giveBackFrom` on do (npos: none). A run is only ever sent to an idle
    // worker, so the only other message that can come meanwhile is the stop: false, the thread
    // returns.
    constexpr std::size_t npos = std::string::npos;
    auto report = [&](std::size_t recallFrom, std::size_t giveBackFrom, std::int64_t nowUs) {
      zmq::message_t recall;
      bool recalled = false;
      try {
        recalled = pipe.recv(recall, zmq::recv_flags::dontwait).has_value();
      } catch (const zmq::error_t&) {
        return false;
      }
      if (recalled && recall.size() != 0) {
        takePointer<WorkBatch>(recall);  // the stop
        return false;
      }
      std::size_t from = recalled ? recallFrom : giveBackFrom;
      if (from < work->jobs.size()) {
        for (std::size_t j = from; j < work->jobs.size(); ++j) out->returned.push_back(std::move(work->jobs[j]));
        work->jobs.erase(work->jobs.begin() + static_cast<std::ptrdiff_t>(from), work->jobs.end());
      }
      try {
        pipe.send(pointerMessage(std::move(out)), zmq::send_flags::none);
      } catch (const zmq::error_t&) {
        return false;
      }
      out = std::make_unique<DoneBatch>();
      lastFlushUs = nowUs;
      return true;
    };
    // A task that may be long (any but a microsecond built-in) holds neither the results before
    // it nor the jobs after it in the run: before it starts, the worker hands the results to the
    // loop and gives the rest of the run back (an idle worker takes it). A serve handler's task,
    // which takes microseconds when the handler is quick, does both only once it turns out long
    // (onLong: after 1 ms, or before a process start), so quick ones keep their runs.
    std::size_t running = 0;
    bool stop = false;
    const std::function<void()> onLong = [&] {
      if ((!out->done.empty() || running + 1 < work->jobs.size()) &&
          !report(running + 1, running + 1, clock.monotonicUs())) {
        stop = true;
      }
    };
    for (std::size_t i = 0; i < work->jobs.size(); ++i) {
      Job& job = work->jobs[i];
      bool watched = false;
      if (!job.quick && (!out->done.empty() || i + 1 < work->jobs.size())) {
        watched = job.stage == proto::MapReduce::Stage::NONE && registry_.snapshot()->isServe(job.handler);
        if (!watched && !report(i, i + 1, clock.monotonicUs())) return;
        if (i == work->jobs.size()) break;  // recalled
      }
      running = i;
      Done done = execute(job, &serve, watched ? &onLong : nullptr);
      if (stop) return;
      std::int64_t t1 = clock.monotonicUs();
      out->done.push_back(std::move(done));
      // Microsecond tasks travel together: a report every ~1 ms or 256 results.
      bool last = i + 1 == work->jobs.size();
      if (!last && (t1 - lastFlushUs > 1000 || out->done.size() >= 256) && !report(i + 1, npos, t1)) return;
    }
    out->idle = true;
    try {
      pipe.send(pointerMessage(std::move(out)), zmq::send_flags::none);
    } catch (const zmq::error_t&) {
      return;
    }
  }
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
  unsigned held = static_cast<unsigned>(std::min(jobs_.size(), kHelloTasksMax));
  auto running = h.initRunning(held);
  auto attempts = h.initRunningAttempts(held);
  unsigned i = 0;
  for (const auto& [id, job] : jobs_) {
    if (i == held) break;
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

void SporeImpl::onAssign(proto::Assign::Reader assign) {
  for (auto t : assign.getTasks()) {
    auto held = jobs_.find(t.getId());
    if (held != jobs_.end()) {
      if (t.getAttempt() <= held->second.attempt) {
        counters_.add("assign_duplicates");
        continue;
      }
      if (!held->second.cancel->load()) {
        // The nexus gave up on the attempt that is still running here (a late reconnect, say)
        // and asks again: its result will be reported under the new attempt.
        held->second.attempt = t.getAttempt();
        counters_.add("assign_attempts_raised");
        continue;
      }
      // The old attempt is still being stopped (a handler slow to die): the new one runs when it
      // has ended, below (dropping it would leave the task waiting for the nexus's deadline).
    }
    Job job;
    job.id = t.getId();
    job.attempt = t.getAttempt();
    job.handler = std::string(wire::view(t.getHandler()));
    job.payload = std::string(wire::view(t.getPayload()));
    job.timeoutMs = t.getTimeoutMs();
    job.priority = t.getPriority();
    if (t.hasMapreduce()) {
      auto mr = t.getMapreduce();
      job.stage = mr.getStage();
      job.partitions = mr.getPartitions();
      job.combiner = std::string(wire::view(mr.getCombiner()));
      if (job.stage == proto::MapReduce::Stage::MAP && (job.partitions < 1 || job.partitions > 10000)) {
        counters_.add("bad_tasks");
        Done bad;
        bad.id = job.id;
        bad.attempt = job.attempt;
        bad.status = proto::TaskStatus::FAILED;
        bad.error = "map task with " + std::to_string(job.partitions) + " partitions (1-10000)";
        outbox_.push_back(std::move(bad));
        continue;
      }
    }
    job.quick = quickTask(job);
    if (held != jobs_.end()) {
      counters_.add("assign_after_stop");
      reassigned_[job.id] = std::move(job);
      continue;
    }
    jobs_[job.id] = JobRef{job.attempt, job.cancel, job.handler};
    queue_.push(job.priority, std::move(job));
  }
  feedWorkers();
}

void SporeImpl::onCancel(proto::CancelTasks::Reader cancel) {
  for (auto id : cancel.getIds()) {
    reassigned_.erase(id);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    it->second.cancel->store(true);
    counters_.add("tasks_cancelled");
  }
  // Queued ones never start: drop them now (the nexus no longer wants their result). Those in a
  // worker's run are skipped by the worker, or dropped if it gives them back (takeBack).
  queue_.removeIf([&](const Job& j) {
    if (!j.cancel->load()) return false;
    jobs_.erase(j.id);
    return true;
  });
}

bool SporeImpl::isInstant(const Job& job) const {
  return job.quick && job.payload.size() <= kInstantPayloadMax &&
         registry_.snapshot()->where(job.handler) == "builtin";  // built-ins are never shadowed
}

void SporeImpl::feedWorkers() {
  // Light load: a built-in that takes microseconds (echo, fail, sha256 of up to 16 KiB) runs
  // here, on the loop, instead of paying two thread hand-offs to a worker and back (~0.12 ms
  // of a one-task batch in the development VM). With a worker busy or more work queued, the
  // workers run everything, in parallel.
  // Only the job that is next in priority order runs here (with nothing running, it is the
  // queue's front), so the fast path keeps the order.
  while (running_ == 0 && !queue_.empty() && queue_.size() <= kInstantQueueMax && isInstant(queue_.front())) {
    Job job = std::move(queue_.takeRun(1).front());
    ++running_;
    counters_.add("tasks_run_inline");
    onDone(execute(job, nullptr));
  }
  unsigned idle = 0;
  for (const auto& w : workers_) idle += w.busy ? 0 : 1;
  for (unsigned w = 0; w < workers_.size() && !queue_.empty(); ++w) {
    if (workers_[w].busy) continue;
    // Share what is queued among the idle workers; short tasks go in runs, the others one by
    // one (runsAlone). A run holds jobs of the highest queued priority only.
    std::size_t take = std::max<std::size_t>(1, std::min<std::size_t>(64, queue_.size() / std::max(1u, idle)));
    auto batch = std::make_unique<WorkBatch>();
    batch->jobs = runsAlone(queue_.front()) ? queue_.takeRun(1)
                                            : queue_.takeRun(take, [this](const Job& j) { return runsAlone(j); });
    running_ += static_cast<unsigned>(batch->jobs.size());
    workers_[w] = WorkerRun{true, batch->jobs.front().priority, batch->jobs.size(), false};
    --idle;
    pipes_[w].send(pointerMessage(std::move(batch)), zmq::send_flags::none);
    poller_.touched(pipes_[w]);
  }
  recallRuns();
}

void SporeImpl::recallRuns() {
  if (queue_.empty()) return;
  // Left queued with every worker busy: recall runs of a lower priority that have jobs not yet
  // started, the lowest first, no more than there are jobs of the top priority waiting (counting
  // the recalls already on their way).
  std::uint8_t top = queue_.topPriority();
  std::size_t waiting = queue_.topCount(), outstanding = 0;
  std::vector<unsigned> candidates;
  for (unsigned w = 0; w < workers_.size(); ++w) {
    const auto& run = workers_[w];
    if (!run.busy) continue;
    if (run.recalled) {
      ++outstanding;
    } else if (run.priority < top && run.left > 1) {
      candidates.push_back(w);
    }
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](unsigned a, unsigned b) { return workers_[a].priority < workers_[b].priority; });
  for (unsigned w : candidates) {
    if (outstanding >= waiting) break;
    workers_[w].recalled = true;
    ++outstanding;
    counters_.add("runs_recalled");
    pipes_[w].send(zmq::message_t(), zmq::send_flags::none);
    poller_.touched(pipes_[w]);
  }
}

void SporeImpl::onWorker(unsigned index, zmq::message_t& frame) {
  auto done = takePointer<DoneBatch>(frame);
  auto& run = workers_[index];
  run.left -= std::min(run.left, done->done.size() + done->returned.size());
  for (auto& d : done->done) onDone(std::move(d));
  if (!done->returned.empty()) takeBack(std::move(done->returned));
  if (done->idle) run = WorkerRun{};
}

void SporeImpl::takeBack(std::vector<Job>&& returned) {
  counters_.add("tasks_given_back", returned.size());
  std::vector<Job> again;
  std::uint8_t priority = returned.front().priority;
  for (auto& job : returned) {
    if (job.cancel->load()) {
      // Cancelled while in the run: ends here as the worker would have ended it (not reported).
      Done d;
      d.id = job.id;
      d.attempt = job.attempt;
      d.status = proto::TaskStatus::CANCELLED;
      onDone(std::move(d));
      continue;
    }
    --running_;
    again.push_back(std::move(job));
  }
  queue_.pushFront(priority, std::move(again));
}

void SporeImpl::noteDuration(const std::string& handler, std::uint64_t durationUs) {
  // The microsecond built-ins keep their runs: one of them over kSlowTaskUs was preempted.
  if (microBuiltin(handler)) return;
  if (durationUs >= kSlowTaskUs) {
    slowLeft_[handler] = kSlowMemory;
  } else if (auto slow = slowLeft_.find(handler); slow != slowLeft_.end() && --slow->second == 0) {
    slowLeft_.erase(slow);
  }
}

void SporeImpl::onDone(Done&& d) {
  --running_;
  auto it = jobs_.find(d.id);
  bool cancelled = it != jobs_.end() && it->second.cancel->load();
  if (it != jobs_.end() && !cancelled &&
      (d.status == proto::TaskStatus::FAILED || d.status == proto::TaskStatus::CRASHED ||
       d.status == proto::TaskStatus::TIMED_OUT)) {
    noteTaskFailure(it->second.handler);
  }
  if (it != jobs_.end() && !cancelled) d.attempt = std::max(d.attempt, it->second.attempt);
  if (it != jobs_.end()) {
    noteDuration(it->second.handler, d.durationUs);
    jobs_.erase(it);
  }
  if (auto next = reassigned_.find(d.id); next != reassigned_.end()) {
    // The attempt the nexus sent while this one was being stopped: its turn now.
    Job job = std::move(next->second);
    reassigned_.erase(next);
    jobs_[job.id] = JobRef{job.attempt, job.cancel, job.handler};
    queue_.push(job.priority, std::move(job));  // fed to a worker at the end of this turn
  }
  if (cancelled) return;  // the nexus asked us to stop it; it does not want the result
  outbox_.push_back(std::move(d));
}

void SporeImpl::flushResults() {
  if (outbox_.empty() || !welcomed_) return;
  std::size_t start = 0;
  while (start < outbox_.size()) {
    std::size_t end = start, bytes = 0;
    while (end < outbox_.size() && end - start < kMaxResultsPerFrame &&
           (end == start || bytes + outbox_[end].output.size() < kResultFrameBytes)) {
      bytes += outbox_[end].output.size() + outbox_[end].error.size() + 64;
      ++end;
    }
    wire::Encoder e(0, static_cast<unsigned>(bytes / 8 + 64));
    auto list = e.body().initResults().initResults(static_cast<unsigned>(end - start));
    for (std::size_t i = start; i < end; ++i) {
      const Done& d = outbox_[i];
      auto out = list[static_cast<unsigned>(i - start)];
      out.setId(d.id);
      out.setAttempt(d.attempt);
      out.setStatus(d.status);
      out.setOutput(wire::asData(d.output));
      out.setError(d.error);
      out.setStartedMs(d.startedMs);
      out.setDurationUs(d.durationUs);
    }
    if (!send(e.finish())) {
      counters_.add("results_unsent");
      break;  // keep the rest; they go after the reconnect
    }
    start = end;
  }
  std::int64_t now = clock_.monotonicMs();
  for (std::size_t i = 0; i < start; ++i) {
    sentLatelyBytes_ += outbox_[i].output.size() + outbox_[i].error.size();
    sentLately_.emplace_back(now, std::move(outbox_[i]));
  }
  outbox_.erase(outbox_.begin(), outbox_.begin() + static_cast<std::ptrdiff_t>(start));
  std::int64_t keepMs = heartbeatMs_ * (missedBeats_ + 2);
  while (!sentLately_.empty() && (sentLately_.size() > kResendMax || sentLatelyBytes_ > kResendBytesMax ||
                                  now - sentLately_.front().first > keepMs)) {
    sentLatelyBytes_ -= sentLately_.front().second.output.size() + sentLately_.front().second.error.size();
    sentLately_.pop_front();
  }
}

void SporeImpl::resendLately() {
  if (sentLately_.empty()) return;
  counters_.add("results_resent", sentLately_.size());
  std::vector<Done> again;
  again.reserve(sentLately_.size() + outbox_.size());
  for (auto& [at, d] : sentLately_) again.push_back(std::move(d));
  for (auto& d : outbox_) again.push_back(std::move(d));
  outbox_ = std::move(again);
  sentLately_.clear();
  sentLatelyBytes_ = 0;
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
  send(e.finish());
}

// ---- the loop --------------------------------------------------------------------------------

void SporeImpl::watchPoller() {
  if (socketsPolled_ == socketsChanged_) return;
  socketsPolled_ = socketsChanged_;
  poller_.reset();
  polled_ = PollerLayout{};
  for (auto& p : pipes_) poller_.add(p);
  if (connected_) polled_.dealerAt = poller_.add(dealer_);
  if (events_) polled_.eventsAt = poller_.add(events_);
  if (connected_ && watch_) polled_.monitorAt = poller_.add(watch_->socket());
  if (beacons_) polled_.beaconAt = poller_.addFd(beacons_->fd());
}

void SporeImpl::run(const std::atomic<bool>& stop) {
  while (!stop.load()) {
    std::int64_t now = clock_.monotonicMs();
    if (!connected_ && now >= reconnectAtMono_) connect(now);
    watchPoller();
    std::int64_t wake = std::min(nextHeartbeat_, now + 250);
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
                   "accept %s`; if it is accepted already, check that %s is the nexus's node port (7700 by default, "
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
                  welcomed_ ? "" : " (never answered: not running, not reachable, or another port?)",
                  static_cast<long long>(backoffMs_));
        counters_.add("nexus_lost");
        disconnect();
        reconnectAtMono_ = now + backoffMs_;
        backoffMs_ = std::min<std::int64_t>(backoffMs_ * 2, 32000);
      }
      if (now >= nextHeartbeat_) heartbeat(now);
      if (installer_) bundleTimers(now);
      feedWorkers();
      flushResults();
    } catch (const std::exception& e) {
      counters_.add("internal_errors");
      MESH_ERROR("internal error in the spore loop (continuing): %s", e.what());
    } catch (const kj::Exception& e) {
      counters_.add("internal_errors");
      MESH_ERROR("internal error in the spore loop (continuing): %s", e.getDescription().cStr());
    }
  }
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

// ---- bundles ---------------------------------------------------------------------------------
//
// The spore learns of bundles from Welcome, from the BundleList it asks for every 10 s and
// whenever a bundleAvailable hint arrives on PUB. It fetches one bundle at a time over its
// DEALER with kFetchWindow chunk requests outstanding, feeding a BundleReceiver whose spool
// (DATA_DIR/bundles/.incoming/NAME-VERSION) survives reconnects and restarts, then installs it.

util::Status SporeImpl::openBundles() {
  if (config_.trust.empty()) return {};
  for (const auto& f : config_.trust) {
    if (auto s = trusted_.addFile(f); !s) return util::err("--trust " + f + ": " + s.error().message);
  }
  auto installer = bundle::Installer::open(config_.dataDir + "/bundles", clock_);
  if (!installer) return util::err("bundles: " + installer.error().message);
  installer_ = std::make_unique<bundle::Installer>(std::move(*installer));
  refreshBundleHandlers();
  MESH_INFO("bundles: %zu trusted release keys; %zu bundle handlers installed", trusted_.size(),
            handlerBundle_.size());
  return {};
}

void SporeImpl::refreshBundleHandlers() {
  auto handlers = installer_->installedHandlers();
  if (!handlers) {
    MESH_ERROR("cannot list installed bundle handlers: %s", handlers.error().message.c_str());
    return;
  }
  registry_.setPrograms(exec::Source::kBundle, std::move(*handlers));
  handlerBundle_.clear();
  if (auto list = installer_->list()) {
    for (const auto& b : *list) {
      for (const auto& h : b.handlers) handlerBundle_[exec::programName(h).handler] = b.name;
    }
  }
}

void SporeImpl::onBundleOffers(capnp::List<proto::BundleRef>::Reader list) {
  offers_.clear();
  for (auto r : list) {
    BundleOffer o;
    o.name = std::string(wire::view(r.getName()));
    o.version = r.getVersion();
    o.size = r.getSize();
    o.manifestSha256 = std::string(wire::view(r.getManifestSha256()));
    if (!bundle::isValidBundleName(o.name) || o.version == 0) {
      counters_.add("bad_bundle_offers");
      continue;
    }
    offers_[o.name] = std::move(o);
  }
  maybeFetchBundle();
}

void SporeImpl::maybeFetchBundle() {
  if (fetch_ || !welcomed_) return;
  for (const auto& [name, offer] : offers_) {
    if (givenUp_.count({name, offer.version})) continue;
    auto seen = installer_->seen(name);
    if (!seen) {
      MESH_WARN("bundle %s: cannot read its version state: %s", name.c_str(), seen.error().message.c_str());
      continue;
    }
    if (*seen && (*seen)->version >= offer.version && (*seen)->installed) continue;
    std::string scratch = installer_->incomingDir(name + "-" + std::to_string(offer.version));
    auto rx = bundle::BundleReceiver::open(scratch, bundle::ReceiveLimits{}, trusted_, clock_);
    if (!rx) {
      MESH_ERROR("bundle %s: cannot start receiving: %s", name.c_str(), rx.error().message.c_str());
      givenUp_.insert({name, offer.version});
      continue;
    }
    BundleFetchState f;
    f.offer = offer;
    f.rx = std::make_unique<bundle::BundleReceiver>(std::move(*rx));
    f.requested = f.rx->offset();
    f.lastMono = clock_.monotonicMs();
    MESH_INFO("fetching bundle %s version %llu (%llu bytes%s)", name.c_str(),
              static_cast<unsigned long long>(offer.version), static_cast<unsigned long long>(offer.size),
              f.requested ? (", resuming at " + std::to_string(f.requested)).c_str() : "");
    fetch_ = std::move(f);
    pumpFetch();
    return;
  }
}

void SporeImpl::pumpFetch() {
  BundleFetchState& f = *fetch_;
  if (f.rx->refused() || f.rx->complete() || (f.outstanding == 0 && f.rx->offset() >= f.offer.size)) {
    if (f.outstanding == 0) finishFetch();
    return;
  }
  while (f.outstanding < kFetchWindow && f.requested < f.offer.size) {
    wire::Encoder e(0, 32);
    auto req = e.body().initBundleFetch();
    req.setName(f.offer.name);
    req.setVersion(f.offer.version);
    req.setOffset(f.requested);
    req.setMaxBytes(kFetchChunkBytes);
    if (!send(e.finish())) return;
    f.requested = std::min<std::uint64_t>(f.offer.size, f.requested + kFetchChunkBytes);
    ++f.outstanding;
  }
}

void SporeImpl::onBundleChunk(proto::BundleChunk::Reader chunk) {
  if (!fetch_) return;
  BundleFetchState& f = *fetch_;
  if (wire::view(chunk.getName()) != f.offer.name || chunk.getVersion() != f.offer.version) return;
  if (f.outstanding > 0) --f.outstanding;
  f.lastMono = clock_.monotonicMs();
  if (chunk.getMissing()) {
    // The nexus no longer serves this version (a newer one replaced it): keep the spool, ask again.
    MESH_INFO("bundle %s version %llu is no longer served", f.offer.name.c_str(),
              static_cast<unsigned long long>(f.offer.version));
    if (f.outstanding == 0) {
      fetch_.reset();
      nextBundleCheck_ = 0;
    }
    return;
  }
  if (chunk.getOffset() != f.rx->offset() || f.rx->refused() || f.rx->complete()) {
    // Not the next bytes (an answer to a request made before a reset): re-ask from the spool's end.
    if (f.outstanding == 0) {
      f.requested = f.rx->offset();
      pumpFetch();
    }
    return;
  }
  bool ok = f.rx->feed(wire::view(chunk.getData()));
  if (ok && !f.rx->manifestSha256().empty() && !f.offer.manifestSha256.empty() &&
      f.rx->manifestSha256() != f.offer.manifestSha256) {
    // A spool of another release of the same name and version: start again from zero.
    MESH_WARN("bundle %s: the spooled bundle is not the one announced; fetching it again", f.offer.name.c_str());
    f.rx->discard();
    fetch_.reset();
    nextBundleCheck_ = 0;
    return;
  }
  if (!ok || f.rx->complete()) {
    if (f.outstanding == 0) finishFetch();
    return;  // the answers still in flight are dropped by the checks above, then finish
  }
  pumpFetch();
}

void SporeImpl::finishFetch() {
  BundleFetchState f = std::move(*fetch_);
  fetch_.reset();
  auto outcome = installer_->install(*f.rx);
  if (!outcome) {
    const bundle::Refused& r = outcome.refused();
    MESH_WARN("refused bundle %s version %llu: %s", f.offer.name.c_str(),
              static_cast<unsigned long long>(f.offer.version), r.describe().c_str());
    givenUp_.insert({f.offer.name, f.offer.version});
    sendBundleReport(f.offer.name, f.offer.version, "refused", bundle::refusalName(r.reason), r.message);
  } else {
    MESH_INFO("installed bundle %s version %llu", outcome->name.c_str(),
              static_cast<unsigned long long>(outcome->version));
    refreshBundleHandlers();
    if (outcome->previous) {
      trials_[outcome->name] = BundleTrial{outcome->version, clock_.monotonicMs() + config_.bundleTrialMs, 0};
    }
    sendBundleReport(outcome->name, outcome->version, "installed", "", "");
    sendHello();  // the nexus learns the new handler names
  }
  maybeFetchBundle();
}

void SporeImpl::sendBundleReport(const std::string& name, std::uint64_t version, const std::string& event,
                                 const std::string& reason, const std::string& message) {
  wire::Encoder e(0, 64);
  auto r = e.body().initBundleReport();
  r.setName(name);
  r.setVersion(version);
  r.setEvent(event);
  r.setReason(reason);
  r.setMessage(message.substr(0, 1000));
  if (auto list = installer_->list()) {
    for (const auto& b : *list) {
      if (b.name == name) r.setRunning(b.current);
    }
  }
  if (auto seen = installer_->seen(name); seen && *seen) r.setRollbacks(static_cast<std::uint32_t>((*seen)->bad.size()));
  send(e.finish());
}

// After each welcome: what runs here, so that `mesh bundles` is right after a nexus restart.
void SporeImpl::reportBundleState() {
  auto list = installer_->list();
  if (!list) return;
  for (const auto& b : *list) sendBundleReport(b.name, b.current, "running", "", "");
}

void SporeImpl::noteTaskFailure(const std::string& handler) {
  if (!installer_) return;
  auto h = handlerBundle_.find(handler);
  if (h == handlerBundle_.end()) return;
  auto t = trials_.find(h->second);
  if (t == trials_.end()) return;
  std::int64_t now = clock_.monotonicMs();
  if (now > t->second.untilMono) {
    trials_.erase(t);  // the version passed its trial
    return;
  }
  if (++t->second.failures < config_.bundleTrialFailures) return;
  std::string name = t->first;
  std::uint64_t version = t->second.version;
  std::string reason = "trial-failed: handler " + handler + " failed " + std::to_string(t->second.failures) +
                       " times within " + std::to_string(config_.bundleTrialMs / 1000) + " s of the install";
  trials_.erase(t);
  if (auto s = installer_->rollback(name, reason); !s) {
    MESH_ERROR("cannot roll bundle %s back: %s", name.c_str(), s.error().message.c_str());
    return;
  }
  MESH_WARN("rolled bundle %s back from version %llu: %s", name.c_str(), static_cast<unsigned long long>(version),
            reason.c_str());
  refreshBundleHandlers();
  sendBundleReport(name, version, "rolled-back", "trial-failed", reason);
  sendHello();
}

void SporeImpl::bundleTimers(std::int64_t now) {
  if (!welcomed_) return;
  if (now >= nextBundleCheck_) {
    nextBundleCheck_ = now + kBundleCheckEveryMs;
    wire::Encoder e(0, 16);
    e.body().setBundleListRequest();
    send(e.finish());
  }
  if (fetch_ && now - fetch_->lastMono > kFetchStallMs) {
    // Requests or answers were lost (a reconnect): ask again from where the spool ends.
    MESH_INFO("bundle %s: fetch stalled; resuming at %llu", fetch_->offer.name.c_str(),
              static_cast<unsigned long long>(fetch_->rx->offset()));
    fetch_->outstanding = 0;
    fetch_->requested = fetch_->rx->offset();
    fetch_->lastMono = now;
    pumpFetch();
  }
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
void Spore::run(const std::atomic<bool>& stop) { impl_->run(stop); }

}  // namespace mesh::node
