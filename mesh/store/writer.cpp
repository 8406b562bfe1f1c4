#include "mesh/store/writer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>

#include "mesh/transport/inproc.h"
#include "mesh/util/clock.h"
#include "mesh/util/log.h"
#include "mesh/util/log_throttle.h"

namespace mesh::store {

namespace {
std::atomic<unsigned> gWriterSeq{0};

struct Job {
  std::uint64_t ticket = 0;
  std::unique_ptr<WriteSet> set;  // null: stop
};

using transport::pointerMessage;
using transport::takePointer;
}  // namespace

// The checkpoint thread: runs PASSIVE checkpoints on its own connection (they copy what no
// reader still needs and never block the writer) when the writer's WAL hook asks, and when the
// WAL holds frames not yet copied and no commit has come for kIdleMs.
//
// Each turn repeats the checkpoint while commits keep adding frames (at most kMaxPasses), so it
// ends with the whole WAL copied: only then does SQLite start the WAL again from its beginning
// at the next write, instead of letting it grow (and fsync a growing file) for as long as
// commits keep coming.
struct Checkpointer {
  static constexpr int kMaxPasses = 16;

  std::mutex mu;
  std::condition_variable wake;
  bool wanted = false;
  bool stop = false;
  std::atomic<std::uint64_t> done{0}, inLine{0}, errors{0};
  std::atomic<int> walFrames{0};             // after the last commit (set by the writer)
  std::atomic<std::int64_t> lastCommitMs{0};
  std::atomic<int> lastLog{0}, lastCopied{0};  // WAL frames, and how many copied, after the last pass
  std::atomic<std::uint64_t> finished{0};
  WriterOptions options;
  int requestedAt = 0;  // WAL size at the last request (the writer thread's)
  std::thread thread;
  // One line a minute per failing kind (a full disk fails every turn): the checkpoint thread's,
  // and the writer thread's (onWalCommit, StoreWriter::run).
  util::LogThrottle ownLog{util::systemClock()}, writerLog{util::systemClock()};

  void request() {
    {
      std::lock_guard<std::mutex> lock(mu);
      wanted = true;
    }
    wake.notify_one();
  }

  // One turn; returns the WAL size it left fully copied, or -1.
  int checkpointUntilCaughtUp(sqlite3* db) {
    int previous = -1;
    for (int pass = 0; pass < kMaxPasses; ++pass) {
      int logFrames = 0, copied = 0;
      int rc = sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, &logFrames, &copied);
      if (rc == SQLITE_BUSY) return -1;  // another checkpoint is running; the next turn retries
      if (rc != SQLITE_OK) {
        ++errors;
        if (auto n = ownLog.admit("checkpoint")) {
          MESH_WARN("WAL checkpoint failed: %s (the next commit asks again)%s", sqlite3_errmsg(db),
                    util::heldBack(*n).c_str());
        }
        return -1;
      }
      ++done;
      lastLog = logFrames;
      lastCopied = copied;
      if (copied < logFrames) {  // a reader still needs older pages, or a commit raced: again
        previous = logFrames;
        continue;
      }
      if (logFrames == previous || logFrames == 0) return logFrames;  // nothing new since last pass
      previous = logFrames;
    }
    return -1;
  }

  void run(Db db) {
    const auto& clock = util::systemClock();
    int caughtUpAt = 0;  // WAL size last left fully copied
    for (;;) {
      bool asked = false;
      {
        std::unique_lock<std::mutex> lock(mu);
        const std::int64_t tick = options.idleCheckpointMs > 0 ? options.idleCheckpointMs : 1000;
        wake.wait_for(lock, std::chrono::milliseconds(tick), [&] { return wanted || stop; });
        if (stop) return;
        asked = wanted;
        wanted = false;
      }
      if (!asked) {
        int frames = walFrames.load();
        bool idle = options.idleCheckpointMs > 0 && clock.monotonicMs() - lastCommitMs.load() >= options.idleCheckpointMs;
        if (frames == 0 || frames == caughtUpAt || !idle) continue;
      }
      int left = checkpointUntilCaughtUp(db.handle());
      if (left >= 0) caughtUpAt = left;
    }
  }

  ~Checkpointer() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    wake.notify_one();
    if (thread.joinable()) thread.join();
  }
};

