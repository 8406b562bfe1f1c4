#include "mesh/store/schema.h"

#include <string>

#include "mesh/store/db.h"

namespace mesh::store {

namespace {
// Version 1. Tasks of a batch are rows of `tasks`; the final result of a task is one row of
// `results` (primary key: first result wins); attempts that did not end the task are rows of
// `attempts` (the timeline `mesh task` shows).
const char* kV1 = R"sql(
CREATE TABLE meta(name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE keys(
  public_key TEXT PRIMARY KEY,      -- z85
  fingerprint TEXT NOT NULL,
  role TEXT NOT NULL,               -- node | client | admin
  state TEXT NOT NULL,              -- accepted | pending | revoked
  comment TEXT NOT NULL DEFAULT '',
  first_seen_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  last_address TEXT NOT NULL DEFAULT '',
  refusals INTEGER NOT NULL DEFAULT 0);
CREATE INDEX keys_fingerprint ON keys(fingerprint);
CREATE TABLE batches(
  id INTEGER PRIMARY KEY,
  label TEXT NOT NULL DEFAULT '',
  handler TEXT NOT NULL,
  priority INTEGER NOT NULL,
  requires TEXT NOT NULL DEFAULT '',  -- comma-separated tags
  timeout_ms INTEGER NOT NULL,
  max_attempts INTEGER NOT NULL,
  client_key TEXT NOT NULL,
  submitted_ms INTEGER NOT NULL,
  sealed INTEGER NOT NULL DEFAULT 0,
  total INTEGER NOT NULL DEFAULT 0,
  cancelled_ms INTEGER,
  finished_ms INTEGER);
CREATE TABLE tasks(
  id INTEGER PRIMARY KEY,
  batch INTEGER NOT NULL,
  idx INTEGER NOT NULL,
  payload BLOB NOT NULL);
CREATE UNIQUE INDEX tasks_batch_idx ON tasks(batch, idx);
CREATE TABLE results(
  task INTEGER PRIMARY KEY,
  status INTEGER NOT NULL,          -- proto::TaskStatus
  output BLOB NOT NULL,
  error TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  node TEXT NOT NULL,
  assigned_ms INTEGER NOT NULL,
  started_ms INTEGER NOT NULL,
  finished_ms INTEGER NOT NULL,
  duration_us INTEGER NOT NULL);
CREATE TABLE attempts(
  task INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  node TEXT NOT NULL,
  assigned_ms INTEGER NOT NULL,
  ended_ms INTEGER NOT NULL,
  outcome TEXT NOT NULL,            -- failed | timed out | crashed | node lost | ...
  error TEXT NOT NULL,
  node_lost INTEGER NOT NULL,       -- 1 when the spore died or went silent under the task
  PRIMARY KEY(task, attempt)) WITHOUT ROWID;
)sql";
// Version 2: map-reduce jobs. A map batch names its reduce handler and partition count; when
// it finishes the nexus starts the reduce batch and links it with next_batch; note says why a
// job stopped early.
const char* kV2 = R"sql(
ALTER TABLE batches ADD COLUMN mr_stage INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN mr_partitions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN mr_combiner TEXT NOT NULL DEFAULT '';
ALTER TABLE batches ADD COLUMN mr_reducer TEXT NOT NULL DEFAULT '';
ALTER TABLE batches ADD COLUMN next_batch INTEGER;
ALTER TABLE batches ADD COLUMN note TEXT NOT NULL DEFAULT '';
)sql";
// Version 3: payloads of 1 KiB or more live in the payload log (payload_log.h); their row has
// an empty payload and says where the bytes are.
const char* kV3 = R"sql(
ALTER TABLE tasks ADD COLUMN payload_segment INTEGER;
ALTER TABLE tasks ADD COLUMN payload_offset INTEGER;
ALTER TABLE tasks ADD COLUMN payload_length INTEGER;
)sql";
// Version 4: the range of payload segments each batch's tasks use, so that finding the
// segments unfinished batches still need reads one row per batch, not one per task.
const char* kV4 = R"sql(
ALTER TABLE batches ADD COLUMN first_segment INTEGER;
ALTER TABLE batches ADD COLUMN last_segment INTEGER;
UPDATE batches SET
  first_segment = (SELECT MIN(payload_segment) FROM tasks t WHERE t.batch = batches.id),
  last_segment = (SELECT MAX(payload_segment) FROM tasks t WHERE t.batch = batches.id);
)sql";
// Version 5: retention (--keep-finished). A finished batch older than the keep duration loses
// its tasks, results and attempts; its row stays, marked with expired_ms, the range of task ids
// it had (first_task, last_task: `mesh task ID` names the batch of a removed task) and the
// final counts of its results (kept_*). purging = 1 while rows of it remain to delete (the
// store writer deletes them in bounded steps). The partial indexes make "anything to expire?"
// one index probe.
const char* kV5 = R"sql(
ALTER TABLE batches ADD COLUMN expired_ms INTEGER;
ALTER TABLE batches ADD COLUMN first_task INTEGER;
ALTER TABLE batches ADD COLUMN last_task INTEGER;
ALTER TABLE batches ADD COLUMN purging INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN kept_succeeded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN kept_failed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN kept_cancelled INTEGER NOT NULL DEFAULT 0;
CREATE INDEX batches_expirable ON batches(finished_ms) WHERE finished_ms IS NOT NULL AND expired_ms IS NULL;
CREATE INDEX batches_purging ON batches(id) WHERE purging = 1;
CREATE INDEX batches_expired_tasks ON batches(last_task) WHERE expired_ms IS NOT NULL;
)sql";
// Version 6: a batch's kept_* counts are its final counts from the moment it is marked expired:
// the transaction that marks it counts all of its results, before any row is deleted, so that
// every read of an expired batch agrees however far its removal got. Version 5 added them up
// step by step; a removal it left half done gets the counts of the results still there.
const char* kV6 = R"sql(
UPDATE batches SET (kept_succeeded, kept_cancelled, kept_failed) = (
  SELECT kept_succeeded + COALESCE(SUM(r.status = 0), 0), kept_cancelled + COALESCE(SUM(r.status = 5), 0),
         kept_failed + COALESCE(SUM(r.status NOT IN (0, 5)), 0)
  FROM tasks t JOIN results r ON r.task = t.id WHERE t.batch = batches.id)
