// The spore's implementation class, shared by its source files: spore.cpp (set-up, the
// connection to the nexus, its messages, the loop, the public Spore), spore_work.cpp (the
// workers, the queue, results) and spore_bundles.cpp (signed bundles). Private to mesh/node:
// include it from those files only.
//
// Thread rule: as spore.h says, one actor; every member runs on the thread of run() (start()
// before it), except workerLoop() and execute(), which run on the worker threads, and
// bundleWorker(), which runs on the bundle thread (installs and rollbacks); they reach the loop
// only by messages over their inproc pipes.
#pragma once

#include "mesh/node/spore.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "mesh/bundle/installer.h"
#include "mesh/bundle/receiver.h"
#include "mesh/bundle/release_key.h"
#include "mesh/crypto/keys.h"
#include "mesh/discovery/beacon_udp.h"
#include "mesh/exec/mapreduce.h"
#include "mesh/exec/serve.h"
#include "mesh/exec/strays.h"
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

// The spore's own constants and records, shared by its source files (spore*.cpp) only.
namespace spore_detail {

using Which = proto::Envelope::Body::Which;
constexpr std::size_t kResultFrameBytes = 8u << 20;
constexpr std::size_t kMaxResultsPerFrame = 4096;
constexpr int kMaxMessagesPerTurn = 1024;
constexpr std::uint32_t kFetchChunkBytes = 256u << 10;  // one bundle fetch request
constexpr unsigned kFetchWindow = 4;                    // fetch requests outstanding at once
constexpr std::int64_t kBundleCheckEveryMs = 10'000;    // ask the nexus for its bundle list
constexpr std::int64_t kFetchStallMs = 10'000;          // re-ask chunks unanswered this long
// Receive spools kept in DATA_DIR/bundles/.incoming (pruneSpools): a partial download costs
// disk until it completes, and a nexus could offer made-up versions and never finish them.
constexpr std::size_t kMaxSpools = 2;
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
inline bool microBuiltin(const std::string& handler) { return handler == "echo" || handler == "sha256" || handler == "fail"; }
constexpr std::uint32_t kSlowMemory = 256;
// Results sent lately are kept (at most this many, this many output bytes, and for a few
// heartbeats) and sent again after the next welcome when the nexus refuses a message with
// "hello first" or the connection is closed: the nexus may have refused or never got them.
constexpr std::size_t kResendMax = 4096;
constexpr std::size_t kResendBytesMax = 8u << 20;
// The ids a hello may name in `running` and in `done` (the nexus refuses longer lists).
constexpr std::size_t kHelloTasksMax = 65536;
// The starts of running tasks one heartbeat carries (Heartbeat.started); the rest go with the next.
constexpr std::size_t kHeartbeatStartsMax = 4096;
// How often the loop sweeps strays (mesh/exec/strays.h) besides each run's end: it reaps the
// killed ones and catches those whose parent outlived their run.
constexpr std::int64_t kStraySweepEveryMs = 1000;

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

// Messages between the loop and the bundle thread (bundleWorker), as pointers like the workers'.
// The thread does one job at a time, in order, so installs and rollbacks never overlap.
struct BundleJob {
  enum class Kind { kInstall, kRollback, kStop };
  Kind kind = Kind::kStop;
  BundleOffer offer;                            // kInstall: what was fetched
  std::unique_ptr<bundle::BundleReceiver> rx;   // kInstall: the complete (or refused) receive
  std::string name;                             // kRollback: the bundle and the version on trial
  std::uint64_t version = 0;
  std::string reason;
};
struct BundleJobDone {
  BundleJob::Kind kind = BundleJob::Kind::kStop;
  BundleOffer offer;
  std::optional<bundle::Checked<bundle::InstallOutcome>> outcome;  // kInstall
  std::string name;                                               // kRollback, as asked
  std::uint64_t version = 0;
  std::string reason;
  util::Status rolledBack;  // kRollback: the error, if it did not roll back
  bool superseded = false;  // kRollback: the version was no longer current (nothing done)
  bool withdrawn = false;   // kRollback: it had no previous version, so it was removed (Installer::withdraw)
  std::int64_t tookMs = 0;
};

// A newly installed version on trial (docs/bundles.md "Trial and rollback"): rolled back when
// its programs turn out broken on this spore: at least --bundle-trial-failures of its handlers'
// tasks ended with a program fault (exec::TaskOutput::programFault: crashed, could not start),
// and those are at least half of its handlers' tasks that ended here within --bundle-trial. A
// plain failure or a timeout is the input's doing and never counts against the release. A task
// counts once, however many of its attempts end here.
struct BundleTrial {
  std::uint64_t version = 0;
  std::int64_t untilMono = 0;
  std::unordered_set<std::uint64_t> ended;    // task ids (not cancelled) of its handlers
  std::unordered_set<std::uint64_t> faulted;  // those of them whose program was at fault
};
// A version that has seen this many tasks end here without a rollback has passed its trial
// (bounds the trial's memory whatever the task rate).
constexpr std::size_t kTrialTasksMax = 100000;

// What the loop and the worker running a job both see.
struct JobShared {
  std::atomic<bool> cancel{false};           // set by the loop: stop promptly, report nothing
  std::atomic<std::int64_t> startedMs{0};    // set by the worker when it starts the job (wall ms)
};

struct Job {
  std::uint64_t id = 0;
  std::uint8_t attempt = 0;
  std::uint8_t priority = 0;  // the batch's; queued jobs start highest first
  std::string handler;
  std::string payload;
  std::uint32_t timeoutMs = 0;
  std::shared_ptr<JobShared> shared = std::make_shared<JobShared>();
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
inline bool quickTask(const Job& job) {
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
  std::string bundle;              // the bundle whose program ran the handler ("": none)
  std::uint64_t bundleVersion = 0;  // and its version
  bool programFault = false;  // exec::TaskOutput::programFault: for a bundle's trial only
  std::string faultHandler;   // exec::TaskOutput::faultHandler: the map-reduce step at fault
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

// Asks a worker thread to return: an empty T over its pipe. Never blocks: a thread that has
// returned already (its end of the pipe closed) would leave a blocking send waiting for ever.
template <typename T>
void sendStop(zmq::socket_t& pipe) {
  zmq::message_t stop = pointerMessage(std::make_unique<T>());
  bool sent = false;
  try {
    sent = pipe.send(stop, zmq::send_flags::dontwait).has_value();
  } catch (const zmq::error_t&) {
  }
  if (!sent) takePointer<T>(stop);  // not sent: still ours to free
}

inline proto::TaskStatus statusOf(exec::Outcome o) {
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

}  // namespace spore_detail

using namespace spore_detail;

class SporeImpl {
 public:
  SporeImpl(zmq::context_t& ctx, config::SporeConfig config, exec::HandlerRegistry& registry)
      : ctx_(ctx), config_(std::move(config)), registry_(registry), clock_(util::systemClock()) {
    limits_.maxFrameBytes = config_.maxFrameBytes;
  }
  ~SporeImpl();

  util::Status start();
  void run(const std::atomic<int>& stops);

 private:
  void workerLoop(unsigned index, std::string endpoint);
  void connect(std::int64_t now);
  void disconnect(bool stopping = false);
  void sendHello();
  void onNexusMessage(zmq::message_t& frame);
  void onAssign(proto::Assign::Reader assign);
  void onCancel(proto::CancelTasks::Reader cancel);
  // The nexus asks back tasks it sent (docs/protocol.md section 4.20): those queued here (or in
  // a worker's run, not started) go back in a handBack; the others run as usual.
  void onRecall(proto::TaskAttempts::Reader asked);
  void sendHandBack(const std::vector<std::pair<std::uint64_t, std::uint8_t>>& tasks);
  // Sends again what sendHandBack could not (called every loop turn); forgotten at a disconnect.
  void resendHandBack();
  std::vector<std::pair<std::uint64_t, std::uint8_t>> handBackUnsent_;
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
  bool startFetch(const BundleOffer& offer);
  void pruneSpools();
  void pumpFetch();
  void onBundleChunk(proto::BundleChunk::Reader chunk);
  void finishFetch();
  void sendBundleReport(const std::string& name, std::uint64_t version, const std::string& event,
                        const std::string& reason, const std::string& message);
  void reportBundleState();
  // A task of `handler` ended here (not cancelled): counted in the trial of its bundle, if any.
  void noteTrialTask(const std::string& handler, const Done& done);
  void bundleTimers(std::int64_t now);
  // Hands a rollback of `name` (on trial at `version`) to the bundle thread; onBundleDone
  // finishes it.
  void startRollback(const std::string& name, std::uint64_t version, const std::string& reason);
  // What the bundle thread reports: an install or a rollback done (refresh, report, hello).
  void onBundleDone(std::unique_ptr<BundleJobDone> done);
  // The bundle thread: runs the jobs sent on its pipe with `installer` (which outlives it) until
  // a kStop job. `stop` interrupts an install (set when the spore stops). Touches no member.
  static void bundleWorker(zmq::context_t& ctx, bundle::Installer& installer,
                           const std::atomic<bool>& stop, const std::string& endpoint);
  void stopBundleWorker();

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
  // The loop's wait, over the worker pipes, then the bundle thread's pipe, the dealer, the
  // events and the handshake monitor when they exist, then the beacon fd; rebuilt (watchPoller) after socketsChanged_
  // moved on, which connect(), disconnect() and the events socket's creation do.
  transport::Poller poller_;
  std::uint64_t socketsChanged_ = 1, socketsPolled_ = 0;
  struct PollerLayout {
    std::size_t dealerAt = SIZE_MAX, eventsAt = SIZE_MAX, monitorAt = SIZE_MAX, beaconAt = SIZE_MAX;
    std::size_t bundleAt = SIZE_MAX;
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
  std::int64_t nextStraySweep_ = 0;
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
  // Asks worker w for the jobs of its run it has not started (they come back in its next report).
  void recall(unsigned w);
  void takeBack(std::vector<Job>&& returned);
  // Tasks (id -> attempt) the nexus recalled that may still be in a worker's run, not started:
  // handed back if the run comes back with them; forgotten once no recalled run is out.
  std::unordered_map<std::uint64_t, std::uint8_t> recallWanted_;
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

  // ---- leaving (SIGTERM): see spore.h
  bool leaving_ = false;
  std::int64_t leaveDeadlineMono_ = 0;
  std::vector<std::pair<std::uint64_t, std::uint8_t>> toGiveBack_;  // (task, attempt), not yet sent
  // Starts leaving: no new task is started; the queued ones (and those recalled from runs, as
  // they come back) are handed back to the nexus.
  void beginLeaving(std::int64_t now);
  // Sends a Leaving message with what is in toGiveBack_ (final: the spore is gone).
  void sendLeaving(bool final);
  // The last words: results, then a final Leaving, and a short wait for its acknowledgement.
  void finishLeaving(const std::atomic<int>& stops);
  struct JobRef {
    std::uint8_t attempt = 0;
    std::shared_ptr<JobShared> shared;
    std::string handler;
    bool startSent = false;  // its start has gone with a heartbeat on this connection
  };
  std::unordered_map<std::uint64_t, JobRef> jobs_;  // queued or running
  // Attempts the nexus sent for a task whose cancelled older attempt is still being stopped here;
  // queued when it has ended.
  std::unordered_map<std::uint64_t, Job> reassigned_;
  std::int64_t lastHelloMono_ = -1000000;
  // Drawn once per process, sent in every hello: the nexus tells this process's reconnects from
  // a restart of the spore (whose tasks it charges then).
  const std::uint64_t instance_ = drawInstance();
  static std::uint64_t drawInstance();
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
  // Running versions found past their expiry (name -> version), said once each: expiry bounds
  // what can be installed, not what runs, so a withheld update shows here (docs/bundles.md).
  std::map<std::string, std::uint64_t> expiredSaid_;
  void checkExpiry();
  // The bundle thread (started with the installer): installs and rollbacks run there, so that
  // a bundle of many files (seconds of unpacking and fsyncs) does not stop heartbeats, task
  // starts and results. While it holds an install, no other fetch starts (installing_).
  std::thread bundleThread_;
  zmq::socket_t bundlePipe_;  // the loop's end
  std::atomic<bool> bundleStop_{false};
  bool installing_ = false;
};

}  // namespace mesh::node