namespace {
// sqlite3_wal_hook callback on the writer's connection: runs after every commit with the number
// of frames in the WAL. Replaces SQLite's automatic checkpoint (which is itself a WAL hook).
int onWalCommit(void* arg, sqlite3* db, const char* schema, int walPages) {
  auto* c = static_cast<Checkpointer*>(arg);
  c->walFrames = walPages;
  c->lastCommitMs = util::systemClock().monotonicMs();
  if (walPages >= c->options.walHardPages) {
    int rc = sqlite3_wal_checkpoint_v2(db, schema, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    if (rc == SQLITE_OK) {
      ++c->inLine;
    } else if (rc != SQLITE_BUSY) {
      ++c->errors;
      if (auto n = c->writerLog.admit("checkpoint")) {
        MESH_WARN("WAL checkpoint (in line, WAL at %d pages) failed: %s%s", walPages, sqlite3_errmsg(db),
                  util::heldBack(*n).c_str());
      }
    }
  } else if (walPages < c->requestedAt) {
    c->requestedAt = 0;  // the WAL restarted from its beginning
  } else {
    // The checkpoint thread copied all but the last few commits: copy those here, so that the
    // next transaction starts the WAL from its beginning. A WAL that stays small is written
    // over in place; one that grows makes every fsync also commit the file system's journal
    // (one-task latency +0.3 ms while it grew, measured).
    int log = c->lastLog.load(), copied = c->lastCopied.load();
    if (copied > 0 && log <= walPages && walPages - copied <= c->options.finishPages) {
      c->lastCopied = 0;
      int rc = sqlite3_wal_checkpoint_v2(db, schema, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
      if (rc == SQLITE_OK) ++c->finished;
      else if (rc != SQLITE_BUSY) ++c->errors;
    }
  }
  // Ask the checkpoint thread when the WAL reaches firstCheckpointPages, then each time another
  // checkpointPages have been appended (under a steady stream the WAL does not restart).
  int next = c->requestedAt == 0 ? c->options.firstCheckpointPages : c->requestedAt + c->options.checkpointPages;
  if (walPages >= next) {
    c->requestedAt = walPages;
    c->request();
  }
  return SQLITE_OK;
}
}  // namespace

StoreWriter::StoreWriter(zmq::context_t& ctx) : ctx_(ctx) {}

StoreWriter::CheckpointCounts StoreWriter::checkpoints() const {
  return {checkpointer_->done.load(), checkpointer_->inLine.load(), checkpointer_->finished.load(),
          checkpointer_->errors.load()};
}

util::Result<std::unique_ptr<StoreWriter>> StoreWriter::start(zmq::context_t& ctx, const std::string& dbPath,
                                                             WriterOptions options) {
  auto db = Db::open(dbPath);
  if (!db) return db.error();
  auto checkpointDb = Db::open(dbPath);
  if (!checkpointDb) return checkpointDb.error();
  // A WAL that grew during a burst is cut back to 64 MiB when it restarts.
  if (auto s = db->exec("PRAGMA journal_size_limit=67108864"); !s) return s.error();
  std::unique_ptr<StoreWriter> w(new StoreWriter(ctx));
  w->checkpointer_ = std::make_unique<Checkpointer>();
  Checkpointer* c = w->checkpointer_.get();
  c->options = options;
  sqlite3_wal_hook(db->handle(), onWalCommit, c);
  c->thread = std::thread([c, d = std::move(*checkpointDb)]() mutable { c->run(std::move(d)); });
  std::string endpoint = "inproc://mesh-store-writer-" + std::to_string(gWriterSeq++);
  w->socket_ = zmq::socket_t(ctx, zmq::socket_type::pair);
  w->socket_.set(zmq::sockopt::sndhwm, 0);  // bounded by the nexus's own limits instead
  w->socket_.bind(endpoint);
  StoreWriter* self = w.get();
  w->options_ = options;
  const std::string payloadDir = PayloadLog::dirFor(dbPath);
  auto payloads = PayloadLog::open(payloadDir);
  if (!payloads) return payloads.error();
  w->thread_ = std::thread([self, d = std::move(*db), endpoint, log = std::move(*payloads), payloadDir]() mutable {
    self->run(std::move(d), endpoint, std::move(log), payloadDir);
  });
  return w;
}

StoreWriter::~StoreWriter() {
  try {
    Job stop;
    socket_.send(pointerMessage(std::make_unique<Job>(std::move(stop))), zmq::send_flags::none);
  } catch (...) {
  }
  if (thread_.joinable()) thread_.join();
  // Free notices nobody will read.
  socket_.set(zmq::sockopt::rcvtimeo, 0);
  zmq::message_t m;
  while (socket_.recv(m, zmq::recv_flags::dontwait)) takePointer<CommitNotice>(m);
}

std::uint64_t StoreWriter::submit(std::unique_ptr<WriteSet> set) {
  auto job = std::make_unique<Job>();
  job->ticket = nextTicket_++;
  job->set = std::move(set);
  std::uint64_t ticket = job->ticket;
  socket_.send(pointerMessage(std::move(job)), zmq::send_flags::none);
  return ticket;
}

std::optional<CommitNotice> StoreWriter::receive() {
  zmq::message_t m;
  if (!socket_.recv(m, zmq::recv_flags::dontwait)) return std::nullopt;
  auto notice = takePointer<CommitNotice>(m);
  answered_ += notice->committed.size();  // a failed set is held and committed later
  return std::move(*notice);
}

std::uint64_t StoreWriter::payloadSegmentsDeleted() const { return segmentsDeleted_.load(); }

StoreWriter::ExpiryCounts StoreWriter::expiry() const {
  return {batchesExpired_.load(), tasksExpired_.load(), expiryErrors_.load()};
}

bool StoreWriter::expireSome(TaskStore& store) {
  if (options_.keepFinishedMs <= 0) return false;
  const auto& clock = util::systemClock();
  std::int64_t mono = clock.monotonicMs();
  if (!expiryPass_) {
    if (nextExpiryMs_ >= 0 && mono < nextExpiryMs_) return false;
    expiryPass_ = true;
    passBatches_ = passTasks_ = 0;
  }
  std::int64_t now = clock.wallMs();
  auto step = store.expireStep(now - options_.keepFinishedMs, now, options_.expiryStepTasks);
  if (!step) {
    ++expiryErrors_;
    if (auto n = checkpointer_->writerLog.admit("expiry")) {
      MESH_WARN("removing expired batches failed: %s (tried again in %lld s)%s", step.error().message.c_str(),
                static_cast<long long>(options_.expiryCheckMs / 1000), util::heldBack(*n).c_str());
    }
  }
  if (step && step->batch != 0) {
    passBatches_ += step->marked;
    passTasks_ += step->tasks;
    batchesExpired_ += step->marked;
    tasksExpired_ += step->tasks;
    return true;
  }
  if (passBatches_ > 0 || passTasks_ > 0) {
    MESH_INFO("removed %llu tasks (with their results and attempts) of %llu batches finished more than %s ago "
              "(--keep-finished)",
              static_cast<unsigned long long>(passTasks_), static_cast<unsigned long long>(passBatches_),
              options_.keepFinishedText.c_str());
  }
  expiryPass_ = false;
  nextExpiryMs_ = clock.monotonicMs() + options_.expiryCheckMs;
  return false;
}

void StoreWriter::collectPayloadSegments(TaskStore& store, const PayloadLog& log, const std::string& dir) {
  auto onDisk = listSegments(dir);
  auto inUse = store.payloadSegmentsInUse();
  if (!onDisk || !inUse) {
    MESH_WARN("payload log: cannot tell which segments are still needed: %s",
              (!onDisk ? onDisk.error() : inUse.error()).message.c_str());
    return;
  }
  for (std::uint64_t segment : *onDisk) {
    bool needed = std::any_of(inUse->begin(), inUse->end(),
                              [&](const auto& range) { return segment >= range.first && segment <= range.second; });
    if (segment == log.segment() || needed) continue;
    const std::string path = segmentPath(dir, segment);
    if (::unlink(path.c_str()) != 0) {
      MESH_WARN("payload log: cannot delete %s: %s", path.c_str(), std::strerror(errno));
      continue;
    }
    ++segmentsDeleted_;
    MESH_INFO("payload log: deleted %s (no unfinished batch needs it)", path.c_str());
  }
}

namespace {
using Broken = std::map<std::uint64_t, std::uint64_t>;

// No total stored for a broken batch passes the first index refused of it.
void clampTotals(WriteSet& set, const Broken& broken) {
  if (broken.empty()) return;
  for (auto& u : set.updates) {
    if (!u.total) continue;
    if (auto it = broken.find(u.batch); it != broken.end()) u.total = std::min(*u.total, it->second);
  }
}

// What of a failed set is written again: its results, attempts and batch updates. Its batches
// and tasks are not (the nexus refuses those submits), nor the totals of the new batches it
// carried, nor a link (nextBatch) to one of them. A chunk of a batch that exists already breaks
// that batch (`broken`): the totals of its updates stop at the first index refused.
void keepForRetry(WriteSet& set, Broken& broken) {
  std::vector<std::uint64_t> created;
  for (const auto& b : set.newBatches) created.push_back(b.id);
  auto isCreated = [&](std::uint64_t id) { return std::find(created.begin(), created.end(), id) != created.end(); };
  for (const auto& c : set.chunks) {
    if (isCreated(c.batch)) continue;
    auto [it, fresh] = broken.emplace(c.batch, c.firstIndex);
    if (!fresh) it->second = std::min(it->second, c.firstIndex);
  }
  set.newBatches.clear();
  set.chunks.clear();
  set.updates.erase(std::remove_if(set.updates.begin(), set.updates.end(),
                                   [&](const BatchUpdate& u) { return u.total && isCreated(u.batch); }),
                    set.updates.end());
  for (auto& u : set.updates) {
    if (u.nextBatch && isCreated(*u.nextBatch)) u.nextBatch.reset();
  }
  clampTotals(set, broken);
}

// Before a set is first tried: drops its chunks of broken batches (reported in `notice`) and
// clamps its totals of them.
void refuseBroken(std::uint64_t ticket, WriteSet& set, const Broken& broken, CommitNotice& notice) {
  if (broken.empty()) return;
  auto& chunks = set.chunks;
  for (auto c = chunks.begin(); c != chunks.end();) {
    if (!broken.count(c->batch)) {
      ++c;
      continue;
    }
    std::pair<std::uint64_t, std::uint64_t> refused{ticket, c->batch};
    if (std::find(notice.refusedChunks.begin(), notice.refusedChunks.end(), refused) == notice.refusedChunks.end()) {
      notice.refusedChunks.push_back(refused);
    }
    c = chunks.erase(c);
  }
  clampTotals(set, broken);
}

bool carriesSubmit(const WriteSet& set) { return !set.newBatches.empty() || !set.chunks.empty(); }
}  // namespace

void StoreWriter::run(Db db, std::string endpoint, std::unique_ptr<PayloadLog> payloads, std::string payloadDir) {
  zmq::socket_t pipe(ctx_, zmq::socket_type::pair);
  pipe.set(zmq::sockopt::sndhwm, 0);
  pipe.connect(endpoint);
  TaskStore store(db, payloads.get());
  const auto& clock = util::systemClock();
  std::int64_t lastGcMs = -1;
  bool stopping = false;
  // What is left of failed sets, oldest first. Nothing handed over later is written before it.
  std::vector<std::unique_ptr<Job>> held;
  std::int64_t retryAtMs = 0;
  long rcvTimeoutMs = -1;  // the pipe's ZMQ_RCVTIMEO: -1, block
  while (!stopping) {
    std::vector<std::unique_ptr<Job>> jobs;
    zmq::message_t m;
    try {
      if (held.empty()) {
        // Retention: one bounded step before the next group (never while failed sets wait).
        bool more = expireSome(store);
        long waitMs = -1;
        if (more) {
          waitMs = 0;
        } else if (options_.keepFinishedMs > 0) {
          waitMs = static_cast<long>(std::max<std::int64_t>(0, nextExpiryMs_ - clock.monotonicMs()));
        }
        // A blocking receive with a timeout (setting it makes no system call): as cheap as the
        // plain blocking receive of a writer that keeps everything.
        if (waitMs != rcvTimeoutMs) {
          pipe.set(zmq::sockopt::rcvtimeo, static_cast<int>(std::min<long>(waitMs, INT32_MAX)));
          rcvTimeoutMs = waitMs;
        }
        if (!pipe.recv(m)) continue;
        jobs.push_back(takePointer<Job>(m));
      } else {  // wake for the next try too
        zmq::pollitem_t item{pipe.handle(), 0, ZMQ_POLLIN, 0};
        zmq::poll(&item, 1, std::chrono::milliseconds(std::max<std::int64_t>(0, retryAtMs - clock.monotonicMs())));
      }
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
      continue;
    }
    // Take everything that is waiting: one transaction for all of it.
    while (jobs.size() < 4096 && pipe.recv(m, zmq::recv_flags::dontwait)) jobs.push_back(takePointer<Job>(m));
    auto notice = std::make_unique<CommitNotice>();
    std::vector<Job*> work;
    bool submits = false;
    for (auto& j : jobs) {
      if (!j->set) {
        stopping = true;
        continue;
      }
      submits = submits || carriesSubmit(*j->set);
      refuseBroken(j->ticket, *j->set, broken_, *notice);
      work.push_back(j.get());
    }
    // A failed set's remainder: reported failed (its submits are refused), written later, and
    // reported committed then. So is every set behind it, untried.
    auto hold = [&](Job& j, const std::string& error) {
      notice->failed.emplace_back(j.ticket, error);
      keepForRetry(*j.set, broken_);
      held.push_back(std::make_unique<Job>(std::move(j)));
    };
    std::int64_t start = clock.monotonicUs();
    if (!held.empty() && !stopping && !submits && clock.monotonicMs() < retryAtMs) {
      // Results only, before the next try: they join the held sets, untried.
      for (Job* j : work) held.push_back(std::make_unique<Job>(std::move(*j)));
      continue;
    }
    if (work.empty() && held.empty()) continue;
    std::vector<const WriteSet*> sets;
    for (const auto& h : held) sets.push_back(h->set.get());
    for (Job* j : work) sets.push_back(j->set.get());
    util::Status s = store.applyAll(sets);
    std::string error;
    if (s) {
      for (const auto& h : held) notice->committed.push_back(h->ticket);
      for (Job* j : work) notice->committed.push_back(j->ticket);
      if (!held.empty()) MESH_INFO("wrote %zu write sets that had failed earlier", held.size());
      held.clear();
    } else {
      if (auto n = checkpointer_->writerLog.admit("group commit")) {  // a full disk fails every one
        MESH_ERROR("group commit of %zu sets failed (%s); writing them one by one%s", sets.size(),
                   s.error().message.c_str(), util::heldBack(*n).c_str());
      }
      error = s.error().message;
      bool blocked = work.empty();  // the held sets alone: they just failed
      if (!held.empty() && !blocked) {
        std::vector<const WriteSet*> old;
        for (const auto& h : held) old.push_back(h->set.get());
        if (auto o = store.applyAll(old); o) {
          for (const auto& h : held) notice->committed.push_back(h->ticket);
          held.clear();
        } else {
          blocked = true;
          error = o.error().message;
        }
      }
      for (Job* j : work) {
        if (blocked) {
          hold(*j, error + " (not tried: an earlier write waits to be written again)");
          continue;
        }
        util::Status one = store.apply(*j->set);
        if (one) {
          notice->committed.push_back(j->ticket);
        } else {
          blocked = true;
          error = one.error().message;
          hold(*j, error);
        }
      }
      if (!held.empty()) retryAtMs = clock.monotonicMs() + options_.retryMs;
    }
    if (stopping && !held.empty()) {
      MESH_ERROR("stopping with %zu write sets not written (%s): their tasks run again at the next start",
                 held.size(), error.c_str());
    }
    notice->commitUs = clock.monotonicUs() - start;
    // Between groups nothing refers to bytes not yet committed: a safe time to collect.
    if (lastGcMs < 0 || clock.monotonicMs() - lastGcMs >= options_.payloadGcMs) {
      collectPayloadSegments(store, *payloads, payloadDir);
      lastGcMs = clock.monotonicMs();
    }
    try {
      pipe.send(pointerMessage(std::move(notice)), zmq::send_flags::none);
    } catch (const zmq::error_t&) {
      return;
    }
  }
}

}  // namespace mesh::store
