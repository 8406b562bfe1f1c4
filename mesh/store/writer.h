// StoreWriter: the nexus's group-commit thread. The nexus loop hands it WriteSets (by message,
// over inproc); the thread takes every set waiting, writes them in ONE transaction, commits
// (synchronous=FULL), and answers with a Commit notice. So the loop never blocks on fsync, and
// the more work arrives, the more each commit carries.
//
// If a group fails, its sets are written one by one up to the first that fails. That set, and
// every one behind it (untried), is reported failed: the nexus refuses the submits it carried.
// The writer keeps the rest of it (results, attempts, batch updates) and writes it before
// anything handed over later, a second later or with the next submit, and reports the ticket
// committed then. So a set is never durable before one handed over ahead of it: a batch's
// `finished` is not stored while some of its results wait to be written again.
//
// A refused chunk of a batch that exists already (a client's later chunk) breaks that batch:
// the writer never writes another chunk of it (CommitNotice::refusedChunks), and no total it
// stores for it passes the first index it refused, so a batch never has a gap in its task
// indexes, even when the error was transient and the next try succeeds. A refused new batch
// takes with it the updates that refer to it: its total, and a map stage's link to it
// (BatchUpdate::nextBatch), so that no row points at a batch that was never stored.
//
// WAL checkpoints (copying committed pages from the WAL into the database file, and that
// file's fsync) run on a second thread with its own connection, woken each time the WAL has
// grown by WriterOptions::checkpointPages, instead of inside a commit as SQLite's automatic
// checkpoint would: in line they cost about a quarter of the throughput when payloads are large
// (docs/benchmarks.md). A turn repeats while commits add frames, and an idle WAL is copied
// too, so that SQLite can start the WAL again from its beginning. If the WAL still passes WriterOptions::walHardPages (the checkpoint
// thread cannot keep up, or a reader pins old pages), the writer checkpoints in line as well.
//
// Payloads of PayloadLog::kMinBytes or more go to the payload log beside the database
// (payload_log.h), synced before the commit that refers to them.
//
// Retention (WriterOptions::keepFinishedMs): the writer also deletes the tasks, results and
// attempts of batches finished longer ago than that (TaskStore::expireStep), in steps of at most
// expiryStepTasks tasks, each its own transaction, never while failed sets wait to be written
// again. A pass starts at the first turn after a start and then every expiryCheckMs; while it
// has work, the writer runs one step before each group commit (so a commit waits for one
// step at most) and steps back to back while idle.
//
// Thread rule: the object belongs to the nexus loop thread (submit, socket, receive); the
// writer thread owns its own Db connection.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "mesh/store/task_store.h"

