// Batches, tasks, results and attempts in SQLite: the durable half of the nexus.
//
// Writes go through apply(WriteSet) in one transaction (the group commit). Reads serve the
// CLI (`mesh results`, `mesh task`) and recovery after a restart.
//
// Invariants: a task row exists before any result for it; a result row is final and written
// once (INSERT OR IGNORE: the first result for a task id wins).
// Thread rule: a TaskStore uses one Db and belongs to that Db's thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mesh/store/db.h"
#include "mesh/store/payload_log.h"

namespace mesh::store {

struct BatchRecord {
  std::uint64_t id = 0;
  std::string label;
  std::string handler;
  std::uint8_t priority = 0;
  std::vector<std::string> requiredTags;
  std::uint32_t timeoutMs = 0;
  std::uint8_t maxAttempts = 1;
  std::string clientKey;
  std::int64_t submittedMs = 0;
  bool sealed = false;
  std::uint64_t total = 0;
  std::optional<std::int64_t> cancelledMs;
  std::optional<std::int64_t> finishedMs;
  // Map-reduce (0 none, 1 map, 2 reduce; proto::MapReduce::Stage).
  std::uint8_t mrStage = 0;
  std::uint32_t mrPartitions = 0;
  std::string mrCombiner;
  std::string mrReducer;
  std::optional<std::uint64_t> nextBatch;
  std::string note;
  // Retention (--keep-finished): when the batch's tasks, results and attempts were removed (set
  // when the removal begins) and the task ids it had. The kept_* are the final counts of its
  // results: written with finishedMs (schema v8), and counted again with expiredMs, in the same
  // transaction, before any row is deleted. 0 while the batch has not finished.
  std::optional<std::int64_t> expiredMs;
  std::uint64_t firstTask = 0, lastTask = 0;
  std::uint64_t keptSucceeded = 0, keptFailed = 0, keptCancelled = 0;
  // `mesh retry`: the batch whose failed tasks this one copies.
  std::optional<std::uint64_t> retryOf;
  // `mesh submit --after` / `--after-done` (schema v10, table batch_after): the batches it waits
  // for to finish with every task succeeded (after), or to finish at all (afterDone); lower ids,
  // each in one list at most, in ascending order. Written with the batch's row, never changed.
  std::vector<std::uint64_t> after, afterDone;
  // Its tasks are held back until its dependencies finish (batches.held): set at the submit,
  // cleared by a BatchUpdate when the nexus releases or cancels it.
  bool held = false;
};

// A run of tasks of one batch with consecutive ids and indexes. The payload views point into
// memory that `keepAlive` owns (typically the received frame), so nothing is copied.
//
// Or, with retryOf set (`mesh retry`), no payloads: the store copies every task of batch
// retryOf whose result is a failure (any status but ok and cancelled), in index order, as tasks
// firstId.. with indexes firstIndex.., each row naming its original (retry_of_task, retry_of_idx)
// and keeping its payload (in the row, or the same payload log place). One payload at a time
// is in memory. If it finds other than retryCount such tasks (the original's rows were
// removed meanwhile by --keep-finished), the write fails and nothing of the set is written.
struct TaskChunk {
  std::uint64_t batch = 0;
  std::uint64_t firstId = 0;
  std::uint64_t firstIndex = 0;
  std::vector<std::string_view> payloads;
  std::shared_ptr<const void> keepAlive;
  std::uint64_t retryOf = 0;
  std::uint64_t retryCount = 0;
};

struct ResultRecord {
  std::uint64_t task = 0;
  std::uint8_t status = 0;  // proto::TaskStatus
  std::string output;
  std::string error;
  std::uint8_t attempts = 0;
  std::string node;
  std::int64_t assignedMs = 0;
  std::int64_t startedMs = 0;
  std::int64_t finishedMs = 0;
  std::uint64_t durationUs = 0;
  std::string bundle;  // the bundle whose program ran it and its version ("", 0: none; schema 12)
  std::uint64_t bundleVersion = 0;
  // A failure's (status neither ok nor cancelled) payload, when the nexus still had it: written
  // into the task's row if the row's payload is in the payload log, whose segments are deleted
  // once no unfinished batch needs them; so a failed task's payload stays as long as its row,
  // for `mesh retry`. Empty otherwise.
  std::string payload;
};

struct AttemptRecord {
  std::uint64_t task = 0;
  std::uint8_t attempt = 0;
  std::string node;
  std::int64_t assignedMs = 0;
  std::int64_t endedMs = 0;
  std::int64_t startedMs = 0;  // from the spore's report; 0 when none came (schema 11)
  std::string outcome;
  std::string error;
  bool nodeLost = false;
  std::string bundle;  // from the spore's report, as ResultRecord::bundle ("": none; schema 12)
  std::uint64_t bundleVersion = 0;
};

struct BatchCounts {
  std::uint64_t succeeded = 0;
  std::uint64_t failed = 0;
  std::uint64_t cancelled = 0;
};

struct BatchUpdate {
  std::uint64_t batch = 0;
  std::optional<std::uint64_t> total;  // with sealed
  bool sealed = false;
  std::optional<std::int64_t> cancelledMs;
  std::optional<std::int64_t> finishedMs;
  std::optional<std::uint64_t> nextBatch;
  std::optional<std::string> note;
  // With finishedMs: the batch's final counts (the nexus's, of the results it wrote), stored as
  // its kept_* in the same transaction. Without them the store counts its result rows there.
  std::optional<BatchCounts> finalCounts;
  // batches.held (BatchRecord::held): false when the nexus releases or cancels a waiting batch.
  std::optional<bool> held;
};

// Everything one group commit writes.
// `mesh nodes drain|undrain`: a node key's keys.drained_ms (since when; none: undrained). A key
// that is no longer in the table changes nothing (it was removed meanwhile).
struct KeyDrain {
  std::string key;  // z85 public key
  std::optional<std::int64_t> sinceMs;
};

struct WriteSet {
  std::vector<BatchRecord> newBatches;
  std::vector<TaskChunk> chunks;
  std::vector<ResultRecord> results;
  std::vector<AttemptRecord> attempts;
  std::vector<BatchUpdate> updates;
  std::vector<KeyDrain> drains;
  bool empty() const {
    return newBatches.empty() && chunks.empty() && results.empty() && attempts.empty() && updates.empty() &&
           drains.empty();
  }
};

// One task to run again after a restart.
struct PendingTask {
  std::uint64_t id = 0;
  std::uint64_t batch = 0;
  std::uint64_t index = 0;
  std::string payload;
  std::uint8_t attemptsMade = 0;   // attempts already recorded
  std::uint8_t nodesLost = 0;      // of which ended by their spore going away: died (charged), or
                                   // reconnected, stopped or handed it back (uncharged)
  std::uint8_t reconnects = 0;     // of nodesLost, the uncharged ones (not toward quarantine)
  std::string payloadError;        // the payload could not be read back (then payload is empty)
};

// A batch row and the counts of its final results, read from one snapshot.
struct BatchProgress {
  BatchRecord record;
  BatchCounts counts;  // a finished batch's kept (final) counts; else counted from its result rows
};

// Where a task made by `mesh retry` comes from.
struct RetryOrigin {
  std::uint64_t batch = 0, task = 0, index = 0;
};

struct TaskRow {
  std::uint64_t id = 0, batch = 0, index = 0;
  std::optional<RetryOrigin> retryOf;
  BatchRecord batchRecord;
  std::optional<ResultRecord> result;
  std::vector<AttemptRecord> attempts;
};

struct ResultRow {
  std::uint64_t task = 0, index = 0;
  std::optional<RetryOrigin> retryOf;
  ResultRecord result;
};

// What one expireStep did.
struct ExpiryStep {
  std::uint64_t batch = 0;   // the batch it worked on; 0: nothing to expire
  std::uint32_t marked = 0;  // batches this step marked expired: it, and its job's reduce batch
  std::uint64_t tasks = 0;   // task rows deleted (with their results and attempts)
  std::uint64_t rows = 0;    // rows deleted in all
  bool done = false;         // nothing of the batch is left to delete
};

// `mesh batches`: which batch rows a listing takes. The states are those of `mesh status`
// (mesh/node/client.h, batchState), read from the row: waiting (held: its dependencies have not
// finished; not cancelled, not finished), open (not sealed, not held), running (sealed, not held, not
// finished), cancelling (cancelled, not finished), finished (not cancelled), cancelled (finished
// after a cancel, or with a cancelled result), expired (its rows removed: --keep-finished).
struct BatchFilter {
  enum class State : std::uint8_t { kAll, kOpen, kRunning, kCancelling, kFinished, kCancelled, kExpired, kWaiting };
  State state = State::kAll;
  std::optional<std::string> label;      // exactly this label ("" too), or any
  std::optional<std::string> clientKey;  // submitted by this key, or by any
  bool failedOnly = false;               // only finished batches with a failed task (kept_failed > 0)
};

// One page of a listing, newest first.
struct BatchListing {
  std::vector<BatchRecord> batches;
  // Where the next page starts (`before` of the next call: batches with a lower id), or 0 when
  // no batch with a lower id exists at all.
  std::uint64_t nextBefore = 0;
};

class TaskStore {
 public:
  // log: where payloads of PayloadLog::kMinBytes or more are written (the writer's); without
  // one every payload stays in its row. reader: reads them back for forEachPendingTask.
  explicit TaskStore(Db& db, PayloadLog* log = nullptr, PayloadReader* reader = nullptr)
      : db_(db), log_(log), reader_(reader) {}

