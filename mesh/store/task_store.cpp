#include "mesh/store/task_store.h"

#include <algorithm>
#include <cstdint>

#include "mesh/util/bytes.h"

namespace mesh::store {

namespace {
std::string joinTags(const std::vector<std::string>& tags) {
  std::string out;
  for (const auto& t : tags) {
    if (!out.empty()) out += ',';
    out += t;
  }
  return out;
}

const char* kBatchColumns =
    "id, label, handler, priority, requires, timeout_ms, max_attempts, client_key, submitted_ms, "
    "sealed, total, cancelled_ms, finished_ms, mr_stage, mr_partitions, mr_combiner, mr_reducer, next_batch, note, "
    "expired_ms, first_task, last_task, kept_succeeded, kept_failed, kept_cancelled, retry_of, held";

BatchRecord readBatch(const Statement& st, int c = 0) {
  BatchRecord b;
  b.id = static_cast<std::uint64_t>(st.getInt(c + 0));
  b.label = st.getText(c + 1);
  b.handler = st.getText(c + 2);
  b.priority = static_cast<std::uint8_t>(st.getInt(c + 3));
  b.requiredTags = util::splitList(st.getText(c + 4), ',');
  b.timeoutMs = static_cast<std::uint32_t>(st.getInt(c + 5));
  b.maxAttempts = static_cast<std::uint8_t>(st.getInt(c + 6));
  b.clientKey = st.getText(c + 7);
  b.submittedMs = st.getInt(c + 8);
  b.sealed = st.getInt(c + 9) != 0;
  b.total = static_cast<std::uint64_t>(st.getInt(c + 10));
  if (!st.isNull(c + 11)) b.cancelledMs = st.getInt(c + 11);
  if (!st.isNull(c + 12)) b.finishedMs = st.getInt(c + 12);
  b.mrStage = static_cast<std::uint8_t>(st.getInt(c + 13));
  b.mrPartitions = static_cast<std::uint32_t>(st.getInt(c + 14));
  b.mrCombiner = st.getText(c + 15);
  b.mrReducer = st.getText(c + 16);
  if (!st.isNull(c + 17)) b.nextBatch = static_cast<std::uint64_t>(st.getInt(c + 17));
  b.note = st.getText(c + 18);
  if (!st.isNull(c + 19)) b.expiredMs = st.getInt(c + 19);
  if (!st.isNull(c + 20)) b.firstTask = static_cast<std::uint64_t>(st.getInt(c + 20));
  if (!st.isNull(c + 21)) b.lastTask = static_cast<std::uint64_t>(st.getInt(c + 21));
  b.keptSucceeded = static_cast<std::uint64_t>(st.getInt(c + 22));
  b.keptFailed = static_cast<std::uint64_t>(st.getInt(c + 23));
  b.keptCancelled = static_cast<std::uint64_t>(st.getInt(c + 24));
  if (!st.isNull(c + 25)) b.retryOf = static_cast<std::uint64_t>(st.getInt(c + 25));
  b.held = st.getInt(c + 26) != 0;
  return b;
}

const char* kResultColumns =
    "r.status, r.output, r.error, r.attempts, r.node, r.assigned_ms, r.started_ms, r.finished_ms, "
    "r.duration_us, COALESCE(r.bundle, ''), COALESCE(r.bundle_version, 0)";
constexpr int kResultColumnCount = 11;

ResultRecord readResult(const Statement& st, std::uint64_t task, int c) {
  ResultRecord r;
  r.task = task;
  r.status = static_cast<std::uint8_t>(st.getInt(c + 0));
  r.output = std::string(st.getBlob(c + 1));
  r.error = st.getText(c + 2);
  r.attempts = static_cast<std::uint8_t>(st.getInt(c + 3));
  r.node = st.getText(c + 4);
  r.assignedMs = st.getInt(c + 5);
  r.startedMs = st.getInt(c + 6);
  r.finishedMs = st.getInt(c + 7);
  r.durationUs = static_cast<std::uint64_t>(st.getInt(c + 8));
  r.bundle = st.getText(c + 9);
  r.bundleVersion = static_cast<std::uint64_t>(st.getInt(c + 10));
  return r;
}

template <typename Fn>
util::Status forRows(Statement& st, Fn&& fn) {
  for (;;) {
    auto row = st.step();
    if (!row) return row.error();
    if (!*row) return {};
    fn(st);
  }
}
}  // namespace

util::Status TaskStore::apply(const WriteSet& set) {
  const WriteSet* one[] = {&set};
  return applyAll(one);
}

util::Status TaskStore::applyAll(std::span<const WriteSet* const> sets) {
  // Large payloads first, into the payload log, synced before the transaction that refers to
  // them commits.
  std::vector<PayloadRef> refs;
  if (log_) {
    for (const WriteSet* set : sets) {
      for (const auto& c : set->chunks) {
        for (std::string_view p : c.payloads) {
          if (!inLog(p)) continue;
          auto ref = log_->add(p);
          if (!ref) return ref.error();
          refs.push_back(*ref);
        }
      }
    }
    if (!refs.empty()) {
      if (auto s = log_->sync(); !s) return s;
    }
  }
  Transaction tx(db_);
  if (!tx.begun()) return tx.begun();
  std::size_t nextRef = 0;
  for (const WriteSet* set : sets) {
    if (auto s = write(*set, refs, nextRef); !s) return s;
  }
  return tx.commit();
}

util::Status TaskStore::write(const WriteSet& set, const std::vector<PayloadRef>& refs, std::size_t& nextRef) {
  if (!set.newBatches.empty()) {
    auto st = db_.prepare(
        "INSERT INTO batches(id, label, handler, priority, requires, timeout_ms, max_attempts, "
        "client_key, submitted_ms, sealed, total, mr_stage, mr_partitions, mr_combiner, mr_reducer, retry_of, held) "
        "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    if (!st) return st.error();
    for (const auto& b : set.newBatches) {
      st->bind(1, static_cast<std::int64_t>(b.id)).bindText(2, b.label).bindText(3, b.handler)
          .bind(4, b.priority).bindText(5, joinTags(b.requiredTags)).bind(6, b.timeoutMs)
          .bind(7, b.maxAttempts).bindText(8, b.clientKey).bind(9, b.submittedMs)
          .bind(10, b.sealed ? 1 : 0).bind(11, static_cast<std::int64_t>(b.total)).bind(12, b.mrStage)
          .bind(13, b.mrPartitions).bindText(14, b.mrCombiner).bindText(15, b.mrReducer);
      if (b.retryOf) st->bind(16, static_cast<std::int64_t>(*b.retryOf));
      else st->bindNull(16);
      st->bind(17, b.held ? 1 : 0);
      if (auto s = st->run(); !s) return s;
      st->reset();
    }
    std::optional<Statement> dep;
    for (const auto& b : set.newBatches) {
      for (int needOk = 1; needOk >= 0; --needOk) {
        for (std::uint64_t d : needOk ? b.after : b.afterDone) {
          MESH_ASSERT(d < b.id, "a batch waits only for batches with lower ids");
          if (!dep) {
            auto p = db_.prepare("INSERT INTO batch_after(batch, dep, need_ok) VALUES(?,?,?)");
            if (!p) return p.error();
            dep.emplace(std::move(*p));
          }
          dep->bind(1, static_cast<std::int64_t>(b.id)).bind(2, static_cast<std::int64_t>(d)).bind(3, needOk);
          if (auto s = dep->run(); !s) return s;
          dep->reset();
        }
      }
    }
  }
  if (!set.chunks.empty()) {
    auto st = db_.prepare(
        "INSERT INTO tasks(id, batch, idx, payload, payload_segment, payload_offset, payload_length) "
        "VALUES(?,?,?,?,?,?,?)");
    if (!st) return st.error();
    for (const auto& c : set.chunks) {
      std::uint64_t firstSegment = UINT64_MAX, lastSegment = 0;
      if (c.retryOf != 0) {
        if (auto s = copyFailedTasks(c, firstSegment, lastSegment); !s) return s;
      }
      for (std::size_t i = 0; i < c.payloads.size(); ++i) {
        std::string_view payload = c.payloads[i];
        st->bind(1, static_cast<std::int64_t>(c.firstId + i)).bind(2, static_cast<std::int64_t>(c.batch))
            .bind(3, static_cast<std::int64_t>(c.firstIndex + i));
        if (inLog(payload)) {
          MESH_ASSERT(nextRef < refs.size(), "a payload without its place in the payload log");
          const PayloadRef& ref = refs[nextRef++];
          firstSegment = std::min(firstSegment, ref.segment);
          lastSegment = std::max(lastSegment, ref.segment);
          st->bindBlobStatic(4, std::string_view("", 0)).bind(5, static_cast<std::int64_t>(ref.segment))
              .bind(6, static_cast<std::int64_t>(ref.offset)).bind(7, static_cast<std::int64_t>(ref.length));
        } else {
          st->bindBlobStatic(4, payload).bindNull(5).bindNull(6).bindNull(7);
        }
        if (auto s = st->run(); !s) return s;
        st->reset();
      }
      if (lastSegment > 0) {
        auto range = db_.prepare(
            "UPDATE batches SET first_segment = MIN(COALESCE(first_segment, ?2), ?2), "
            "last_segment = MAX(COALESCE(last_segment, ?3), ?3) WHERE id = ?1");
        if (!range) return range.error();
        range->bind(1, static_cast<std::int64_t>(c.batch)).bind(2, static_cast<std::int64_t>(firstSegment))
            .bind(3, static_cast<std::int64_t>(lastSegment));
        if (auto s = range->run(); !s) return s;
      }
    }
  }
  if (!set.results.empty()) {
    auto st = db_.prepare(
        "INSERT OR IGNORE INTO results(task, status, output, error, attempts, node, assigned_ms, "
        "started_ms, finished_ms, duration_us, bundle, bundle_version) SELECT ?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12 "
        "WHERE EXISTS(SELECT 1 FROM tasks WHERE id = ?1)");
    if (!st) return st.error();
    for (const auto& r : set.results) {
      st->bind(1, static_cast<std::int64_t>(r.task)).bind(2, r.status).bindBlobStatic(3, r.output)
          .bindText(4, r.error).bind(5, r.attempts).bindText(6, r.node).bind(7, r.assignedMs)
          .bind(8, r.startedMs).bind(9, r.finishedMs).bind(10, static_cast<std::int64_t>(r.durationUs));
      if (r.bundle.empty()) {
        st->bindNull(11).bindNull(12);
      } else {
        st->bindText(11, r.bundle).bind(12, static_cast<std::int64_t>(r.bundleVersion));
      }
      if (auto s = st->run(); !s) return s;
      st->reset();
    }
    // A failure's payload moves from the payload log into its row (ResultRecord::payload).
    std::optional<Statement> keep;
    for (const auto& r : set.results) {
      if (r.payload.empty() || r.status == 0 || r.status == 5) continue;
      if (!keep) {
        auto k = db_.prepare(
            "UPDATE tasks SET payload = ?2, payload_segment = NULL, payload_offset = NULL, payload_length = NULL "
            "WHERE id = ?1 AND payload_segment IS NOT NULL");
        if (!k) return k.error();
        keep.emplace(std::move(*k));
      }
      keep->bind(1, static_cast<std::int64_t>(r.task)).bindBlobStatic(2, r.payload);
      if (auto s = keep->run(); !s) return s;
      keep->reset();
    }
  }
  if (!set.attempts.empty()) {
    auto st = db_.prepare(
        "INSERT OR IGNORE INTO attempts(task, attempt, node, assigned_ms, ended_ms, outcome, error, node_lost, "
        "started_ms, bundle, bundle_version) SELECT ?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11 "
        "WHERE EXISTS(SELECT 1 FROM tasks WHERE id = ?1)");
    if (!st) return st.error();
    for (const auto& a : set.attempts) {
      st->bind(1, static_cast<std::int64_t>(a.task)).bind(2, a.attempt).bindText(3, a.node)
          .bind(4, a.assignedMs).bind(5, a.endedMs).bindText(6, a.outcome).bindText(7, a.error)
          .bind(8, a.nodeLost ? 1 : 0);
      if (a.startedMs > 0) {
        st->bind(9, a.startedMs);
      } else {
        st->bindNull(9);
      }
      if (a.bundle.empty()) {
        st->bindNull(10).bindNull(11);
      } else {
        st->bindText(10, a.bundle).bind(11, static_cast<std::int64_t>(a.bundleVersion));
      }
      if (auto s = st->run(); !s) return s;
      st->reset();
    }
  }
  for (const auto& u : set.updates) {
    if (u.total) {
      auto st = db_.prepare("UPDATE batches SET total = ?2, sealed = ?3 WHERE id = ?1");
      if (!st) return st.error();
      st->bind(1, static_cast<std::int64_t>(u.batch)).bind(2, static_cast<std::int64_t>(*u.total)).bind(3, u.sealed ? 1 : 0);
      if (auto s = st->run(); !s) return s;
    }
    if (u.cancelledMs) {
      auto st = db_.prepare("UPDATE batches SET cancelled_ms = ?2 WHERE id = ?1 AND cancelled_ms IS NULL");
      if (!st) return st.error();
      st->bind(1, static_cast<std::int64_t>(u.batch)).bind(2, *u.cancelledMs);
      if (auto s = st->run(); !s) return s;
    }
    if (u.finishedMs) {
      // The final counts go with the end (schema v8): given, or counted here from the result
      // rows, which this transaction has written before its updates.
      // proto::TaskStatus: ok = 0, cancelled = 5; everything else is a failure once final.
      auto st = u.finalCounts
                    ? db_.prepare("UPDATE batches SET finished_ms = ?2, kept_succeeded = ?3, kept_failed = ?4, "
                                  "kept_cancelled = ?5 WHERE id = ?1")
                    : db_.prepare("UPDATE batches SET finished_ms = ?2, (kept_succeeded, kept_cancelled, kept_failed) = "
                                  "(SELECT COALESCE(SUM(r.status = 0), 0), COALESCE(SUM(r.status = 5), 0), "
                                  "COALESCE(SUM(r.status NOT IN (0, 5)), 0) FROM tasks t JOIN results r ON r.task = t.id "
                                  "WHERE t.batch = ?1) WHERE id = ?1");
      if (!st) return st.error();
      st->bind(1, static_cast<std::int64_t>(u.batch)).bind(2, *u.finishedMs);
      if (u.finalCounts) {
        st->bind(3, static_cast<std::int64_t>(u.finalCounts->succeeded))
            .bind(4, static_cast<std::int64_t>(u.finalCounts->failed))
            .bind(5, static_cast<std::int64_t>(u.finalCounts->cancelled));
      }
      if (auto s = st->run(); !s) return s;
    }
    if (u.nextBatch) {
      auto st = db_.prepare("UPDATE batches SET next_batch = ?2 WHERE id = ?1");
      if (!st) return st.error();
      st->bind(1, static_cast<std::int64_t>(u.batch)).bind(2, static_cast<std::int64_t>(*u.nextBatch));
      if (auto s = st->run(); !s) return s;
    }
    if (u.held) {
      auto st = db_.prepare("UPDATE batches SET held = ?2 WHERE id = ?1");
      if (!st) return st.error();
      st->bind(1, static_cast<std::int64_t>(u.batch)).bind(2, *u.held ? 1 : 0);
      if (auto s = st->run(); !s) return s;
    }
    if (u.note) {
      auto st = db_.prepare("UPDATE batches SET note = ?2 WHERE id = ?1");
      if (!st) return st.error();
      st->bind(1, static_cast<std::int64_t>(u.batch)).bindText(2, *u.note);
      if (auto s = st->run(); !s) return s;
    }
  }
  for (const auto& d : set.drains) {
    auto st = db_.prepare("UPDATE keys SET drained_ms = ?2 WHERE public_key = ?1");
    if (!st) return st.error();
    st->bindText(1, d.key);
    if (d.sinceMs) st->bind(2, *d.sinceMs);
    else st->bindNull(2);
    if (auto s = st->run(); !s) return s;
  }
  return {};
}

util::Status TaskStore::copyFailedTasks(const TaskChunk& c, std::uint64_t& firstSegment, std::uint64_t& lastSegment) {
  // proto::TaskStatus: ok = 0, cancelled = 5; everything else is a failure once final.
  auto from = db_.prepare(
      "SELECT t.id, t.idx, t.payload, t.payload_segment, t.payload_offset, t.payload_length "
      "FROM tasks t JOIN results r ON r.task = t.id WHERE t.batch = ? AND r.status NOT IN (0, 5) ORDER BY t.idx");
  if (!from) return from.error();
  auto to = db_.prepare(
      "INSERT INTO tasks(id, batch, idx, payload, payload_segment, payload_offset, payload_length, retry_of_task, "
      "retry_of_idx) VALUES(?,?,?,?,?,?,?,?,?)");
  if (!to) return to.error();
  from->bind(1, static_cast<std::int64_t>(c.retryOf));
  std::uint64_t n = 0;
  for (;;) {
    auto row = from->step();
    if (!row) return row.error();
    if (!*row) break;
    if (n == c.retryCount) {
      ++n;
      break;
    }
    to->bind(1, static_cast<std::int64_t>(c.firstId + n)).bind(2, static_cast<std::int64_t>(c.batch))
        .bind(3, static_cast<std::int64_t>(c.firstIndex + n)).bindBlobStatic(4, from->getBlob(2));
    if (from->isNull(3)) {
      to->bindNull(5).bindNull(6).bindNull(7);
    } else {
      // A payload still in the payload log (a failure recorded before payloads moved into their
      // rows): the copy refers to the same place, and the new batch's segment range keeps it.
      auto segment = static_cast<std::uint64_t>(from->getInt(3));
      firstSegment = std::min(firstSegment, segment);
      lastSegment = std::max(lastSegment, segment);
      to->bind(5, from->getInt(3)).bind(6, from->getInt(4)).bind(7, from->getInt(5));
    }
    to->bind(8, from->getInt(0)).bind(9, from->getInt(1));
    if (auto s = to->run(); !s) return s;
    to->reset();
    ++n;
  }
  if (n != c.retryCount) {
    return util::err("batch " + std::to_string(c.retryOf) + " changed while its failed tasks were copied (" +
                     std::to_string(c.retryCount) + " expected" + (n > c.retryCount ? ", more found" : ", " + std::to_string(n) + " found") +
                     "; were they removed after --keep-finished?)");
  }
  return {};
}

util::Result<std::vector<BatchRecord>> TaskStore::unfinishedBatches() {
  auto st = db_.prepare(std::string("SELECT ") + kBatchColumns +
                        " FROM batches WHERE finished_ms IS NULL ORDER BY id");
  if (!st) return st.error();
  std::vector<BatchRecord> out;
  if (auto s = forRows(*st, [&](Statement& s) { out.push_back(readBatch(s)); }); !s) return s.error();
  if (auto s = readAfter(out); !s) return s.error();
  return out;
}

util::Status TaskStore::readAfter(std::span<BatchRecord> records) {
  if (records.empty()) return {};
  auto st = db_.prepare("SELECT dep, need_ok FROM batch_after WHERE batch = ? ORDER BY dep");
  if (!st) return st.error();
  for (BatchRecord& b : records) {
    b.after.clear();
    b.afterDone.clear();
    st->bind(1, static_cast<std::int64_t>(b.id));
    auto s = forRows(*st, [&](Statement& row) {
      (row.getInt(1) != 0 ? b.after : b.afterDone).push_back(static_cast<std::uint64_t>(row.getInt(0)));
    });
    if (!s) return s;
    st->reset();
  }
  return {};
}

util::Result<std::uint64_t> TaskStore::maxTaskId() {
  // Expired batches' task rows are gone: their ids must not be handed out again.
  auto st = db_.prepare(
      "SELECT MAX((SELECT COALESCE(MAX(id), 0) FROM tasks), "
      "(SELECT COALESCE(MAX(last_task), 0) FROM batches WHERE expired_ms IS NOT NULL))");
  if (!st) return st.error();
  auto row = st->step();
  if (!row) return row.error();
  return static_cast<std::uint64_t>(st->getInt(0));
}

util::Result<std::uint64_t> TaskStore::maxBatchId() {
  auto st = db_.prepare("SELECT COALESCE(MAX(id), 0) FROM batches");
  if (!st) return st.error();
  auto row = st->step();
  if (!row) return row.error();
  return static_cast<std::uint64_t>(st->getInt(0));
}

// The outcomes of attempts that ended without charge to the task (routing::Scheduler::endAttempt:
// a spore that reconnected or stopped, or that handed the task back at a recall): stored with
// node_lost 0, and yet, like a charged node loss, not failures.
constexpr const char* kUnchargedOutcomes = "'node left', 'recalled'";

util::Status TaskStore::forEachPendingTask(const std::function<void(PendingTask&&)>& each) {
  auto st = db_.prepare(
      std::string("SELECT t.id, t.batch, t.idx, t.payload, "
                  "  (SELECT COUNT(*) FROM attempts a WHERE a.task = t.id), "
                  "  (SELECT COUNT(*) FROM attempts a WHERE a.task = t.id AND (a.node_lost = 1 OR a.outcome IN (") +
      kUnchargedOutcomes +
      "))), "
      "  t.payload_segment, t.payload_offset, t.payload_length, "
      "  (SELECT COUNT(*) FROM attempts a WHERE a.task = t.id AND a.node_lost = 0 AND a.outcome IN (" +
      kUnchargedOutcomes +
      ")) "
      "FROM tasks t JOIN batches b ON b.id = t.batch "
      "WHERE b.finished_ms IS NULL "
      "  AND NOT EXISTS (SELECT 1 FROM results r WHERE r.task = t.id) "
      "ORDER BY t.id");
  if (!st) return st.error();
  return forRows(*st, [&](Statement& s) {
    PendingTask p;
    p.id = static_cast<std::uint64_t>(s.getInt(0));
    p.batch = static_cast<std::uint64_t>(s.getInt(1));
    p.index = static_cast<std::uint64_t>(s.getInt(2));
    if (s.isNull(6)) {
      p.payload = std::string(s.getBlob(3));
    } else {
      PayloadRef ref{static_cast<std::uint64_t>(s.getInt(6)), static_cast<std::uint64_t>(s.getInt(7)),
                     static_cast<std::uint64_t>(s.getInt(8))};
      auto bytes = reader_ ? reader_->read(ref)
                           : util::Result<std::string>(util::err("no payload reader for the payload log"));
      if (bytes) {
        p.payload = std::move(*bytes);
      } else {
        p.payloadError = bytes.error().message;
      }
    }
    p.attemptsMade = static_cast<std::uint8_t>(std::min<std::int64_t>(255, s.getInt(4)));
    p.nodesLost = static_cast<std::uint8_t>(std::min<std::int64_t>(255, s.getInt(5)));
    p.reconnects = static_cast<std::uint8_t>(std::min<std::int64_t>(255, s.getInt(9)));
    each(std::move(p));
  });
}

util::Result<std::uint64_t> TaskStore::forEachTaskFrom(std::uint64_t batch, std::uint64_t firstId, std::uint64_t limit,
                                                       const std::function<bool(PendingTask&&)>& each) {
  auto st = db_.prepare(
      "SELECT id, idx, payload, payload_segment, payload_offset, payload_length FROM tasks "
      "WHERE batch = ? AND id >= ? ORDER BY id LIMIT ?");
  if (!st) return st.error();
  st->bind(1, static_cast<std::int64_t>(batch)).bind(2, static_cast<std::int64_t>(firstId))
      .bind(3, static_cast<std::int64_t>(std::min<std::uint64_t>(limit, INT64_MAX)));
  std::uint64_t n = 0;
  for (;;) {
    auto row = st->step();
    if (!row) return row.error();
    if (!*row) break;
    PendingTask p;
    p.id = static_cast<std::uint64_t>(st->getInt(0));
    p.batch = batch;
    p.index = static_cast<std::uint64_t>(st->getInt(1));
    if (st->isNull(3)) {
      p.payload = std::string(st->getBlob(2));
    } else {
      PayloadRef ref{static_cast<std::uint64_t>(st->getInt(3)), static_cast<std::uint64_t>(st->getInt(4)),
                     static_cast<std::uint64_t>(st->getInt(5))};
      auto bytes = reader_ ? reader_->read(ref)
                           : util::Result<std::string>(util::err("no payload reader for the payload log"));
      if (bytes) p.payload = std::move(*bytes);
      else p.payloadError = bytes.error().message;
    }
    ++n;
    if (!each(std::move(p))) break;
  }
  return n;
}

util::Result<std::vector<std::pair<std::uint64_t, std::uint64_t>>> TaskStore::payloadSegmentsInUse() {
  auto st = db_.prepare(
      "SELECT first_segment, last_segment FROM batches WHERE finished_ms IS NULL AND first_segment IS NOT NULL");
  if (!st) return st.error();
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  auto s = forRows(*st, [&](Statement& row) {
    out.emplace_back(static_cast<std::uint64_t>(row.getInt(0)), static_cast<std::uint64_t>(row.getInt(1)));
  });
  if (!s) return s.error();
  return out;
}

util::Result<BatchCounts> TaskStore::countResults(std::uint64_t batch) {
  // proto::TaskStatus: ok = 0, cancelled = 5; everything else is a failure once final.
  auto st = db_.prepare(
      "SELECT r.status, COUNT(*) FROM results r JOIN tasks t ON t.id = r.task WHERE t.batch = ? "
      "GROUP BY r.status");
  if (!st) return st.error();
  st->bind(1, static_cast<std::int64_t>(batch));
  BatchCounts c;
  auto s = forRows(*st, [&](Statement& s) {
    auto n = static_cast<std::uint64_t>(s.getInt(1));
    switch (s.getInt(0)) {
      case 0: c.succeeded += n; break;
      case 5: c.cancelled += n; break;
      default: c.failed += n;
    }
  });
  if (!s) return s.error();
  return c;
}

util::Result<std::optional<BatchProgress>> TaskStore::progress(std::uint64_t id) {
  ReadSnapshot snapshot(db_);
  if (!snapshot.begun()) return snapshot.begun().error();
  auto rec = batch(id);
  if (!rec) return rec.error();
  if (!*rec) return std::optional<BatchProgress>();
  BatchProgress p;
  p.record = std::move(**rec);
  if (p.record.finishedMs || p.record.expiredMs) {
    // Its final counts, written with its end (schema v8): no result row is read.
    p.counts = {p.record.keptSucceeded, p.record.keptFailed, p.record.keptCancelled};
  } else {
    auto counts = countResults(id);
    if (!counts) return counts.error();
    p.counts = *counts;
  }
  return std::optional<BatchProgress>(std::move(p));
}

util::Result<std::optional<BatchRecord>> TaskStore::batch(std::uint64_t id) {
  auto st = db_.prepare(std::string("SELECT ") + kBatchColumns + " FROM batches WHERE id = ?");
  if (!st) return st.error();
  st->bind(1, static_cast<std::int64_t>(id));
  auto row = st->step();
  if (!row) return row.error();
  if (!*row) return std::optional<BatchRecord>();
  BatchRecord rec = readBatch(*st);
  st->reset();
  if (auto s = readAfter(std::span<BatchRecord>(&rec, 1)); !s) return s.error();
  return std::optional<BatchRecord>(std::move(rec));
}

util::Result<std::vector<BatchRecord>> TaskStore::recentBatches(int limit) {
  auto st = db_.prepare(std::string("SELECT ") + kBatchColumns + " FROM batches ORDER BY id DESC LIMIT ?");
  if (!st) return st.error();
  st->bind(1, limit);
  std::vector<BatchRecord> out;
  if (auto s = forRows(*st, [&](Statement& s) { out.push_back(readBatch(s)); }); !s) return s.error();
  return out;
}

util::Result<BatchListing> TaskStore::listBatches(const BatchFilter& filter, std::uint64_t before, std::uint32_t limit,
                                                  std::uint64_t scanIds) {
  BatchListing out;
  ReadSnapshot snapshot(db_);  // the page and its nextBefore agree
  if (!snapshot.begun()) return snapshot.begun().error();
  const std::uint64_t kTop = static_cast<std::uint64_t>(INT64_MAX);
  if (before == 0 || before > kTop) {
    auto st = db_.prepare("SELECT COALESCE(MAX(id), 0) FROM batches");
    if (!st) return st.error();
    auto row = st->step();
    if (!row) return row.error();
    before = std::min(kTop, static_cast<std::uint64_t>(st->getInt(0)) + 1);
  }
  std::uint64_t floor = before > scanIds ? before - scanIds : 0;
  // The state as `mesh status` names it (mesh/node/client.h, batchState), from the row.
  const char* state = "1";
  switch (filter.state) {
    case BatchFilter::State::kAll: break;
    case BatchFilter::State::kWaiting: state = "finished_ms IS NULL AND cancelled_ms IS NULL AND held != 0"; break;
    case BatchFilter::State::kOpen:
      state = "finished_ms IS NULL AND cancelled_ms IS NULL AND sealed = 0 AND held = 0";
      break;
    case BatchFilter::State::kRunning:
      state = "finished_ms IS NULL AND cancelled_ms IS NULL AND sealed != 0 AND held = 0";
      break;
    case BatchFilter::State::kCancelling: state = "finished_ms IS NULL AND cancelled_ms IS NOT NULL"; break;
    case BatchFilter::State::kFinished:
      state = "finished_ms IS NOT NULL AND expired_ms IS NULL AND cancelled_ms IS NULL AND kept_cancelled = 0";
      break;
    case BatchFilter::State::kCancelled:
      state = "finished_ms IS NOT NULL AND expired_ms IS NULL AND (cancelled_ms IS NOT NULL OR kept_cancelled > 0)";
      break;
    case BatchFilter::State::kExpired: state = "expired_ms IS NOT NULL"; break;
  }
  auto st = db_.prepare(std::string("SELECT ") + kBatchColumns +
                        " FROM batches WHERE id < ?1 AND id >= ?2 AND (?3 IS NULL OR label = ?3) AND "
                        "(?4 IS NULL OR client_key = ?4) AND (?6 = 0 OR (finished_ms IS NOT NULL AND kept_failed > 0)) AND (" +
                        state + ") ORDER BY id DESC LIMIT ?5");
  if (!st) return st.error();
  st->bind(1, static_cast<std::int64_t>(before)).bind(2, static_cast<std::int64_t>(floor));
  if (filter.label) st->bindText(3, *filter.label);
  else st->bindNull(3);
  if (filter.clientKey) st->bindText(4, *filter.clientKey);
  else st->bindNull(4);
  st->bind(5, static_cast<std::int64_t>(limit)).bind(6, static_cast<std::int64_t>(filter.failedOnly ? 1 : 0));
  if (auto s = forRows(*st, [&](Statement& s) { out.batches.push_back(readBatch(s)); }); !s) return s.error();
  if (auto s = readAfter(out.batches); !s) return s.error();
  // A full page goes on below its last batch; a short one below the range it looked at.
  std::uint64_t next = out.batches.size() >= limit && limit > 0 ? out.batches.back().id : floor;
  auto lower = db_.prepare("SELECT MAX(id) FROM batches WHERE id < ?");
  if (!lower) return lower.error();
  lower->bind(1, static_cast<std::int64_t>(next));
  auto row = lower->step();
  if (!row) return row.error();
  // Past the gap in ids, if any, so that the next call's range holds batches.
  out.nextBefore = lower->isNull(0) ? 0 : std::min(next, static_cast<std::uint64_t>(lower->getInt(0)) + 1);
  return out;
}

util::Result<std::vector<ResultRow>> TaskStore::resultsPage(std::uint64_t batch, std::uint64_t fromIndex, int limit) {
  auto st = db_.prepare(std::string("SELECT t.id, t.idx, ") + kResultColumns +
                        ", t.retry_of_task, t.retry_of_idx, (SELECT retry_of FROM batches WHERE id = t.batch)"
                        " FROM tasks t JOIN results r ON r.task = t.id "
                        "WHERE t.batch = ? AND t.idx >= ? ORDER BY t.idx LIMIT ?");
  if (!st) return st.error();
  st->bind(1, static_cast<std::int64_t>(batch)).bind(2, static_cast<std::int64_t>(fromIndex)).bind(3, limit);
  std::vector<ResultRow> out;
  auto s = forRows(*st, [&](Statement& s) {
    ResultRow r;
    r.task = static_cast<std::uint64_t>(s.getInt(0));
    r.index = static_cast<std::uint64_t>(s.getInt(1));
    r.result = readResult(s, r.task, 2);
    constexpr int c = 2 + kResultColumnCount;  // t.retry_of_task, t.retry_of_idx, the batch's retry_of
    if (!s.isNull(c)) {
      r.retryOf = RetryOrigin{static_cast<std::uint64_t>(s.getInt(c + 2)), static_cast<std::uint64_t>(s.getInt(c)),
                              static_cast<std::uint64_t>(s.getInt(c + 1))};
    }
    out.push_back(std::move(r));
  });
  if (!s) return s.error();
  return out;
}

util::Result<std::vector<std::string>> TaskStore::outputs(std::uint64_t batch) {
  auto st = db_.prepare(
      "SELECT r.output FROM tasks t JOIN results r ON r.task = t.id WHERE t.batch = ? AND r.status = 0 "
      "ORDER BY t.idx");
  if (!st) return st.error();
  st->bind(1, static_cast<std::int64_t>(batch));
  std::vector<std::string> out;
  if (auto s = forRows(*st, [&](Statement& s) { out.emplace_back(s.getBlob(0)); }); !s) return s.error();
  return out;
}

util::Result<TaskStore::OutputsSize> TaskStore::outputsSize(std::uint64_t batch) {
  // length() of a blob is read from the record header; the output's pages are not loaded.
  auto st = db_.prepare(
      "SELECT COUNT(*), COALESCE(SUM(length(r.output)), 0) FROM tasks t JOIN results r ON r.task = t.id "
      "WHERE t.batch = ? AND r.status = 0");
  if (!st) return st.error();
  st->bind(1, static_cast<std::int64_t>(batch));
  OutputsSize out;
  if (auto s = forRows(*st, [&](Statement& s) {
        out.count = static_cast<std::uint64_t>(s.getInt(0));
        out.bytes = static_cast<std::uint64_t>(s.getInt(1));
      });
      !s) {
    return s.error();
  }
  return out;
}

util::Result<std::vector<BatchRecord>> TaskStore::mapStagesWithoutReduce() {
  auto st = db_.prepare(std::string("SELECT ") + kBatchColumns +
                        " FROM batches WHERE mr_stage = 1 AND finished_ms IS NOT NULL AND next_batch IS NULL "
                        "AND note = '' AND cancelled_ms IS NULL ORDER BY id");
  if (!st) return st.error();
  std::vector<BatchRecord> out;
  if (auto s = forRows(*st, [&](Statement& s) { out.push_back(readBatch(s)); }); !s) return s.error();
  return out;
}

util::Result<std::optional<std::uint64_t>> TaskStore::taskAt(std::uint64_t batch, std::uint64_t index) {
  auto st = db_.prepare("SELECT id FROM tasks WHERE batch = ? AND idx = ?");
  if (!st) return st.error();
  st->bind(1, static_cast<std::int64_t>(batch));
  st->bind(2, static_cast<std::int64_t>(index));
  auto row = st->step();
  if (!row) return row.error();
  if (!*row) return std::optional<std::uint64_t>();
  return std::optional<std::uint64_t>(static_cast<std::uint64_t>(st->getInt(0)));
}

util::Result<std::optional<TaskRow>> TaskStore::task(std::uint64_t id) {
  auto st = db_.prepare(std::string("SELECT t.id, t.batch, t.idx, ") + kResultColumns + ", r.task IS NULL, " +
                        "b.id, b.label, b.handler, b.priority, b.requires, b.timeout_ms, b.max_attempts, "
                        "b.client_key, b.submitted_ms, b.sealed, b.total, b.cancelled_ms, b.finished_ms, "
                        "b.mr_stage, b.mr_partitions, b.mr_combiner, b.mr_reducer, b.next_batch, b.note, "
                        "b.expired_ms, b.first_task, b.last_task, b.kept_succeeded, b.kept_failed, b.kept_cancelled, "
                        "b.retry_of, b.held, t.retry_of_task, t.retry_of_idx"
                        " FROM tasks t JOIN batches b ON b.id = t.batch LEFT JOIN results r ON r.task = t.id "
                        "WHERE t.id = ?");
  if (!st) return st.error();
  st->bind(1, static_cast<std::int64_t>(id));
  auto row = st->step();
  if (!row) return row.error();
  if (!*row) return std::optional<TaskRow>();
  TaskRow t;
  t.id = static_cast<std::uint64_t>(st->getInt(0));
  t.batch = static_cast<std::uint64_t>(st->getInt(1));
  t.index = static_cast<std::uint64_t>(st->getInt(2));
  constexpr int noResult = 3 + kResultColumnCount, batchAt = noResult + 1, retryAt = batchAt + 27;
  if (st->getInt(noResult) == 0) t.result = readResult(*st, t.id, 3);
  t.batchRecord = readBatch(*st, batchAt);
  if (!st->isNull(retryAt)) {
    t.retryOf = RetryOrigin{t.batchRecord.retryOf.value_or(0), static_cast<std::uint64_t>(st->getInt(retryAt)),
                            static_cast<std::uint64_t>(st->getInt(retryAt + 1))};
  }
  st->reset();
  if (auto r = readAfter(std::span<BatchRecord>(&t.batchRecord, 1)); !r) return r.error();
  auto at = db_.prepare(
      "SELECT attempt, node, assigned_ms, ended_ms, outcome, error, node_lost, COALESCE(started_ms, 0), "
      "COALESCE(bundle, ''), COALESCE(bundle_version, 0) FROM attempts "
      "WHERE task = ? ORDER BY attempt");
  if (!at) return at.error();
  at->bind(1, static_cast<std::int64_t>(id));
  auto s = forRows(*at, [&](Statement& s) {
    AttemptRecord a;
    a.task = t.id;
    a.attempt = static_cast<std::uint8_t>(s.getInt(0));
    a.node = s.getText(1);
    a.assignedMs = s.getInt(2);
    a.endedMs = s.getInt(3);
    a.outcome = s.getText(4);
    a.error = s.getText(5);
    a.nodeLost = s.getInt(6) != 0;
    a.startedMs = s.getInt(7);
    a.bundle = s.getText(8);
    a.bundleVersion = static_cast<std::uint64_t>(s.getInt(9));
    t.attempts.push_back(std::move(a));
  });
  if (!s) return s.error();
  return std::optional<TaskRow>(std::move(t));
}

util::Result<std::optional<BatchRecord>> TaskStore::expiredBatchOfTask(std::uint64_t taskId) {
  auto st = db_.prepare(std::string("SELECT ") + kBatchColumns +
                        " FROM batches WHERE expired_ms IS NOT NULL AND last_task >= ?1 AND first_task <= ?1 "
                        "ORDER BY last_task LIMIT 1");
  if (!st) return st.error();
  st->bind(1, static_cast<std::int64_t>(taskId));
  auto row = st->step();
  if (!row) return row.error();
  if (!*row) return std::optional<BatchRecord>();
  return std::optional<BatchRecord>(readBatch(*st));
}

util::Result<ExpiryStep> TaskStore::expireStep(std::int64_t cutoffMs, std::int64_t nowMs, std::uint32_t maxTasks) {
  ExpiryStep step;
  Transaction tx(db_);
  if (!tx.begun()) return tx.begun().error();
  {
    auto st = db_.prepare("SELECT id FROM batches WHERE purging = 1 ORDER BY id LIMIT 1");
    if (!st) return st.error();
    auto row = st->step();
    if (!row) return row.error();
    if (*row) step.batch = static_cast<std::uint64_t>(st->getInt(0));
  }
  if (step.batch == 0) {
    // Ordered by finished_ms, a job's map batch comes before its reduce batch, and marks it.
    auto st = db_.prepare(
        "SELECT b.id, b.next_batch FROM batches b "
        "WHERE b.finished_ms IS NOT NULL AND b.expired_ms IS NULL AND b.finished_ms <= ?1 AND ("
        "  b.mr_stage != 1"
        "  OR (b.next_batch IS NULL AND (b.cancelled_ms IS NOT NULL OR b.note != ''))"
        "  OR (b.next_batch IS NOT NULL AND EXISTS (SELECT 1 FROM batches r WHERE r.id = b.next_batch"
        "      AND r.finished_ms IS NOT NULL AND r.finished_ms <= ?1))) "
        "ORDER BY b.finished_ms LIMIT 1");
    if (!st) return st.error();
    st->bind(1, cutoffMs);
    auto row = st->step();
    if (!row) return row.error();
    if (!*row) return step;  // nothing due
    step.batch = static_cast<std::uint64_t>(st->getInt(0));
    std::optional<std::uint64_t> reduce;
    if (!st->isNull(1)) reduce = static_cast<std::uint64_t>(st->getInt(1));
    st->reset();
    // Task ids grow with the index within a batch: the first and last index give the range.
    // The kept counts are the final ones from here on, written before any row goes (schema v6):
    // a read of the batch never adds up rows that are being deleted.
    // One pass over the batch's results (about 0.2 s of CPU per million tasks here).
    // proto::TaskStatus: ok = 0, cancelled = 5; everything else is a failure once final.
    auto mark = db_.prepare(
        "UPDATE batches SET expired_ms = ?2, purging = 1, "
        "first_task = (SELECT id FROM tasks WHERE batch = ?1 ORDER BY idx LIMIT 1), "
        "last_task = (SELECT id FROM tasks WHERE batch = ?1 ORDER BY idx DESC LIMIT 1), "
        "(kept_succeeded, kept_cancelled, kept_failed) = (SELECT COALESCE(SUM(r.status = 0), 0), "
        "COALESCE(SUM(r.status = 5), 0), COALESCE(SUM(r.status NOT IN (0, 5)), 0) "
        "FROM tasks t JOIN results r ON r.task = t.id WHERE t.batch = ?1) "
        "WHERE id = ?1 AND expired_ms IS NULL");
    if (!mark) return mark.error();
    for (std::optional<std::uint64_t> id : {std::optional<std::uint64_t>(step.batch), reduce}) {
      if (!id) continue;
      mark->bind(1, static_cast<std::int64_t>(*id)).bind(2, nowMs);
      if (auto s = mark->run(); !s) return s.error();
      step.marked += static_cast<std::uint32_t>(db_.changes());
      mark->reset();
    }
  }
  const std::string some =
      "(SELECT id FROM tasks WHERE batch = ?1 ORDER BY idx LIMIT ?2)";
  for (const char* table : {"results WHERE task", "attempts WHERE task", "tasks WHERE id"}) {
    auto st = db_.prepare(std::string("DELETE FROM ") + table + " IN " + some);
    if (!st) return st.error();
    st->bind(1, static_cast<std::int64_t>(step.batch)).bind(2, static_cast<std::int64_t>(maxTasks));
    if (auto s = st->run(); !s) return s.error();
    step.rows += static_cast<std::uint64_t>(db_.changes());
  }
  step.tasks = static_cast<std::uint64_t>(db_.changes());
  if (step.tasks < maxTasks) {
    auto st = db_.prepare("UPDATE batches SET purging = 0 WHERE id = ?1");
    if (!st) return st.error();
    st->bind(1, static_cast<std::int64_t>(step.batch));
    if (auto s = st->run(); !s) return s.error();
    step.done = true;
  }
  if (auto s = tx.commit(); !s) return s.error();
  return step;
}

}  // namespace mesh::store