namespace mesh::store {

struct Checkpointer;

struct WriterOptions {
  // Wake the checkpoint thread when the WAL reaches firstCheckpointPages (4 MiB, SQLite's own
  // default), then each time another checkpointPages (16 MiB) have been appended: under a
  // stream of large commits, fewer and larger checkpoints copy a page rewritten by many commits
  // once and fsync the database file less often.
  int firstCheckpointPages = 1000;
  int checkpointPages = 4096;
  // When the checkpoint thread has copied all but at most this many pages (1 MiB), the writer
  // copies the rest itself, so that the WAL restarts and stays small under light load.
  int finishPages = 256;
  // Past this WAL size (256 MiB) the writer also checkpoints in line after its commits.
  int walHardPages = 65536;
  // When no commit has come for this long, copy what is left, so the WAL starts from its
  // beginning at the next write instead of growing across bursts (0: never).
  std::int64_t idleCheckpointMs = 100;
  // At most this often, after a commit, delete the payload segments no unfinished batch needs
  // (payload_log.h). The first commit after a start always looks.
  std::int64_t payloadGcMs = 60'000;
  // After a failed write, what is left of the failed sets is tried again this much later (or
  // at once with the next submit, for which a client waits).
  std::int64_t retryMs = 1000;
  // Retention: delete the tasks, results and attempts of batches finished longer ago than this
  // (0: keep everything). Checked once after the start, then every expiryCheckMs.
  std::int64_t keepFinishedMs = 0;
  std::int64_t expiryCheckMs = 60'000;
  std::uint32_t expiryStepTasks = 1000;
  // For the log line: how the operator wrote the keep duration (e.g. "7d").
  std::string keepFinishedText;
};

struct CommitNotice {
  std::vector<std::uint64_t> committed;  // tickets now durable, in order
  // Tickets whose sets failed, with the error: their submits are refused; the rest of each set
  // is kept by the writer, and the ticket comes back in `committed` once that is written.
  std::vector<std::pair<std::uint64_t, std::string>> failed;
  // (ticket, batch): chunks of that batch the set carried that were not written, although the
  // ticket is (or will be) committed, because an earlier chunk of the batch was refused: their
  // submits are refused as failed ones are. A ticket may also be in `failed`.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> refusedChunks;
  std::int64_t commitUs = 0;
};

class StoreWriter {
 public:
  // Starts the thread; fails if the database cannot be opened.
  static util::Result<std::unique_ptr<StoreWriter>> start(zmq::context_t& ctx, const std::string& dbPath,
                                                          WriterOptions options = {});
  ~StoreWriter();  // writes what is queued, then stops
  StoreWriter(const StoreWriter&) = delete;
  StoreWriter& operator=(const StoreWriter&) = delete;

  // Queues a set; returns its ticket (increasing from 1).
  std::uint64_t submit(std::unique_ptr<WriteSet> set);
  // Poll this socket for POLLIN, then call receive().
  zmq::socket_t& socket() { return socket_; }
  std::optional<CommitNotice> receive();
  std::uint64_t queued() const { return nextTicket_ - 1 - answered_; }

  struct CheckpointCounts {
    std::uint64_t done = 0;     // checkpoints run by the checkpoint thread
    std::uint64_t inLine = 0;   // run by the writer because the WAL passed walHardPages
    std::uint64_t finished = 0; // the last pages of a checkpoint, copied by the writer (finishPages)
    std::uint64_t errors = 0;   // failed (logged); the next one tries again
  };
  CheckpointCounts checkpoints() const;
  std::uint64_t payloadSegmentsDeleted() const;
  struct ExpiryCounts {
    std::uint64_t batches = 0;  // batches marked expired
    std::uint64_t tasks = 0;    // task rows deleted
    std::uint64_t errors = 0;   // failed steps (logged; the next check tries again)
  };
  ExpiryCounts expiry() const;

 private:
  explicit StoreWriter(zmq::context_t& ctx);
  void run(Db db, std::string endpoint, std::unique_ptr<PayloadLog> payloads, std::string payloadDir);
  void collectPayloadSegments(TaskStore& store, const PayloadLog& log, const std::string& dir);
  // One expiry step when one is due; returns whether the pass has more to do at once.
  bool expireSome(TaskStore& store);

  zmq::context_t& ctx_;
  std::unique_ptr<Checkpointer> checkpointer_;  // stopped after the writer thread
  WriterOptions options_;
  std::atomic<std::uint64_t> segmentsDeleted_{0};
  std::atomic<std::uint64_t> batchesExpired_{0}, tasksExpired_{0}, expiryErrors_{0};
  // The writer thread's: when the next expiry pass starts (-1: at once), and the current pass.
  std::int64_t nextExpiryMs_ = -1;
  bool expiryPass_ = false;
  // The writer thread's: batches broken by a refused chunk, each with the first task index it
  // refused (where the batch's stored tasks end). Never more chunks for them; totals clamped.
  std::map<std::uint64_t, std::uint64_t> broken_;
  std::uint64_t passBatches_ = 0, passTasks_ = 0;
  zmq::socket_t socket_;
  std::thread thread_;
  std::uint64_t nextTicket_ = 1;
  std::uint64_t answered_ = 0;
};

}  // namespace mesh::store