  // Applies the whole set in one transaction; on error nothing of it is written.
  util::Status apply(const WriteSet& set);
  // Applies several sets in one transaction (the group commit); all or nothing.
  util::Status applyAll(std::span<const WriteSet* const> sets);

  // Recovery.
  util::Result<std::vector<BatchRecord>> unfinishedBatches();
  util::Result<std::uint64_t> maxTaskId();
  util::Result<std::uint64_t> maxBatchId();
  // Calls `each` for every task of an unfinished batch that has no result, in id order.
  util::Status forEachPendingTask(const std::function<void(PendingTask&&)>& each);
  util::Result<BatchCounts> countResults(std::uint64_t batch);
  // Calls `each` for the tasks of `batch` with ids firstId.. (at most `limit`), in id order, with
  // their payloads (read back from the payload log when they are there; payloadError says why
  // not), until `each` returns false: the tasks of a retry batch, loaded into the scheduler in
  // steps after their commit. Returns the number of tasks given.
  util::Result<std::uint64_t> forEachTaskFrom(std::uint64_t batch, std::uint64_t firstId, std::uint64_t limit,
                                              const std::function<bool(PendingTask&&)>& each);
  // The ranges of payload segments (first, last) that unfinished batches' tasks may refer to
  // (the ones recovery may read): one row per batch.
  util::Result<std::vector<std::pair<std::uint64_t, std::uint64_t>>> payloadSegmentsInUse();