WHERE purging = 1;
)sql";
// Version 7: `mesh retry`. A batch made by a retry names the batch whose failed tasks it copies
// (retry_of); each of its tasks names the task it is a copy of and that task's index
// (retry_of_task, retry_of_idx), so the mapping outlives the original's rows (--keep-finished).
const char* kV7 = R"sql(
ALTER TABLE batches ADD COLUMN retry_of INTEGER;
ALTER TABLE tasks ADD COLUMN retry_of_task INTEGER;
ALTER TABLE tasks ADD COLUMN retry_of_idx INTEGER;
)sql";
// Version 8: `mesh batches`. A batch's kept_* are its final counts from the moment it finishes:
// the transaction that records finished_ms writes them (TaskStore::write), so that a listing of
// finished batches reads one row per batch, never their results. The batches that finished
// before get theirs counted here, once (one pass over their results: about 0.2 s per million);
// expired ones have theirs already (version 6).
const char* kV8 = R"sql(
UPDATE batches SET (kept_succeeded, kept_cancelled, kept_failed) = (
  SELECT COALESCE(SUM(r.status = 0), 0), COALESCE(SUM(r.status = 5), 0), COALESCE(SUM(r.status NOT IN (0, 5)), 0)
  FROM tasks t JOIN results r ON r.task = t.id WHERE t.batch = batches.id)
WHERE finished_ms IS NOT NULL AND expired_ms IS NULL;
)sql";
// Version 9: `mesh nodes drain`. A node key's drained_ms says since when the spore with that key
// is drained (given no task until undrained); NULL: not drained.
const char* kV9 = R"sql(
ALTER TABLE keys ADD COLUMN drained_ms INTEGER;
)sql";
// Version 10: batches that wait for others (`mesh submit --after`, `--after-done`). A row of
// batch_after says that `batch` waits for batch `dep` (a lower id) to finish: with need_ok 1
// with every task succeeded (--after), with 0 whatever its outcome (--after-done). The rows
// are written with the batch, in its submit's transaction, and never change. held is 1 while
// the nexus holds the batch's tasks back (from its submit, when a dependency had not finished,
// until the nexus releases or cancels it): `mesh batches --state waiting` reads it from the row.
const char* kV10 = R"sql(
CREATE TABLE batch_after(
  batch INTEGER NOT NULL,
  dep INTEGER NOT NULL,
  need_ok INTEGER NOT NULL,
  PRIMARY KEY(batch, dep)) WITHOUT ROWID;
ALTER TABLE batches ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
)sql";
// Version 11: an ended attempt's start, as its spore reported it with its result (a failure, a
// timeout reported by the spore); NULL when no report came (the spore was lost, or stopped, or
// handed the task back) and for the attempts stored before this version.
const char* kV11 = R"sql(
ALTER TABLE attempts ADD COLUMN started_ms INTEGER;
)sql";
// Version 12: the signed bundle whose program ran an attempt (name and version), from the
// spore's report; NULL for a built-in, a program of the spore's handler directory, an attempt
// that ended without a report, and the rows stored before this version.
const char* kV12 = R"sql(
ALTER TABLE results ADD COLUMN bundle TEXT;
ALTER TABLE results ADD COLUMN bundle_version INTEGER;
ALTER TABLE attempts ADD COLUMN bundle TEXT;
ALTER TABLE attempts ADD COLUMN bundle_version INTEGER;
)sql";
}  // namespace

util::Status migrate(Db& db) {
  auto st = db.prepare("PRAGMA user_version");
  if (!st) return st.error();
  auto row = st->step();
  if (!row) return row.error();
  int version = static_cast<int>(st->getInt(0));
  st->reset();
  if (version > kSchemaVersion) {
    return util::err("made by a newer release (schema " + std::to_string(version) +
                     ", this release knows " + std::to_string(kSchemaVersion) + "): upgrade");
  }
  // Step n brings version n-1 to n, each in its own transaction.
  const char* steps[] = {kV1, kV2, kV3, kV4, kV5, kV6, kV7, kV8, kV9, kV10, kV11, kV12};
  static_assert(sizeof steps / sizeof steps[0] == kSchemaVersion, "one migration step per schema version");
  for (int next = version + 1; next <= kSchemaVersion; ++next) {
    Transaction tx(db);
    if (!tx.begun()) return tx.begun();
    if (auto s = db.exec(steps[next - 1]); !s) return s;
    if (auto s = db.exec("PRAGMA user_version = " + std::to_string(next)); !s) return s;
    if (auto s = tx.commit(); !s) return s;
  }
  return {};
}

}  // namespace mesh::store