  // Queries.
  util::Result<std::optional<BatchRecord>> batch(std::uint64_t id);
  // The batch row with its counts, read together: while the writer removes an expired batch's
  // rows, they are its kept (final) counts, never a sum of rows read at different moments.
  util::Result<std::optional<BatchProgress>> progress(std::uint64_t id);
  util::Result<std::vector<BatchRecord>> recentBatches(int limit);
  // The batches with an id below `before` (0: any id) that match `filter`, highest id first, at
  // most `limit` of them, looking only at the ids in [before - scanIds, before): each call
  // reads at most scanIds batch rows (plus one index probe), whatever the filter, and never a
  // task or result row (a finished batch's counts are its kept_*). A page with fewer than
  // `limit` batches and a nextBefore other than 0 means "nothing more in this range": the
  // caller asks again from nextBefore.
  util::Result<BatchListing> listBatches(const BatchFilter& filter, std::uint64_t before, std::uint32_t limit,
                                         std::uint64_t scanIds);
  util::Result<std::vector<ResultRow>> resultsPage(std::uint64_t batch, std::uint64_t fromIndex, int limit);
  // The outputs of a batch's successful tasks in index order (the map stage's outputs).
  util::Result<std::vector<std::string>> outputs(std::uint64_t batch);
  // How many tasks of a batch succeeded and the total size of their outputs, without reading
  // the outputs (what `outputs` would return).
  struct OutputsSize {
    std::uint64_t count = 0, bytes = 0;
  };
  util::Result<OutputsSize> outputsSize(std::uint64_t batch);
  // Finished map batches whose reduce stage was never started (a crash in between).
  util::Result<std::vector<BatchRecord>> mapStagesWithoutReduce();
  util::Result<std::optional<TaskRow>> task(std::uint64_t id);
  // The id of the task at `index` of `batch` (`mesh task BATCH:INDEX`), or nullopt.
  util::Result<std::optional<std::uint64_t>> taskAt(std::uint64_t batch, std::uint64_t index);
  // The expired batch whose task ids spanned `taskId` (the task's row is gone), if any.
  util::Result<std::optional<BatchRecord>> expiredBatchOfTask(std::uint64_t taskId);

  // Retention: one bounded step, in one transaction. Continues a batch whose removal began, or
  // else marks expired (expired_ms = nowMs) the batch that finished earliest at or before
  // cutoffMs and may go: a plain or reduce batch; a map batch only once its job has ended (its
  // reduce batch finished by cutoffMs too, which is then marked with it, or the job stopped at
  // the map stage: cancelled or a note), and sets its kept_* counts to the counts of all of its
  // results (the final ones, in the transaction that marks it). Then deletes up to maxTasks of
  // that batch's tasks with their results and attempts. The batch row stays. A step cut short
  // (a crash) is rolled back whole; the next one continues where the last committed one ended.
  // Costs one probe of a partial index when nothing is due.
  util::Result<ExpiryStep> expireStep(std::int64_t cutoffMs, std::int64_t nowMs, std::uint32_t maxTasks);

 private:
  util::Status write(const WriteSet& set, const std::vector<PayloadRef>& refs, std::size_t& nextRef);
  // The rows of a retry chunk (TaskChunk::retryOf); widens the segment range by the payload log
  // places it copies.
  util::Status copyFailedTasks(const TaskChunk& c, std::uint64_t& firstSegment, std::uint64_t& lastSegment);
  // Fills the records' after and afterDone from batch_after (one indexed probe per record).
  util::Status readAfter(std::span<BatchRecord> records);
  // Whether a payload goes to the payload log: applyAll and write must agree, payload by payload.
  bool inLog(std::string_view payload) const { return log_ && payload.size() >= PayloadLog::kMinBytes; }
  Db& db_;
  PayloadLog* log_;
  PayloadReader* reader_;
};

}  // namespace mesh::store
