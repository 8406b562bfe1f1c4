#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <algorithm>
#include <array>
#include <functional>
#include <map>
#include <optional>

#include "mesh/store/db.h"
#include "mesh/store/schema.h"
#include "mesh/store/key_store.h"
#include "mesh/store/task_store.h"
#include "mesh/store/writer.h"
#include "mesh/util/clock.h"

using namespace mesh;
using namespace mesh::store;

namespace {
struct TempDb {
  std::string dir;
  std::string path;
  TempDb() {
    char d[] = "/tmp/mesh-store-XXXXXX";
    REQUIRE(mkdtemp(d) != nullptr);
    dir = d;
    path = dir + "/nexus.db";
  }
  ~TempDb() { std::system(("rm -rf " + dir).c_str()); }
};

// A task store with its payload log, in a temporary directory.
struct LoggedStore {
  TempDb t;
  util::Result<Db> db = Db::open(t.path);
  util::Result<std::unique_ptr<PayloadLog>> log = PayloadLog::open(PayloadLog::dirFor(t.path));
  PayloadReader reader{PayloadLog::dirFor(t.path)};
  std::optional<TaskStore> tasks;
  LoggedStore() {
    REQUIRE(db.ok());
    REQUIRE(log.ok());
    tasks.emplace(*db, log->get(), &reader);
  }
};

WriteSet batchWithTasks(std::uint64_t batch, std::uint64_t firstId, const std::vector<std::string>& payloads,
                        std::shared_ptr<std::vector<std::string>>* keep) {
  WriteSet set;
  BatchRecord b;
  b.id = batch;
  b.handler = "echo";
  b.priority = 5;
  b.requiredTags = {"gpu", "ssd"};
  b.timeoutMs = 1000;
  b.maxAttempts = 3;
  b.clientKey = "k";
  b.submittedMs = 1;
  b.sealed = true;
  b.total = payloads.size();
  set.newBatches.push_back(b);
  *keep = std::make_shared<std::vector<std::string>>(payloads);
  TaskChunk c;
  c.batch = batch;
  c.firstId = firstId;
  c.firstIndex = 0;
  for (auto& p : **keep) c.payloads.push_back(p);
  c.keepAlive = *keep;
  set.chunks.push_back(std::move(c));
  return set;
}
}  // namespace

// The stored row of task `id`, which must be there.
TaskRow storedTask(TaskStore& tasks, std::uint64_t id) {
  auto row = tasks.task(id);
  REQUIRE(row.ok());
  REQUIRE(row->has_value());
  return std::move(**row);
}

TEST_CASE("a new database is migrated and a newer one is refused") {
  TempDb t;
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    REQUIRE(db->exec("PRAGMA user_version = 99").ok());
  }
  auto again = Db::open(t.path);
  REQUIRE_FALSE(again.ok());
  CHECK(again.error().message.find("newer release") != std::string::npos);
}

TEST_CASE("keys move from pending to accepted to revoked") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  KeyStore keys(*db);
  auto k = crypto::KeyPair::generate();
  REQUIRE(keys.recordRefusal(k.publicKey, Role::kNode, "127.0.0.1", 10).ok());
  REQUIRE(keys.recordRefusal(k.publicKey, Role::kNode, "127.0.0.1", 11).ok());
  auto pending = keys.list(KeyState::kPending);
  REQUIRE(pending.ok());
  REQUIRE(pending->size() == 1);
  CHECK((*pending)[0].refusals == 2);
  CHECK((*pending)[0].role == Role::kNode);
  auto resolved = keys.resolve(k.publicKey.fingerprint().substr(0, 9));
  REQUIRE(resolved.ok());
  CHECK(resolved->publicKey == k.publicKey.z85());
  REQUIRE(keys.accept(k.publicKey, Role::kNode, "worker-1", 12).ok());
  auto found = keys.find(k.publicKey);
  REQUIRE(found.ok());
  REQUIRE(found->has_value());
  CHECK((*found)->state == KeyState::kAccepted);
  CHECK((*found)->comment == "worker-1");
  // A refusal after acceptance does not demote the key.
  REQUIRE(keys.recordRefusal(k.publicKey, Role::kClient, "127.0.0.1", 13).ok());
  CHECK((*keys.find(k.publicKey))->state == KeyState::kAccepted);
  REQUIRE(keys.revoke(k.publicKey, 14).ok());
  CHECK((*keys.find(k.publicKey))->state == KeyState::kRevoked);
  CHECK_FALSE(keys.revoke(crypto::KeyPair::generate().publicKey, 15).ok());
}

TEST_CASE("a node key stays drained until undrained, across a reopen, and accepting it again keeps that") {
  TempDb t;
  auto k = crypto::KeyPair::generate();
  auto other = crypto::KeyPair::generate();
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    KeyStore keys(*db);
    REQUIRE(keys.accept(k.publicKey, Role::kNode, "", 10).ok());
    REQUIRE(keys.accept(other.publicKey, Role::kNode, "", 10).ok());
    CHECK(keys.drained()->empty());
    REQUIRE(keys.setDrained(k.publicKey.z85(), 42).ok());
    CHECK_FALSE(keys.setDrained(crypto::KeyPair::generate().publicKey.z85(), 43).ok());  // no such key
  }
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  KeyStore keys(*db);
  CHECK(*keys.drained() == std::map<std::string, std::int64_t>{{k.publicKey.z85(), 42}});
  REQUIRE(keys.accept(k.publicKey, Role::kNode, "again", 11).ok());
  CHECK(keys.drained()->size() == 1);
  REQUIRE(keys.setDrained(k.publicKey.z85(), std::nullopt).ok());
  CHECK(keys.drained()->empty());
}

void dropVersion9(Db& db);  // below, with the other steps back

TEST_CASE("a version 8 database learns which node keys are drained (none)") {
  TempDb t;
  auto k = crypto::KeyPair::generate();
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    KeyStore keys(*db);
    REQUIRE(keys.accept(k.publicKey, Role::kNode, "", 10).ok());
    dropVersion9(*db);
    REQUIRE(db->exec("PRAGMA user_version = 8").ok());
  }
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  KeyStore keys(*db);
  CHECK(keys.drained()->empty());
  REQUIRE(keys.setDrained(k.publicKey.z85(), 5).ok());
  CHECK(keys.drained()->size() == 1);
  CHECK((*keys.find(k.publicKey))->state == KeyState::kAccepted);
}

TEST_CASE("at most KeyStore::kMaxPending keys stay pending; accepted ones are never trimmed") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  KeyStore keys(*db);
  auto accepted = crypto::KeyPair::generate();
  REQUIRE(keys.accept(accepted.publicKey, Role::kNode, "", 1).ok());
  auto oldest = crypto::KeyPair::generate();
  REQUIRE(keys.recordRefusal(oldest.publicKey, Role::kClient, "127.0.0.1", 2).ok());
  REQUIRE(db->exec("BEGIN").ok());
  for (int i = 0; i < KeyStore::kMaxPending + 4; ++i) {
    REQUIRE(keys.recordRefusal(crypto::KeyPair::generate().publicKey, Role::kClient, "127.0.0.1", 10 + i).ok());
  }
  REQUIRE(db->exec("COMMIT").ok());
  auto pending = keys.list(KeyState::kPending);
  REQUIRE(pending.ok());
  CHECK(pending->size() == static_cast<std::size_t>(KeyStore::kMaxPending));
  CHECK_FALSE(keys.find(oldest.publicKey)->has_value());  // refused longest ago: replaced
  CHECK((*keys.find(accepted.publicKey))->state == KeyState::kAccepted);
}

TEST_CASE("resolving an ambiguous or unknown fingerprint is an error") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  KeyStore keys(*db);
  CHECK_FALSE(keys.resolve("abcd").ok());
  CHECK_FALSE(keys.resolve("ab").ok());
  for (int i = 0; i < 40; ++i) REQUIRE(keys.accept(crypto::KeyPair::generate().publicKey, Role::kClient, "", i).ok());
  // With 40 keys, some 1-hex-digit prefix is shared; a 4-digit minimum is enforced anyway.
  CHECK_FALSE(keys.resolve("a").ok());
}

TEST_CASE("tasks without results are pending after a restart, and the first result wins") {
  TempDb t;
  std::shared_ptr<std::vector<std::string>> keep;
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    TaskStore tasks(*db);
    REQUIRE(tasks.apply(batchWithTasks(1, 100, {"a", "b", "c"}, &keep)).ok());
    WriteSet results;
    ResultRecord r;
    r.task = 101;
    r.status = 0;
    r.output = "first";
    r.attempts = 1;
    r.node = "n1";
    results.results.push_back(r);
    r.output = "second";
    results.results.push_back(r);
    AttemptRecord a;
    a.task = 102;
    a.attempt = 1;
    a.node = "n2";
    a.outcome = "node lost";
    a.nodeLost = true;
    results.attempts.push_back(a);
    // Attempts that ended without charge: not failures after a restart either.
    a.nodeLost = false;
    for (const char* outcome : {"node left", "recalled", "failed"}) {
      ++a.attempt;
      a.outcome = outcome;
      results.attempts.push_back(a);
    }
    REQUIRE(tasks.apply(results).ok());
  }
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  CHECK(*tasks.maxTaskId() == 102);
  CHECK(*tasks.maxBatchId() == 1);
  std::vector<PendingTask> pending;
  REQUIRE(tasks.forEachPendingTask([&](PendingTask&& p) { pending.push_back(std::move(p)); }).ok());
  REQUIRE(pending.size() == 2);
  CHECK(pending[0].id == 100);
  CHECK(pending[0].payload == "a");
  CHECK(pending[1].id == 102);
  CHECK(pending[1].attemptsMade == 4);
  CHECK(pending[1].nodesLost == 3);   // the charged loss and the two uncharged ends
  CHECK(pending[1].reconnects == 2);  // not toward quarantine
  auto page = tasks.resultsPage(1, 0, 10);
  REQUIRE(page.ok());
  REQUIRE(page->size() == 1);
  CHECK((*page)[0].result.output == "first");
  CHECK((*page)[0].index == 1);
  TaskRow info = storedTask(tasks, 102);
  CHECK_FALSE(info.result.has_value());
  CHECK(info.batchRecord.requiredTags.size() == 2);
  CHECK(info.attempts.size() == 4);
  auto counts = tasks.countResults(1);
  REQUIRE(counts.ok());
  CHECK(counts->succeeded == 1);
  CHECK_FALSE(tasks.task(999)->has_value());
}

TEST_CASE("prepared statements are reused, and one outliving its database is harmless") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  {
    auto st = db->prepare("SELECT ?1 + 1");
    REQUIRE(st.ok());
    st->bind(1, 41);
    REQUIRE(*st->step());
    CHECK(st->getInt(0) == 42);
  }
  for (int i = 0; i < 3; ++i) {
    auto st = db->prepare("SELECT ?1 + 1");
    REQUIRE(st.ok());
    // A reused statement comes back reset, with its bindings cleared.
    REQUIRE(*st->step());
    CHECK(st->isNull(0));
    st->reset();
    st->bind(1, i);
    REQUIRE(*st->step());
    CHECK(st->getInt(0) == i + 1);
  }
  // Two at once of the same SQL are distinct statements.
  auto a = db->prepare("SELECT 1");
  auto b = db->prepare("SELECT 1");
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  REQUIRE(*a->step());
  REQUIRE(*b->step());
  // A statement that outlives its Db (and a moved Db) is finalized, not leaked or reused.
  auto survivor = db->prepare("SELECT 2");
  REQUIRE(survivor.ok());
  Db moved = std::move(*db);
  { Db gone = std::move(moved); }
  CHECK(*survivor->step());
}

TEST_CASE("a failed write set leaves nothing behind") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  std::shared_ptr<std::vector<std::string>> keep;
  REQUIRE(tasks.apply(batchWithTasks(1, 1, {"x"}, &keep)).ok());
  // The same batch id again violates the primary key: the whole set must roll back.
  WriteSet dup = batchWithTasks(1, 50, {"y"}, &keep);
  CHECK_FALSE(tasks.apply(dup).ok());
  CHECK(*tasks.maxTaskId() == 1);
}

// A batch dispatched before its commit can have its results in a later write set than its
// tasks. When the tasks' set fails (a full disk) and a smaller later one succeeds, the results
// must not be stored without their tasks.
TEST_CASE("results and attempts of tasks that were never stored are not written") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  std::shared_ptr<std::vector<std::string>> keep;
  REQUIRE(tasks.apply(batchWithTasks(1, 10, {"a"}, &keep)).ok());
  WriteSet set;
  ResultRecord r;
  r.status = 0;
  r.attempts = 1;
  r.node = "n1";
  r.task = 10;
  set.results.push_back(r);
  r.task = 11;  // no such task
  set.results.push_back(r);
  AttemptRecord a;
  a.attempt = 1;
  a.node = "n1";
  a.outcome = "failed";
  a.task = 10;
  set.attempts.push_back(a);
  a.task = 11;
  set.attempts.push_back(a);
  REQUIRE(tasks.apply(set).ok());
  auto count = [&](const char* sql) {
    auto st = db->prepare(sql);
    REQUIRE(st.ok());
    REQUIRE(*st->step());
    return st->getInt(0);
  };
  CHECK(count("SELECT count(*) FROM results") == 1);
  CHECK(count("SELECT count(*) FROM results WHERE task = 10") == 1);
  CHECK(count("SELECT count(*) FROM attempts") == 1);
  CHECK(count("SELECT count(*) FROM attempts WHERE task = 10") == 1);
}

namespace {
// Collects the writer's notices until `done` holds (at most 10 s).
struct Notices {
  std::vector<std::uint64_t> committed;
  std::map<std::uint64_t, std::string> failed;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> refusedChunks;
  bool collect(StoreWriter& writer, const std::function<bool()>& done) {
    std::int64_t deadline = util::systemClock().monotonicMs() + 10000;
    while (!done() && util::systemClock().monotonicMs() < deadline) {
      zmq::pollitem_t item{writer.socket().handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(50));
      while (auto n = writer.receive()) {
        for (auto c : n->committed) committed.push_back(c);
        for (auto& f : n->failed) failed[f.first] = f.second;
        for (auto& r : n->refusedChunks) refusedChunks.push_back(r);
      }
    }
    return done();
  }
  bool isCommitted(std::uint64_t t) const { return std::count(committed.begin(), committed.end(), t) == 1; }
};

std::unique_ptr<WriteSet> resultOf(std::uint64_t task) {
  auto set = std::make_unique<WriteSet>();
  ResultRecord r;
  r.task = task;
  r.attempts = 1;
  r.node = "n1";
  set->results.push_back(r);
  return set;
}

// A writer on a fresh database whose failed sets are tried again after `retryMs`.
std::unique_ptr<StoreWriter> startWriter(zmq::context_t& ctx, const TempDb& t, std::int64_t retryMs) {
  { auto db = Db::open(t.path); REQUIRE(db.ok()); }
  WriterOptions options;
  options.retryMs = retryMs;
  auto writer = StoreWriter::start(ctx, t.path, options);
  REQUIRE(writer.ok());
  return std::move(*writer);
}

// A batch row's kept (final) counts: succeeded, failed, cancelled.
std::array<std::uint64_t, 3> kept(TaskStore& tasks, std::uint64_t id) {
  auto b = tasks.batch(id);
  REQUIRE(b.ok());
  REQUIRE(b->has_value());
  return {(*b)->keptSucceeded, (*b)->keptFailed, (*b)->keptCancelled};
}

std::int64_t countRows(const std::string& path, const char* sql) {
  auto db = Db::open(path);
  REQUIRE(db.ok());
  auto st = db->prepare(sql);
  REQUIRE(st.ok());
  REQUIRE(*st->step());
  return st->getInt(0);
}
}  // namespace

TEST_CASE("the writer thread commits queued sets and reports their tickets") {
  TempDb t;
  auto ctx = zmq::context_t();
  auto writer = startWriter(ctx, t, 100);
  std::shared_ptr<std::vector<std::string>> keep1, keep2;
  auto t1 = writer->submit(std::make_unique<WriteSet>(batchWithTasks(1, 1, {"a", "b"}, &keep1)));
  auto t2 = writer->submit(std::make_unique<WriteSet>(batchWithTasks(1, 10, {"dup"}, &keep2)));  // fails
  Notices n;
  REQUIRE(n.collect(*writer, [&] { return n.committed.size() + n.failed.size() >= 2; }));
  CHECK(n.isCommitted(t1));
  REQUIRE(n.failed.count(t2) == 1);
  CHECK(n.failed[t2].find("UNIQUE") != std::string::npos);
  // What is left of the failed set (nothing: its batch and task are refused) is written later,
  // and its ticket is answered then.
  REQUIRE(n.collect(*writer, [&] { return n.isCommitted(t2); }));
  CHECK(writer->queued() == 0);
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks") == 2);
}

// A set that fails leaves its results with the writer, which writes them before anything
// handed over later: no set is durable before one handed over ahead of it (a batch's
// `finished` must not be stored while some of its results wait).
TEST_CASE("a failed set's results are written later, and nothing handed over after it first") {
  TempDb t;
  auto ctx = zmq::context_t();
  auto writer = startWriter(ctx, t, 400);
  std::shared_ptr<std::vector<std::string>> keep1, keep2, keep3;
  auto t1 = writer->submit(std::make_unique<WriteSet>(batchWithTasks(1, 1, {"a", "b", "c"}, &keep1)));
  Notices n;
  REQUIRE(n.collect(*writer, [&] { return n.isCommitted(t1); }));
  // A set with a refused batch (its id is taken) and a result of task 1: the batch is refused,
  // the result kept.
  auto bad = std::make_unique<WriteSet>(batchWithTasks(1, 10, {"dup"}, &keep2));
  bad->results = resultOf(1)->results;
  BatchUpdate total;
  total.batch = 1;
  total.total = 99;  // the refused chunk's total: never written
  bad->updates.push_back(total);
  auto t2 = writer->submit(std::move(bad));
  REQUIRE(n.collect(*writer, [&] { return n.failed.count(t2) == 1; }));
  // Results handed over now wait behind it, untried.
  auto t3 = writer->submit(resultOf(2));
  usleep(100'000);
  CHECK(countRows(t.path, "SELECT count(*) FROM results") == 0);
  // A submit does not wait for the next try: it goes with the held sets at once.
  auto t4 = writer->submit(std::make_unique<WriteSet>(batchWithTasks(2, 20, {"d"}, &keep3)));
  auto t5 = writer->submit(resultOf(3));
  REQUIRE(n.collect(*writer, [&] { return n.isCommitted(t5); }));
  std::vector<std::uint64_t> order;
  for (auto c : n.committed) {
    if (c != t1) order.push_back(c);
  }
  CHECK(order == std::vector<std::uint64_t>{t2, t3, t4, t5});
  CHECK(n.failed.size() == 1);
  CHECK(countRows(t.path, "SELECT count(*) FROM results") == 3);
  CHECK(countRows(t.path, "SELECT total FROM batches WHERE id = 1") == 3);
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks") == 4);
  CHECK(writer->queued() == 0);
}

namespace {
// A chunk of a batch that exists already: tasks firstId.. at indexes firstIndex.., with the
// update an append carries (the batch's new total, sealed or not).
std::unique_ptr<WriteSet> appendChunk(std::uint64_t batch, std::uint64_t firstId, std::uint64_t firstIndex,
                                      const std::vector<std::string>& payloads, bool seal,
                                      std::shared_ptr<std::vector<std::string>>* keep) {
  auto set = std::make_unique<WriteSet>();
  *keep = std::make_shared<std::vector<std::string>>(payloads);
  TaskChunk c;
  c.batch = batch;
  c.firstId = firstId;
  c.firstIndex = firstIndex;
  for (auto& p : **keep) c.payloads.push_back(p);
  c.keepAlive = *keep;
  set->chunks.push_back(std::move(c));
  BatchUpdate u;
  u.batch = batch;
  u.total = firstIndex + payloads.size();
  u.sealed = seal;
  set->updates.push_back(u);
  return set;
}
}  // namespace

// A client's chunks are pipelined: when chunk k of a stored batch is refused, k+1 may already be
// with the writer, and the next try may succeed (a disk that filled and was freed). Storing k+1
// would leave a gap at k's indexes that no task can ever fill.
TEST_CASE("after a refused chunk of a stored batch, the writer stores no later chunk of it and no total past it") {
  TempDb t;
  auto ctx = zmq::context_t();
  auto writer = startWriter(ctx, t, 100);
  std::shared_ptr<std::vector<std::string>> keep1, keep2, keep3, keep4;
  WriteSet first = batchWithTasks(1, 1, {"a", "b"}, &keep1);
  first.newBatches[0].sealed = false;  // an open batch: more chunks follow
  auto t1 = writer->submit(std::make_unique<WriteSet>(std::move(first)));
  Notices n;
  REQUIRE(n.collect(*writer, [&] { return n.isCommitted(t1); }));
  // Chunk 2 fails (its first task id is taken: as a full disk would, the set fails), chunk 3
  // (sealing) is behind it, with a new batch that has nothing to do with it.
  auto t2 = writer->submit(appendChunk(1, 2, 2, {"c", "d"}, false, &keep2));
  REQUIRE(n.collect(*writer, [&] { return n.failed.count(t2) == 1; }));
  auto third = appendChunk(1, 20, 4, {"e", "f"}, true, &keep3);
  WriteSet other = batchWithTasks(2, 30, {"g"}, &keep4);
  third->newBatches = other.newBatches;
  third->chunks.push_back(std::move(other.chunks[0]));
  auto t3 = writer->submit(std::move(third));
  REQUIRE(n.collect(*writer, [&] { return n.isCommitted(t2) && n.isCommitted(t3); }));
  CHECK(n.failed.count(t3) == 0);
  // Chunk 3 was not stored, and the notice says so; the rest of its set was.
  CHECK(n.refusedChunks == std::vector<std::pair<std::uint64_t, std::uint64_t>>{{t3, 1}});
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks WHERE batch = 1") == 2);
  CHECK(countRows(t.path, "SELECT max(idx) FROM tasks WHERE batch = 1") == 1);
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks WHERE batch = 2") == 1);
  // Its totals stop at the first index refused: the batch can end at the tasks it has.
  CHECK(countRows(t.path, "SELECT total FROM batches WHERE id = 1") == 2);
  // The nexus seals it there (its own update); a total past the gap is still clamped.
  auto seal = std::make_unique<WriteSet>();
  BatchUpdate u;
  u.batch = 1;
  u.total = 6;
  u.sealed = true;
  seal->updates.push_back(u);
  auto t4 = writer->submit(std::move(seal));
  REQUIRE(n.collect(*writer, [&] { return n.isCommitted(t4); }));
  CHECK(countRows(t.path, "SELECT total FROM batches WHERE id = 1") == 2);
  CHECK(countRows(t.path, "SELECT sealed FROM batches WHERE id = 1") == 1);
  CHECK(writer->queued() == 0);
}

// startReduce puts the reduce batch, its tasks and the map's link to it in one set. If the set
// fails, the link must not be written without the batch: a restart starts a reduce stage only
// for a map row that links none (TaskStore::mapStagesWithoutReduce).
TEST_CASE("a refused new batch takes the link to it (nextBatch) with it, so a restart finds the job again") {
  TempDb t;
  auto ctx = zmq::context_t();
  auto writer = startWriter(ctx, t, 100);
  std::shared_ptr<std::vector<std::string>> keep1, keep2, keep3;
  WriteSet map = batchWithTasks(1, 1, {"a"}, &keep1);
  map.newBatches[0].mrStage = 1;
  auto t1 = writer->submit(std::make_unique<WriteSet>(std::move(map)));
  Notices n;
  REQUIRE(n.collect(*writer, [&] { return n.isCommitted(t1); }));
  ResultRecord r;
  r.task = 1;
  r.attempts = 1;
  BatchUpdate end;
  end.batch = 1;
  end.finishedMs = 5;
  auto ended = std::make_unique<WriteSet>();
  ended->results.push_back(r);
  ended->updates.push_back(end);
  auto t2 = writer->submit(std::move(ended));
  REQUIRE(n.collect(*writer, [&] { return n.isCommitted(t2); }));
  // The reduce stage: batch 2, whose task id is taken (the set fails), and the map's link to it.
  auto reduce = std::make_unique<WriteSet>(batchWithTasks(2, 1, {"r"}, &keep2));
  BatchUpdate link;
  link.batch = 1;
  link.nextBatch = 2;
  reduce->updates.push_back(link);
  reduce->results.push_back(r);  // kept (a duplicate here: ignored)
  auto t3 = writer->submit(std::move(reduce));
  REQUIRE(n.collect(*writer, [&] { return n.failed.count(t3) == 1; }));
  auto t4 = writer->submit(std::make_unique<WriteSet>(batchWithTasks(3, 10, {"x"}, &keep3)));
  REQUIRE(n.collect(*writer, [&] { return n.isCommitted(t3) && n.isCommitted(t4); }));
  CHECK(countRows(t.path, "SELECT count(*) FROM batches WHERE id = 2") == 0);
  CHECK(countRows(t.path, "SELECT count(*) FROM batches WHERE id = 1 AND next_batch IS NULL") == 1);
  CHECK(countRows(t.path, "SELECT count(*) FROM batches WHERE id = 3") == 1);
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  auto orphans = tasks.mapStagesWithoutReduce();
  REQUIRE(orphans.ok());
  REQUIRE(orphans->size() == 1);
  CHECK((*orphans)[0].id == 1);
}

namespace {
// Submits `sets` write sets of `perSet` payloads of 1000 bytes each (batches firstBatch...) and
// waits until all are committed. 1000 bytes stay in the rows (PayloadLog::kMinBytes), so they
// fill the WAL.
void writeMany(StoreWriter& writer, std::uint64_t firstBatch, int sets, int perSet,
               std::vector<std::shared_ptr<std::vector<std::string>>>& keep) {
  std::uint64_t id = firstBatch * 100'000;
  for (int s = 0; s < sets; ++s) {
    std::vector<std::string> payloads(static_cast<std::size_t>(perSet), std::string(1000, static_cast<char>('a' + s % 26)));
    keep.emplace_back();
    writer.submit(std::make_unique<WriteSet>(batchWithTasks(firstBatch + static_cast<std::uint64_t>(s), id, payloads, &keep.back())));
    id += static_cast<std::uint64_t>(perSet);
  }
  std::size_t committed = 0;
  std::int64_t deadline = util::systemClock().monotonicMs() + 20000;
  while (committed < static_cast<std::size_t>(sets) && util::systemClock().monotonicMs() < deadline) {
    zmq::pollitem_t item{writer.socket().handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(100));
    while (auto n = writer.receive()) {
      CHECK(n->failed.empty());
      committed += n->committed.size();
    }
  }
  REQUIRE(committed == static_cast<std::size_t>(sets));
}

bool waitFor(const std::function<bool()>& done) {
  std::int64_t deadline = util::systemClock().monotonicMs() + 10000;
  while (!done()) {
    if (util::systemClock().monotonicMs() >= deadline) return false;
    usleep(10'000);
  }
  return true;
}

std::int64_t fileSize(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}
}  // namespace

TEST_CASE("WAL checkpoints run on the checkpoint thread, not in the commit") {
  TempDb t;
  auto ctx = zmq::context_t();
  { auto db = Db::open(t.path); REQUIRE(db.ok()); }
  WriterOptions o;
  o.firstCheckpointPages = 256;  // 1 MiB
  o.checkpointPages = 256;
  o.idleCheckpointMs = 0;   // only the size asks
  auto writer = StoreWriter::start(ctx, t.path, o);
  REQUIRE(writer.ok());
  std::vector<std::shared_ptr<std::vector<std::string>>> keep;
  std::int64_t before = fileSize(t.path);
  writeMany(**writer, 1, 8, 400, keep);  // ~3.2 MB of payloads, in up to 8 commits
  REQUIRE(waitFor([&] { return (*writer)->checkpoints().done >= 1; }));
  CHECK((*writer)->checkpoints().inLine == 0);
  CHECK((*writer)->checkpoints().errors == 0);
  // The pages reached the database file itself.
  CHECK(waitFor([&] { return fileSize(t.path) > before + 1'000'000; }));
}

TEST_CASE("an idle WAL is copied into the database without being asked") {
  TempDb t;
  auto ctx = zmq::context_t();
  { auto db = Db::open(t.path); REQUIRE(db.ok()); }
  WriterOptions o;
  o.firstCheckpointPages = 1'000'000;  // never asked by size
  o.checkpointPages = 1'000'000;
  o.idleCheckpointMs = 50;
  auto writer = StoreWriter::start(ctx, t.path, o);
  REQUIRE(writer.ok());
  std::vector<std::shared_ptr<std::vector<std::string>>> keep;
  std::int64_t before = fileSize(t.path);
  writeMany(**writer, 1, 2, 400, keep);
  REQUIRE(waitFor([&] { return (*writer)->checkpoints().done >= 1; }));
  CHECK(waitFor([&] { return fileSize(t.path) > before + 500'000; }));
  CHECK((*writer)->checkpoints().inLine == 0);
}

TEST_CASE("a WAL past its hard bound is checkpointed in line by the writer") {
  TempDb t;
  auto ctx = zmq::context_t();
  { auto db = Db::open(t.path); REQUIRE(db.ok()); }
  WriterOptions o;
  o.firstCheckpointPages = 1'000'000;  // the checkpoint thread is never asked
  o.checkpointPages = 1'000'000;
  o.idleCheckpointMs = 0;
  o.walHardPages = 300;
  auto writer = StoreWriter::start(ctx, t.path, o);
  REQUIRE(writer.ok());
  std::vector<std::shared_ptr<std::vector<std::string>>> keep;
  writeMany(**writer, 1, 6, 400, keep);  // ~2.4 MB: about 600 WAL pages
  CHECK((*writer)->checkpoints().done == 0);
  CHECK((*writer)->checkpoints().inLine >= 1);
  CHECK((*writer)->checkpoints().errors == 0);
  // And the data is all there.
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  auto st = db->prepare("SELECT count(*) FROM tasks");
  REQUIRE(st.ok());
  REQUIRE(*st->step());
  CHECK(st->getInt(0) == 2400);
}

TEST_CASE("under a stream of small commits the writer finishes the checkpoint and the WAL stays small") {
  TempDb t;
  auto ctx = zmq::context_t();
  { auto db = Db::open(t.path); REQUIRE(db.ok()); }
  WriterOptions o;
  o.firstCheckpointPages = 32;
  o.checkpointPages = 32;
  o.finishPages = 64;
  o.idleCheckpointMs = 0;  // no idle copies: only the finishing can restart the WAL
  auto writer = StoreWriter::start(ctx, t.path, o);
  REQUIRE(writer.ok());
  std::vector<std::shared_ptr<std::vector<std::string>>> keep;
  for (std::uint64_t i = 1; i <= 40; ++i) {
    writeMany(**writer, i, 1, 20, keep);  // one commit of ~6 pages
    usleep(20'000);                      // time for the checkpoint thread
  }
  CHECK((*writer)->checkpoints().done >= 1);
  CHECK((*writer)->checkpoints().finished >= 1);
  CHECK((*writer)->checkpoints().errors == 0);
  // 40 commits of ~6 pages would make a WAL of ~1 MiB; restarted, it stays near 32-64 pages.
  CHECK(fileSize(t.path + "-wal") < 512 * 1024);
}

TEST_CASE("the payload log gives back what it was given, across segments and reopenings") {
  TempDb t;
  const std::string dir = PayloadLog::dirFor(t.path);
  CHECK(dir == t.dir + "/payloads");
  std::vector<std::string> payloads;
  for (int i = 0; i < 40; ++i) payloads.push_back(std::string(1000 + static_cast<std::size_t>(i) * 97, static_cast<char>('A' + i % 26)));
  std::vector<PayloadRef> refs;
  {
    auto log = PayloadLog::open(dir, 8192);  // small segments: several rotations
    REQUIRE(log.ok());
    for (int group = 0; group < 4; ++group) {
      for (int i = group * 10; i < group * 10 + 10; ++i) {
        auto ref = (*log)->add(payloads[static_cast<std::size_t>(i)]);
        REQUIRE(ref.ok());
        refs.push_back(*ref);
      }
      REQUIRE((*log)->sync().ok());
    }
    CHECK(refs.back().segment > refs.front().segment);
  }
  std::uint64_t lastSegment = refs.back().segment;
  {
    auto log = PayloadLog::open(dir);  // a reopened log never appends to an old segment
    REQUIRE(log.ok());
    auto ref = (*log)->add(payloads[0]);
    REQUIRE(ref.ok());
    REQUIRE((*log)->sync().ok());
    CHECK(ref->segment == lastSegment + 1);
    CHECK(ref->offset == 0);
  }
  PayloadReader reader(dir);
  for (std::size_t i = 0; i < refs.size(); ++i) {
    auto bytes = reader.read(refs[i]);
    REQUIRE(bytes.ok());
    CHECK_MESSAGE(*bytes == payloads[i], "payload " << i);
  }
  // A segment cut short, and one that is gone, are errors that say so.
  REQUIRE(::truncate(segmentPath(dir, refs.back().segment).c_str(), static_cast<off_t>(refs.back().offset + 10)) == 0);
  PayloadReader fresh(dir);
  auto cut = fresh.read(refs.back());
  REQUIRE_FALSE(cut.ok());
  CHECK(cut.error().message.find("cut short") != std::string::npos);
  REQUIRE(::unlink(segmentPath(dir, refs.front().segment).c_str()) == 0);
  auto gone = fresh.read(refs.front());
  REQUIRE_FALSE(gone.ok());
  CHECK(gone.error().message.find("No such file") != std::string::npos);
}

TEST_CASE("large payloads go to the payload log, small ones stay in their rows, and both come back") {
  LoggedStore store;
  auto& db = store.db;
  TaskStore& tasks = *store.tasks;
  std::string big(5000, 'x');
  big[4999] = 'y';
  std::shared_ptr<std::vector<std::string>> keep;
  WriteSet set = batchWithTasks(1, 1, {"small", big, std::string(PayloadLog::kMinBytes, 'z')}, &keep);
  set.newBatches[0].sealed = false;
  REQUIRE(tasks.apply(set).ok());
  auto st = db->prepare("SELECT id, length(payload), payload_segment IS NOT NULL FROM tasks ORDER BY id");
  REQUIRE(st.ok());
  std::vector<std::pair<std::int64_t, std::int64_t>> rows;  // row payload length, in the log
  while (*st->step()) rows.emplace_back(st->getInt(1), st->getInt(2));
  REQUIRE(rows.size() == 3);
  CHECK(rows[0] == std::make_pair<std::int64_t, std::int64_t>(5, 0));
  CHECK(rows[1] == std::make_pair<std::int64_t, std::int64_t>(0, 1));
  CHECK(rows[2] == std::make_pair<std::int64_t, std::int64_t>(0, 1));
  std::vector<PendingTask> pending;
  REQUIRE(tasks.forEachPendingTask([&](PendingTask&& p) { pending.push_back(std::move(p)); }).ok());
  REQUIRE(pending.size() == 3);
  CHECK(pending[0].payload == "small");
  CHECK(pending[1].payload == big);
  CHECK(pending[2].payload == std::string(PayloadLog::kMinBytes, 'z'));
  for (const auto& p : pending) CHECK(p.payloadError.empty());
}

TEST_CASE("the writer deletes payload segments that no unfinished batch needs") {
  TempDb t;
  auto ctx = zmq::context_t();
  { auto db = Db::open(t.path); REQUIRE(db.ok()); }
  const std::string dir = PayloadLog::dirFor(t.path);
  std::vector<std::shared_ptr<std::vector<std::string>>> keep;
  auto commit = [&](StoreWriter& w, WriteSet set) {
    w.submit(std::make_unique<WriteSet>(std::move(set)));
    std::int64_t deadline = util::systemClock().monotonicMs() + 10000;
    for (bool done = false; !done && util::systemClock().monotonicMs() < deadline;) {
      zmq::pollitem_t item{w.socket().handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(100));
      while (auto n = w.receive()) {
        REQUIRE(n->failed.empty());
        done = true;
      }
    }
  };
  WriterOptions o;
  o.payloadGcMs = 0;  // look after every commit
  {
    auto w = StoreWriter::start(ctx, t.path, o);  // segment 1: batches 1 and 2
    REQUIRE(w.ok());
    keep.emplace_back();
    commit(**w, batchWithTasks(1, 1, {std::string(3000, 'a')}, &keep.back()));
    keep.emplace_back();
    commit(**w, batchWithTasks(2, 10, {std::string(3000, 'b')}, &keep.back()));
  }
  {
    auto w = StoreWriter::start(ctx, t.path, o);  // segment 2: batch 3
    REQUIRE(w.ok());
    keep.emplace_back();
    commit(**w, batchWithTasks(3, 20, {std::string(3000, 'c')}, &keep.back()));
    CHECK(*listSegments(dir) == std::vector<std::uint64_t>{1, 2});  // batches 1 and 2 are unfinished
    WriteSet done;
    done.updates.push_back(BatchUpdate{1, std::nullopt, false, std::nullopt, 5, std::nullopt, std::nullopt, std::nullopt, std::nullopt});
    commit(**w, std::move(done));
    CHECK(*listSegments(dir) == std::vector<std::uint64_t>{1, 2});  // batch 2 still needs segment 1
    WriteSet done2;
    done2.updates.push_back(BatchUpdate{2, std::nullopt, false, std::nullopt, 6, std::nullopt, std::nullopt, std::nullopt, std::nullopt});
    WriteSet done3;
    done3.updates.push_back(BatchUpdate{3, std::nullopt, false, std::nullopt, 7, std::nullopt, std::nullopt, std::nullopt, std::nullopt});
    commit(**w, std::move(done2));
    commit(**w, std::move(done3));
    // Segment 1 is gone; segment 2 is the one being appended to, so it stays.
    CHECK(*listSegments(dir) == std::vector<std::uint64_t>{2});
    CHECK((*w)->payloadSegmentsDeleted() == 1);
  }
}

// Takes a database back to schema version 11: drops what version 12 (the bundle that ran) added.
void dropVersion12(Db& db) {
  for (const char* t : {"results", "attempts"}) {
    for (const char* c : {"bundle", "bundle_version"}) {
      REQUIRE(db.exec(std::string("ALTER TABLE ") + t + " DROP COLUMN " + c).ok());
    }
  }
}

// Takes a database back to schema version 10: drops what version 11 (attempts' start) and later added.
void dropVersion11(Db& db) {
  dropVersion12(db);
  REQUIRE(db.exec("ALTER TABLE attempts DROP COLUMN started_ms").ok());
}

// Takes a database back to schema version 9: drops what version 10 (`mesh submit --after`) and
// later added.
void dropVersion10(Db& db) {
  dropVersion11(db);
  REQUIRE(db.exec("DROP TABLE batch_after").ok());
  REQUIRE(db.exec("ALTER TABLE batches DROP COLUMN held").ok());
}

// Takes a database back to schema version 8: drops what versions 9 (`mesh nodes drain`) and later added.
void dropVersion9(Db& db) {
  dropVersion10(db);
  REQUIRE(db.exec("ALTER TABLE keys DROP COLUMN drained_ms").ok());
}

// Takes a database back to schema version 6: drops what versions 7 (`mesh retry`) and later added
// (version 8 added no column).
void dropVersion7(Db& db) {
  dropVersion9(db);
  REQUIRE(db.exec("ALTER TABLE batches DROP COLUMN retry_of").ok());
  REQUIRE(db.exec("ALTER TABLE tasks DROP COLUMN retry_of_task").ok());
  REQUIRE(db.exec("ALTER TABLE tasks DROP COLUMN retry_of_idx").ok());
}

// Takes a database back to schema version 4: drops what versions 5 (retention) and later added
// (version 6 added no column).
void dropVersion5(Db& db) {
  dropVersion7(db);
  for (const char* i : {"batches_expirable", "batches_purging", "batches_expired_tasks"}) {
    REQUIRE(db.exec(std::string("DROP INDEX ") + i).ok());
  }
  for (const char* c : {"expired_ms", "first_task", "last_task", "purging", "kept_succeeded", "kept_failed",
                        "kept_cancelled"}) {
    REQUIRE(db.exec(std::string("ALTER TABLE batches DROP COLUMN ") + c).ok());
  }
}

TEST_CASE("a version 2 database is upgraded to the payload log columns and keeps its payloads") {
  TempDb t;
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    TaskStore tasks(*db);  // no payload log: every payload in its row, as version 2 stored them
    std::shared_ptr<std::vector<std::string>> keep;
    WriteSet set = batchWithTasks(1, 1, {std::string(3000, 'q'), "s"}, &keep);
    set.newBatches[0].sealed = false;
    REQUIRE(tasks.apply(set).ok());
    // Make it a version 2 file again.
    dropVersion5(*db);
    for (const char* c : {"payload_segment", "payload_offset", "payload_length"}) {
      REQUIRE(db->exec(std::string("ALTER TABLE tasks DROP COLUMN ") + c).ok());
    }
    for (const char* c : {"first_segment", "last_segment"}) {
      REQUIRE(db->exec(std::string("ALTER TABLE batches DROP COLUMN ") + c).ok());
    }
    REQUIRE(db->exec("PRAGMA user_version = 2").ok());
  }
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  auto st = db->prepare("PRAGMA user_version");
  REQUIRE(st.ok());
  REQUIRE(*st->step());
  CHECK(st->getInt(0) == kSchemaVersion);
  st->reset();
  PayloadReader reader(PayloadLog::dirFor(t.path));
  TaskStore tasks(*db, nullptr, &reader);
  std::vector<PendingTask> pending;
  REQUIRE(tasks.forEachPendingTask([&](PendingTask&& p) { pending.push_back(std::move(p)); }).ok());
  REQUIRE(pending.size() == 2);
  CHECK(pending[0].payload == std::string(3000, 'q'));
  CHECK(pending[1].payload == "s");
}

TEST_CASE("a version 3 database learns each batch's range of payload segments") {
  TempDb t;
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    auto log = PayloadLog::open(PayloadLog::dirFor(t.path), 4096);  // one payload per segment
    REQUIRE(log.ok());
    TaskStore tasks(*db, log->get());
    std::shared_ptr<std::vector<std::string>> keep;
    WriteSet set = batchWithTasks(1, 1, {std::string(3000, 'a'), std::string(3000, 'b'), std::string(3000, 'c')}, &keep);
    set.newBatches[0].sealed = false;
    REQUIRE(tasks.apply(set).ok());
    auto ranges = tasks.payloadSegmentsInUse();
    REQUIRE(ranges.ok());
    CHECK(*ranges == std::vector<std::pair<std::uint64_t, std::uint64_t>>{{1, 3}});
    dropVersion5(*db);
    for (const char* c : {"first_segment", "last_segment"}) {
      REQUIRE(db->exec(std::string("ALTER TABLE batches DROP COLUMN ") + c).ok());
    }
    REQUIRE(db->exec("PRAGMA user_version = 3").ok());
  }
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  auto ranges = tasks.payloadSegmentsInUse();
  REQUIRE(ranges.ok());
  CHECK(*ranges == std::vector<std::pair<std::uint64_t, std::uint64_t>>{{1, 3}});
}

TEST_CASE("SQLite errors name the database file") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  auto s = db->exec("SELECT * FROM no_such_table");
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().message.find("SQLite (") != std::string::npos);
  CHECK(s.error().message.find(t.path.substr(t.path.rfind('/') + 1)) != std::string::npos);
}

namespace {
// A finished (or not) batch of `n` tasks from firstId, with a result of `statuses[i]` for the
// first statuses.size() tasks.
void addBatch(TaskStore& tasks, std::uint64_t id, std::uint64_t firstId, int n, std::optional<std::int64_t> finishedMs,
              const std::vector<std::uint8_t>& statuses, std::uint8_t mrStage = 0) {
  std::shared_ptr<std::vector<std::string>> keep;
  std::vector<std::string> payloads;
  for (int i = 0; i < n; ++i) payloads.push_back("p" + std::to_string(i));
  WriteSet set = batchWithTasks(id, firstId, payloads, &keep);
  set.newBatches[0].mrStage = mrStage;
  for (std::size_t i = 0; i < statuses.size(); ++i) {
    ResultRecord r;
    r.task = firstId + i;
    r.status = statuses[i];
    r.attempts = 1;
    set.results.push_back(r);
    AttemptRecord a;
    a.task = firstId + i;
    a.attempt = 1;
    a.outcome = "failed";
    set.attempts.push_back(a);
  }
  if (finishedMs) {
    BatchUpdate u;
    u.batch = id;
    u.finishedMs = finishedMs;
    set.updates.push_back(u);
  }
  REQUIRE(tasks.apply(set).ok());
}

// Sets one field of a batch row: "next", "cancelled" or "finished".
void updateBatch(TaskStore& tasks, std::uint64_t batch, const std::string& field, std::int64_t value) {
  BatchUpdate u;
  u.batch = batch;
  if (field == "next") u.nextBatch = static_cast<std::uint64_t>(value);
  if (field == "cancelled") u.cancelledMs = value;
  if (field == "finished") u.finishedMs = value;
  WriteSet set;
  set.updates.push_back(u);
  REQUIRE(tasks.apply(set).ok());
}
}  // namespace

TEST_CASE("expiry removes only batches finished before the cutoff, in bounded steps, and keeps their rows marked") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  addBatch(tasks, 1, 100, 5, 1000, {0, 0, 0, 3, 5});  // 3 ok, 1 failed, 1 cancelled
  addBatch(tasks, 2, 200, 2, 5000, {0, 0});           // finished after the cutoff
  addBatch(tasks, 3, 300, 2, std::nullopt, {0});      // still running
  addBatch(tasks, 4, 400, 2, 1100, {0, 0}, 1);        // a map stage whose reduce (5) runs
  addBatch(tasks, 5, 500, 1, std::nullopt, {}, 2);
  updateBatch(tasks, 4, "next", 5);
  addBatch(tasks, 6, 600, 1, 1500, {5}, 1);           // a map stage cancelled: its job ended
  updateBatch(tasks, 6, "cancelled", 1400);

  std::vector<ExpiryStep> steps;
  for (int i = 0; i < 10; ++i) {
    auto s = tasks.expireStep(2000, 9000, 2);
    REQUIRE(s.ok());
    if (s->batch == 0) break;
    steps.push_back(*s);
  }
  REQUIRE(steps.size() == 4);  // batch 1 in three steps of at most 2 tasks, then batch 6
  CHECK(steps[0].batch == 1);
  CHECK(steps[0].marked == 1);
  CHECK(steps[0].tasks == 2);
  CHECK(steps[0].rows == 6);  // 2 results, 2 attempts, 2 tasks
  CHECK_FALSE(steps[0].done);
  CHECK(steps[1].batch == 1);
  CHECK(steps[1].marked == 0);
  CHECK(steps[2].batch == 1);
  CHECK(steps[2].tasks == 1);
  CHECK(steps[2].done);
  CHECK(steps[3].batch == 6);
  CHECK(steps[3].marked == 1);
  CHECK(steps[3].done);

  CHECK(countRows(t.path, "SELECT count(*) FROM tasks WHERE batch IN (1, 6)") == 0);
  CHECK(countRows(t.path, "SELECT count(*) FROM results WHERE task BETWEEN 100 AND 104 OR task = 600") == 0);
  CHECK(countRows(t.path, "SELECT count(*) FROM attempts WHERE task BETWEEN 100 AND 104 OR task = 600") == 0);
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks") == 7);  // batches 2, 3, 4, 5 untouched
  CHECK(countRows(t.path, "SELECT count(*) FROM results") == 5);
  CHECK(countRows(t.path, "SELECT count(*) FROM batches WHERE expired_ms IS NOT NULL") == 2);
  CHECK(countRows(t.path, "SELECT count(*) FROM batches WHERE purging = 1") == 0);

  auto b1 = tasks.batch(1);
  REQUIRE(b1.ok());
  REQUIRE(b1->has_value());
  CHECK((*b1)->expiredMs == 9000);
  CHECK((*b1)->finishedMs == 1000);
  CHECK((*b1)->firstTask == 100);
  CHECK((*b1)->lastTask == 104);
  CHECK((*b1)->keptSucceeded == 3);
  CHECK((*b1)->keptFailed == 1);
  CHECK((*b1)->keptCancelled == 1);
  CHECK((*tasks.batch(2))->expiredMs == std::nullopt);
  CHECK((*tasks.batch(4))->expiredMs == std::nullopt);

  // A removed task names its batch; ids are never handed out again.
  CHECK_FALSE(tasks.task(102)->has_value());
  auto of = tasks.expiredBatchOfTask(102);
  REQUIRE(of.ok());
  REQUIRE(of->has_value());
  CHECK((*of)->id == 1);
  CHECK_FALSE(tasks.expiredBatchOfTask(150)->has_value());
  CHECK_FALSE(tasks.expiredBatchOfTask(200)->has_value());
  CHECK(*tasks.maxTaskId() == 600);  // gone from tasks, but handed out: never again

  // The map stage goes with its reduce stage, once that finished before the cutoff too.
  updateBatch(tasks, 5, "finished", 3000);
  auto none = tasks.expireStep(2000, 9500, 2);
  REQUIRE(none.ok());
  CHECK(none->batch == 0);
  auto s = tasks.expireStep(4000, 9500, 2);
  REQUIRE(s.ok());
  CHECK(s->batch == 4);
  CHECK(s->marked == 2);
  CHECK((*tasks.batch(5))->expiredMs == 9500);  // marked with its map stage
  for (int i = 0; i < 5 && s->batch != 0; ++i) s = tasks.expireStep(4000, 9600, 2);
  CHECK(s->batch == 0);
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks WHERE batch IN (4, 5)") == 0);
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks") == 4);  // batches 2 and 3
}

TEST_CASE("an expired batch reads its final counts from the first step on, and a reopened store finishes its removal") {
  TempDb t;
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    TaskStore tasks(*db);
    addBatch(tasks, 1, 100, 5, 1000, {0, 0, 0, 3, 5});  // 3 ok, 1 failed, 1 cancelled
    addBatch(tasks, 2, 200, 2, std::nullopt, {0});      // running: never touched
    auto s = tasks.expireStep(2000, 9000, 2);
    REQUIRE(s.ok());
    CHECK(s->batch == 1);
    CHECK(s->tasks == 2);
    CHECK_FALSE(s->done);
    // Two of its five tasks are gone; the row says what all five came to.
    CHECK(kept(tasks, 1) == std::array<std::uint64_t, 3>{3, 1, 1});
    auto p = tasks.progress(1);
    REQUIRE(p.ok());
    REQUIRE(p->has_value());
    CHECK((*p)->record.expiredMs == 9000);
    CHECK((*p)->counts.succeeded == 3);
    CHECK((*p)->counts.failed == 1);
    CHECK((*p)->counts.cancelled == 1);
  }  // the nexus stops (or dies) between two steps: each step is its own transaction
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks WHERE batch = 1") == 3);
  CHECK(countRows(t.path, "SELECT count(*) FROM batches WHERE purging = 1") == 1);
  CHECK(*tasks.maxTaskId() == 201);
  std::vector<ExpiryStep> steps;
  for (int i = 0; i < 10; ++i) {
    // A later cutoff and time: the batch being removed goes first and keeps its mark.
    auto s = tasks.expireStep(5000, 9900, 2);
    REQUIRE(s.ok());
    if (s->batch == 0) break;
    steps.push_back(*s);
    auto p = tasks.progress(1);
    REQUIRE(p.ok());
    CHECK((*p)->counts.succeeded == 3);
    CHECK((*p)->counts.failed == 1);
    CHECK((*p)->counts.cancelled == 1);
  }
  REQUIRE(steps.size() == 2);
  CHECK(steps[0].batch == 1);
  CHECK(steps[0].marked == 0);  // marked once, by the first run
  CHECK(steps[1].tasks == 1);
  CHECK(steps[1].done);
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks WHERE batch = 1") == 0);
  CHECK(countRows(t.path, "SELECT count(*) FROM results WHERE task BETWEEN 100 AND 104") == 0);
  CHECK(countRows(t.path, "SELECT count(*) FROM attempts WHERE task BETWEEN 100 AND 104") == 0);
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks WHERE batch = 2") == 2);
  CHECK(countRows(t.path, "SELECT count(*) FROM results WHERE task BETWEEN 200 AND 201") == 1);
  auto b = tasks.batch(1);
  REQUIRE(b.ok());
  CHECK((*b)->expiredMs == 9000);
  CHECK((*b)->firstTask == 100);
  CHECK((*b)->lastTask == 104);
  CHECK(kept(tasks, 1) == std::array<std::uint64_t, 3>{3, 1, 1});
  // A running batch's counts come from its rows.
  auto p2 = tasks.progress(2);
  REQUIRE(p2.ok());
  CHECK_FALSE((*p2)->record.expiredMs);
  CHECK((*p2)->counts.succeeded == 1);
  CHECK_FALSE(tasks.progress(3)->has_value());
}

TEST_CASE("a removal that schema version 5 left half done gets its final counts at the upgrade") {
  TempDb t;
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    TaskStore tasks(*db);
    addBatch(tasks, 1, 100, 5, 1000, {0, 0, 0, 3, 5});
    addBatch(tasks, 2, 200, 2, 1000, {0, 3});  // expired and removed whole under version 5
    // What version 5 left after one step of two tasks: the counts of the removed results only.
    // (Version 5 wrote no counts at a batch's end: those written there are cleared.)
    REQUIRE(db->exec("UPDATE batches SET expired_ms = 9000, purging = 1, first_task = 100, last_task = 104, "
                     "kept_succeeded = 2, kept_failed = 0, kept_cancelled = 0 WHERE id = 1").ok());
    REQUIRE(db->exec("DELETE FROM results WHERE task IN (100, 101); DELETE FROM attempts WHERE task IN (100, 101); "
                     "DELETE FROM tasks WHERE id IN (100, 101)").ok());
    REQUIRE(db->exec("UPDATE batches SET expired_ms = 9000, first_task = 200, last_task = 201, "
                     "kept_succeeded = 1, kept_failed = 1, kept_cancelled = 0 WHERE id = 2").ok());
    REQUIRE(db->exec("DELETE FROM results WHERE task IN (200, 201); DELETE FROM attempts WHERE task IN (200, 201); "
                     "DELETE FROM tasks WHERE id IN (200, 201)").ok());
    dropVersion7(*db);
    REQUIRE(db->exec("PRAGMA user_version = 5").ok());
  }
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  CHECK(kept(tasks, 1) == std::array<std::uint64_t, 3>{3, 1, 1});
  auto done = tasks.batch(2);
  CHECK((*done)->keptSucceeded == 1);  // untouched: its counts were complete
  CHECK((*done)->keptFailed == 1);
  for (int i = 0; i < 5; ++i) {
    auto s = tasks.expireStep(2000, 9900, 2);
    REQUIRE(s.ok());
    if (s->batch == 0) break;
  }
  CHECK(kept(tasks, 1) == std::array<std::uint64_t, 3>{3, 1, 1});
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks") == 0);
  CHECK(countRows(t.path, "SELECT count(*) FROM batches WHERE purging = 1") == 0);
}

TEST_CASE("reads in a snapshot agree while another connection commits") {
  TempDb t;
  auto reader = Db::open(t.path);
  REQUIRE(reader.ok());
  auto writer = Db::open(t.path);
  REQUIRE(writer.ok());
  TaskStore writes(*writer);
  addBatch(writes, 1, 100, 4, 1000, {0, 0, 0, 0});
  auto count = [&] {
    auto st = reader->prepare("SELECT count(*) FROM results");
    REQUIRE(st.ok());
    REQUIRE(*st->step());
    return st->getInt(0);
  };
  {
    ReadSnapshot snapshot(*reader);
    REQUIRE(snapshot.begun().ok());
    CHECK(count() == 4);
    REQUIRE(writer->exec("DELETE FROM results WHERE task < 102").ok());
    CHECK(count() == 4);
  }
  CHECK(count() == 2);
  ReadSnapshot again(*reader);  // the first one ended: a new one can begin
  CHECK(again.begun().ok());
}

TEST_CASE("the writer expires old batches on its timer and keeps committing") {
  TempDb t;
  { auto db = Db::open(t.path); REQUIRE(db.ok()); }
  WriterOptions options;
  options.keepFinishedMs = 1000;
  options.expiryCheckMs = 50;
  options.expiryStepTasks = 3;
  options.keepFinishedText = "1s";
  auto ctx = zmq::context_t();
  auto started = StoreWriter::start(ctx, t.path, options);
  REQUIRE(started.ok());
  auto& writer = **started;
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    TaskStore tasks(*db);
    addBatch(tasks, 1, 1, 10, 1, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0});  // finished long ago
  }
  std::shared_ptr<std::vector<std::string>> keep;
  auto ticket = writer.submit(std::make_unique<WriteSet>(batchWithTasks(2, 100, {"a"}, &keep)));
  Notices n;
  REQUIRE(n.collect(writer, [&] { return n.isCommitted(ticket); }));
  const auto& clock = util::systemClock();
  std::int64_t deadline = clock.monotonicMs() + 10'000;
  while (writer.expiry().tasks < 10 && clock.monotonicMs() < deadline) usleep(10'000);
  CHECK(writer.expiry().batches == 1);
  CHECK(writer.expiry().tasks == 10);
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks WHERE batch = 1") == 0);
  CHECK(countRows(t.path, "SELECT count(*) FROM batches WHERE id = 1 AND expired_ms IS NOT NULL") == 1);
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks WHERE batch = 2") == 1);
}

namespace {
ResultRecord finalResult(std::uint64_t task, std::uint8_t status, std::string payload = "") {
  ResultRecord r;
  r.task = task;
  r.status = status;
  r.error = status == 0 ? "" : "boom";
  r.attempts = 1;
  r.node = "n";
  r.payload = std::move(payload);
  return r;
}

// A retry batch as the nexus writes it: the row, and a chunk that copies the original's failures.
WriteSet retryOf(std::uint64_t original, std::uint64_t batch, std::uint64_t firstId, std::uint64_t count) {
  WriteSet set;
  BatchRecord b;
  b.id = batch;
  b.handler = "echo";
  b.clientKey = "k";
  b.sealed = true;
  b.total = count;
  b.retryOf = original;
  set.newBatches.push_back(b);
  TaskChunk c;
  c.batch = batch;
  c.firstId = firstId;
  c.retryOf = original;
  c.retryCount = count;
  set.chunks.push_back(c);
  return set;
}
}  // namespace

TEST_CASE("a failed task's payload moves from the payload log into its row; others stay in the log") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  auto log = PayloadLog::open(PayloadLog::dirFor(t.path));
  REQUIRE(log.ok());
  TaskStore tasks(*db, log->get());
  std::string big(5000, 'f');
  std::shared_ptr<std::vector<std::string>> keep;
  REQUIRE(tasks.apply(batchWithTasks(1, 1, {big, big, big}, &keep)).ok());
  WriteSet results;
  results.results.push_back(finalResult(1, 1, big));  // failed
  results.results.push_back(finalResult(2, 0, ""));   // ok
  results.results.push_back(finalResult(3, 5, big));  // cancelled: not a failure, stays in the log
  REQUIRE(tasks.apply(results).ok());
  auto st = db->prepare("SELECT length(payload), payload_segment IS NOT NULL FROM tasks ORDER BY id");
  REQUIRE(st.ok());
  std::vector<std::pair<std::int64_t, std::int64_t>> rows;
  while (*st->step()) rows.emplace_back(st->getInt(0), st->getInt(1));
  REQUIRE(rows.size() == 3);
  CHECK(rows[0] == std::make_pair<std::int64_t, std::int64_t>(5000, 0));
  CHECK(rows[1] == std::make_pair<std::int64_t, std::int64_t>(0, 1));
  CHECK(rows[2] == std::make_pair<std::int64_t, std::int64_t>(0, 1));
}

TEST_CASE("a retry chunk copies every failed task in index order with its payload and its origin") {
  LoggedStore store;
  TaskStore& tasks = *store.tasks;
  std::string big(3000, 'b');
  big[0] = 'B';
  std::shared_ptr<std::vector<std::string>> keep;
  // Indexes 0..5: ok, failed (small), cancelled, timed out (big, moved into its row),
  // quarantined (big, left in the log: recorded before payloads moved), failed.
  REQUIRE(tasks.apply(batchWithTasks(1, 10, {"a", "b", "c", big, big + "q", "f"}, &keep)).ok());
  WriteSet results;
  results.results.push_back(finalResult(10, 0));
  results.results.push_back(finalResult(11, 1, "b"));
  results.results.push_back(finalResult(12, 5));
  results.results.push_back(finalResult(13, 2, big));
  results.results.push_back(finalResult(14, 6));
  results.results.push_back(finalResult(15, 1, "f"));
  REQUIRE(tasks.apply(results).ok());
  auto counts = tasks.countResults(1);
  REQUIRE(counts.ok());
  REQUIRE(counts->failed == 4);
  REQUIRE(tasks.apply(retryOf(1, 2, 100, 4)).ok());

  std::vector<PendingTask> copied;
  auto n = tasks.forEachTaskFrom(2, 100, 1000, [&](PendingTask&& p) {
    copied.push_back(std::move(p));
    return true;
  });
  REQUIRE(n.ok());
  CHECK(*n == 4);
  REQUIRE(copied.size() == 4);
  const std::vector<std::string> want = {"b", big, big + "q", "f"};
  const std::vector<std::uint64_t> origins = {11, 13, 14, 15};
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(copied[i].id == 100 + i);
    CHECK(copied[i].index == i);
    CHECK(copied[i].payload == want[i]);
    CHECK(copied[i].payloadError.empty());
    TaskRow row = storedTask(tasks, 100 + i);
    REQUIRE(row.retryOf.has_value());
    CHECK(row.retryOf->batch == 1);
    CHECK(row.retryOf->task == origins[i]);
    CHECK(row.retryOf->index == origins[i] - 10);
  }
  // In steps: `each` says when to stop, the next step starts after the last id given.
  std::vector<std::uint64_t> ids;
  auto step = tasks.forEachTaskFrom(2, 101, 2, [&](PendingTask&& p) {
    ids.push_back(p.id);
    return true;
  });
  REQUIRE(step.ok());
  CHECK(ids == std::vector<std::uint64_t>{101, 102});
  // The copy that still refers to the payload log keeps that segment in the new batch's range.
  auto batch = tasks.batch(2);
  REQUIRE(batch.ok());
  REQUIRE(batch->has_value());
  CHECK((*batch)->retryOf == std::optional<std::uint64_t>(1));
  auto segments = tasks.payloadSegmentsInUse();
  REQUIRE(segments.ok());
  CHECK(segments->size() == 2);  // the original (unfinished here) and the retry
  // Results of the retry batch name their origin; the original's rows do not change.
  WriteSet done;
  done.results.push_back(finalResult(101, 0));
  REQUIRE(tasks.apply(done).ok());
  auto page = tasks.resultsPage(2, 0, 10);
  REQUIRE(page.ok());
  REQUIRE(page->size() == 1);
  REQUIRE((*page)[0].retryOf.has_value());
  CHECK((*page)[0].retryOf->batch == 1);
  CHECK((*page)[0].retryOf->task == 13);
  CHECK((*page)[0].retryOf->index == 3);
  auto original = tasks.resultsPage(1, 0, 10);
  REQUIRE(original.ok());
  CHECK(original->size() == 6);
  CHECK_FALSE((*original)[0].retryOf.has_value());
  CHECK((*original)[3].result.status == 2);
  // Tasks of the retry that have no result yet are not failures (a retry of it finds none).
  auto again = tasks.countResults(2);
  REQUIRE(again.ok());
  CHECK(again->failed == 0);
}

TEST_CASE("a retry chunk that finds another number of failed tasks writes nothing") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  std::shared_ptr<std::vector<std::string>> keep;
  REQUIRE(tasks.apply(batchWithTasks(1, 1, {"a", "b"}, &keep)).ok());
  WriteSet results;
  results.results.push_back(finalResult(1, 1, "a"));
  results.results.push_back(finalResult(2, 1, "b"));
  REQUIRE(tasks.apply(results).ok());
  for (std::uint64_t expected : {1u, 3u}) {
    auto s = tasks.apply(retryOf(1, 2, 50, expected));
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().message.find("batch 1 changed") != std::string::npos);
    CHECK_FALSE(tasks.batch(2)->has_value());
    CHECK_FALSE(tasks.task(50)->has_value());
  }
  REQUIRE(tasks.apply(retryOf(1, 2, 50, 2)).ok());
  CHECK(tasks.task(51)->has_value());
}

TEST_CASE("a retry of a retry names the retry batch and its task as the origin") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  std::shared_ptr<std::vector<std::string>> keep;
  REQUIRE(tasks.apply(batchWithTasks(1, 1, {"a", "b", "c"}, &keep)).ok());
  WriteSet r1;
  r1.results.push_back(finalResult(1, 0));
  r1.results.push_back(finalResult(2, 1, "b"));
  r1.results.push_back(finalResult(3, 1, "c"));
  REQUIRE(tasks.apply(r1).ok());
  REQUIRE(tasks.apply(retryOf(1, 2, 10, 2)).ok());  // tasks 10 (b), 11 (c)
  WriteSet r2;
  r2.results.push_back(finalResult(10, 0));
  r2.results.push_back(finalResult(11, 2, "c"));
  REQUIRE(tasks.apply(r2).ok());
  REQUIRE(tasks.apply(retryOf(2, 3, 20, 1)).ok());
  TaskRow row = storedTask(tasks, 20);
  CHECK(row.index == 0);
  REQUIRE(row.retryOf.has_value());
  CHECK(row.retryOf->batch == 2);
  CHECK(row.retryOf->task == 11);
  CHECK(row.retryOf->index == 1);
}

namespace {
// A batch row for the listing tests: `label`, `key`; sealed unless open.
BatchRecord listedBatch(std::uint64_t id, const std::string& label, const std::string& key, bool sealed = true) {
  BatchRecord b;
  b.id = id;
  b.label = label;
  b.handler = "echo";
  b.clientKey = key;
  b.submittedMs = 1000 + static_cast<std::int64_t>(id);
  b.sealed = sealed;
  return b;
}

std::vector<std::uint64_t> idsOf(const BatchListing& l) {
  std::vector<std::uint64_t> ids;
  for (const auto& b : l.batches) ids.push_back(b.id);
  return ids;
}
}  // namespace

TEST_CASE("a batch listing pages newest first and filters by state, label and submitter, reading no result") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  // 1 finished (label nightly), 2 finished with failures, 3 cancelled, 4 cancelling, 5 open,
  // 6 running, 7 expired, 8 finished (nightly, another key), 9 finished without a cancel but
  // with a cancelled result.
  WriteSet set;
  for (std::uint64_t id = 1; id <= 9; ++id) {
    if (id == 7) continue;  // added below, with tasks
    set.newBatches.push_back(listedBatch(id, id == 1 || id == 8 ? "nightly" : "", id == 8 ? "other" : "k", id != 5));
  }
  auto finish = [&](std::uint64_t id, BatchCounts counts) {
    BatchUpdate u;
    u.batch = id;
    u.finishedMs = 5000 + static_cast<std::int64_t>(id);
    u.finalCounts = counts;
    set.updates.push_back(u);
  };
  auto cancel = [&](std::uint64_t id) {
    BatchUpdate u;
    u.batch = id;
    u.cancelledMs = 4000;
    set.updates.push_back(u);
  };
  // The counts given with the end are what a listing shows: these batches have no task rows at
  // all, so a listing that counted result rows would show 0.
  finish(1, {3, 0, 0});
  finish(2, {1, 2, 0});
  cancel(3);
  finish(3, {1, 0, 4});
  cancel(4);
  finish(8, {5, 0, 0});
  finish(9, {1, 0, 1});
  REQUIRE(tasks.apply(set).ok());
  addBatch(tasks, 7, 700, 3, 2000, {0, 0, 3});  // finished at 2000, counted from its rows
  for (int i = 0; i < 10; ++i) {
    auto s = tasks.expireStep(3000, 9000, 100);
    REQUIRE(s.ok());
    if (s->batch == 0) break;
  }
  CHECK(countRows(t.path, "SELECT count(*) FROM tasks") == 0);

  auto list = [&](BatchFilter f, std::uint64_t before, std::uint32_t limit, std::uint64_t scan = 1'000'000) {
    auto l = tasks.listBatches(f, before, limit, scan);
    REQUIRE(l.ok());
    return *l;
  };
  SUBCASE("pages") {
    auto p1 = list({}, 0, 4);
    CHECK(idsOf(p1) == std::vector<std::uint64_t>{9, 8, 7, 6});
    CHECK(p1.nextBefore == 6);
    auto p2 = list({}, p1.nextBefore, 4);
    CHECK(idsOf(p2) == std::vector<std::uint64_t>{5, 4, 3, 2});
    auto p3 = list({}, p2.nextBefore, 4);
    CHECK(idsOf(p3) == std::vector<std::uint64_t>{1});
    CHECK(p3.nextBefore == 0);
    CHECK(list({}, 1, 4).batches.empty());
    CHECK(list({}, UINT64_MAX, 2).batches.size() == 2);  // past every id: from the newest
  }
  SUBCASE("counts and times come from the rows") {
    auto all = list({}, 0, 20);
    REQUIRE(all.batches.size() == 9);
    std::map<std::uint64_t, BatchRecord> by;
    for (const auto& b : all.batches) by[b.id] = b;
    CHECK(by[2].keptSucceeded == 1);
    CHECK(by[2].keptFailed == 2);
    CHECK(by[2].finishedMs == 5002);
    CHECK(by[7].expiredMs == 9000);  // removed: its counts stay
    CHECK(by[7].keptSucceeded == 2);
    CHECK(by[7].keptFailed == 1);
    CHECK_FALSE(by[6].finishedMs);
    CHECK(by[6].keptSucceeded == 0);
  }
  SUBCASE("states") {
    using S = BatchFilter::State;
    auto of = [&](S s) {
      BatchFilter f;
      f.state = s;
      return idsOf(list(f, 0, 20));
    };
    CHECK(of(S::kOpen) == std::vector<std::uint64_t>{5});
    CHECK(of(S::kRunning) == std::vector<std::uint64_t>{6});
    CHECK(of(S::kCancelling) == std::vector<std::uint64_t>{4});
    CHECK(of(S::kFinished) == std::vector<std::uint64_t>{8, 2, 1});
    CHECK(of(S::kCancelled) == std::vector<std::uint64_t>{9, 3});
    CHECK(of(S::kExpired) == std::vector<std::uint64_t>{7});
    CHECK(of(S::kAll).size() == 9);
  }
  SUBCASE("finished with a failed task") {
    BatchFilter failed;
    failed.failedOnly = true;
    CHECK(idsOf(list(failed, 0, 20)) == std::vector<std::uint64_t>{7, 2});  // removed ones keep their counts
    failed.state = BatchFilter::State::kExpired;
    CHECK(idsOf(list(failed, 0, 20)) == std::vector<std::uint64_t>{7});
  }
  SUBCASE("label and submitter") {
    BatchFilter nightly;
    nightly.label = "nightly";
    CHECK(idsOf(list(nightly, 0, 20)) == std::vector<std::uint64_t>{8, 1});
    CHECK(idsOf(list(nightly, 8, 20)) == std::vector<std::uint64_t>{1});
    BatchFilter none;
    none.label = "";
    CHECK(idsOf(list(none, 0, 20)) == std::vector<std::uint64_t>{9, 7, 6, 5, 4, 3, 2});
    BatchFilter other;
    other.clientKey = "other";
    CHECK(idsOf(list(other, 0, 20)) == std::vector<std::uint64_t>{8});
    other.state = BatchFilter::State::kRunning;
    CHECK(list(other, 0, 20).batches.empty());
    BatchFilter nobody;
    nobody.label = "nightly";
    nobody.clientKey = "k";
    CHECK(idsOf(list(nobody, 0, 20)) == std::vector<std::uint64_t>{1});
  }
  SUBCASE("each call looks at a bounded range of ids and says where to go on") {
    BatchFilter nightly;
    nightly.label = "nightly";
    auto p = list(nightly, 0, 20, 3);  // ids 7-9
    CHECK(idsOf(p) == std::vector<std::uint64_t>{8});
    CHECK(p.nextBefore == 7);
    p = list(nightly, p.nextBefore, 20, 3);  // ids 4-6
    CHECK(p.batches.empty());
    CHECK(p.nextBefore == 4);
    p = list(nightly, p.nextBefore, 20, 3);  // ids 1-3
    CHECK(idsOf(p) == std::vector<std::uint64_t>{1});
    CHECK(p.nextBefore == 0);
    // A gap in the ids is skipped: the next range starts at the highest id below it.
    WriteSet far;
    far.newBatches.push_back(listedBatch(1000, "nightly", "k"));
    REQUIRE(tasks.apply(far).ok());
    p = list(nightly, 0, 20, 3);  // ids 998-1000
    CHECK(idsOf(p) == std::vector<std::uint64_t>{1000});
    CHECK(p.nextBefore == 10);
  }
}

TEST_CASE("a batch's final counts are stored with its end, given or counted in that transaction") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  addBatch(tasks, 1, 100, 4, 1000, {0, 0, 3, 5});  // the end in the set of its results: counted
  auto b = tasks.batch(1);
  REQUIRE(b.ok());
  CHECK((*b)->keptSucceeded == 2);
  CHECK((*b)->keptFailed == 1);
  CHECK((*b)->keptCancelled == 1);
  addBatch(tasks, 2, 200, 2, std::nullopt, {0, 0});
  WriteSet end;
  BatchUpdate u;
  u.batch = 2;
  u.finishedMs = 2000;
  u.finalCounts = BatchCounts{2, 0, 0};
  end.updates.push_back(u);
  REQUIRE(tasks.apply(end).ok());
  CHECK((*tasks.batch(2))->keptSucceeded == 2);
  // progress() of a finished batch reads them, not its rows.
  REQUIRE(db->exec("UPDATE batches SET kept_succeeded = 7 WHERE id = 2").ok());
  auto p = tasks.progress(2);
  REQUIRE(p.ok());
  CHECK((*p)->counts.succeeded == 7);
  // A running batch's come from its rows.
  addBatch(tasks, 3, 300, 3, std::nullopt, {0, 3});
  auto running = tasks.progress(3);
  CHECK((*running)->counts.succeeded == 1);
  CHECK((*running)->counts.failed == 1);
  CHECK((*tasks.batch(3))->keptSucceeded == 0);
}

TEST_CASE("a version 7 database gets the final counts of its finished batches at the upgrade") {
  TempDb t;
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    TaskStore tasks(*db);
    addBatch(tasks, 1, 100, 5, 1000, {0, 0, 0, 3, 5});  // finished
    addBatch(tasks, 2, 200, 2, std::nullopt, {0});      // running
    addBatch(tasks, 3, 300, 2, 1000, {0, 3});           // finished, then expired
    REQUIRE(db->exec("UPDATE batches SET expired_ms = 9000, first_task = 300, last_task = 301, kept_succeeded = 1, "
                     "kept_failed = 1 WHERE id = 3; DELETE FROM results WHERE task IN (300, 301); "
                     "DELETE FROM tasks WHERE id IN (300, 301)").ok());
    // As version 7 left them: no counts until a batch expired.
    REQUIRE(db->exec("UPDATE batches SET kept_succeeded = 0, kept_failed = 0, kept_cancelled = 0 WHERE id IN (1, 2)").ok());
    dropVersion9(*db);
    REQUIRE(db->exec("PRAGMA user_version = 7").ok());
  }
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  CHECK(kept(tasks, 1) == std::array<std::uint64_t, 3>{3, 1, 1});
  CHECK((*tasks.batch(2))->keptSucceeded == 0);  // not finished: counted in memory, as before
  CHECK((*tasks.batch(3))->keptSucceeded == 1);  // expired: its counts were final already
  CHECK((*tasks.batch(3))->keptFailed == 1);
}

// ---- batches that wait for others (schema v10) -------------------------------------------------

void dropVersion10(Db& db);  // above, with the other steps back
void dropVersion11(Db& db);

namespace {
BatchFilter filterOf(BatchFilter::State state) {
  BatchFilter f;
  f.state = state;
  return f;
}
}  // namespace

TEST_CASE("a batch's dependencies and its hold are stored with it and read back after a reopen") {
  TempDb t;
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    TaskStore tasks(*db);
    addBatch(tasks, 1, 100, 2, 1000, {0, 0});
    addBatch(tasks, 2, 200, 1, std::nullopt, {});
    std::shared_ptr<std::vector<std::string>> keep;
    WriteSet set = batchWithTasks(3, 300, {"a", "b"}, &keep);
    set.newBatches[0].after = {1, 2};
    set.newBatches[0].afterDone = {};
    set.newBatches[0].held = true;
    REQUIRE(tasks.apply(set).ok());
    WriteSet other = batchWithTasks(4, 400, {"c"}, &keep);
    other.newBatches[0].afterDone = {3};
    REQUIRE(tasks.apply(other).ok());
  }
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  auto three = tasks.batch(3);
  REQUIRE(three.ok());
  REQUIRE(three->has_value());
  CHECK((*three)->after == std::vector<std::uint64_t>{1, 2});
  CHECK((*three)->afterDone.empty());
  CHECK((*three)->held);
  auto unfinished = tasks.unfinishedBatches();
  REQUIRE(unfinished.ok());
  REQUIRE(unfinished->size() == 3);  // 2, 3 and 4
  CHECK((*unfinished)[1].after == std::vector<std::uint64_t>{1, 2});
  CHECK((*unfinished)[2].afterDone == std::vector<std::uint64_t>{3});
  CHECK_FALSE((*unfinished)[2].held);
  CHECK((*unfinished)[0].after.empty());
  TaskRow row = storedTask(tasks, 300);
  CHECK(row.batchRecord.after == std::vector<std::uint64_t>{1, 2});
  CHECK(row.batchRecord.held);
  // A listing by state: held batches are waiting, not open or running.
  auto waiting = tasks.listBatches(filterOf(BatchFilter::State::kWaiting), 0, 10, 1000);
  REQUIRE(waiting.ok());
  REQUIRE(waiting->batches.size() == 1);
  CHECK(waiting->batches[0].id == 3);
  CHECK(waiting->batches[0].after == std::vector<std::uint64_t>{1, 2});
  auto running = tasks.listBatches(filterOf(BatchFilter::State::kRunning), 0, 10, 1000);
  REQUIRE(running.ok());
  REQUIRE(running->batches.size() == 2);
  CHECK(running->batches[0].id == 4);
  CHECK(running->batches[1].id == 2);
  // Released: held no more, and running.
  WriteSet release;
  BatchUpdate u;
  u.batch = 3;
  u.held = false;
  release.updates.push_back(u);
  REQUIRE(tasks.apply(release).ok());
  CHECK_FALSE((*tasks.batch(3))->held);
  CHECK((*tasks.batch(3))->after == std::vector<std::uint64_t>{1, 2});  // the dependencies stay
  CHECK(tasks.listBatches(filterOf(BatchFilter::State::kWaiting), 0, 10, 1000)->batches.empty());
  CHECK(tasks.listBatches(filterOf(BatchFilter::State::kRunning), 0, 10, 1000)->batches.size() == 3);
}

TEST_CASE("an ended attempt keeps the start its spore reported, and a version 10 database learns the column") {
  TempDb t;
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    TaskStore tasks(*db);
    std::shared_ptr<std::vector<std::string>> keep;
    REQUIRE(tasks.apply(batchWithTasks(1, 100, {"a"}, &keep)).ok());
    WriteSet set;
    AttemptRecord reported;
    reported.task = 100;
    reported.attempt = 1;
    reported.node = "s1";
    reported.assignedMs = 1000;
    reported.startedMs = 1005;
    reported.endedMs = 1100;
    reported.outcome = "failed";
    AttemptRecord lost = reported;
    lost.attempt = 2;
    lost.startedMs = 0;  // no report: the spore was lost
    lost.outcome = "node lost";
    lost.nodeLost = true;
    set.attempts = {reported, lost};
    REQUIRE(tasks.apply(set).ok());
    TaskRow row = storedTask(tasks, 100);
    REQUIRE(row.attempts.size() == 2);
    CHECK(row.attempts[0].startedMs == 1005);
    CHECK(row.attempts[1].startedMs == 0);
    dropVersion11(*db);
    REQUIRE(db->exec("PRAGMA user_version = 10").ok());
  }
  auto db = Db::open(t.path);  // migrates 10 -> 11: the rows stored before have no start
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  TaskRow row = storedTask(tasks, 100);
  REQUIRE(row.attempts.size() == 2);
  CHECK(row.attempts[0].startedMs == 0);
}

TEST_CASE("a version 9 database learns batch dependencies: its batches wait for none and are not held") {
  TempDb t;
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    TaskStore tasks(*db);
    addBatch(tasks, 1, 100, 2, 1000, {0, 0});
    addBatch(tasks, 2, 200, 1, std::nullopt, {});
    dropVersion10(*db);
    REQUIRE(db->exec("PRAGMA user_version = 9").ok());
  }
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  auto st = db->prepare("PRAGMA user_version");
  REQUIRE(st.ok());
  REQUIRE(*st->step());
  CHECK(st->getInt(0) == kSchemaVersion);
  st->reset();
  TaskStore tasks(*db);
  auto unfinished = tasks.unfinishedBatches();
  REQUIRE(unfinished.ok());
  REQUIRE(unfinished->size() == 1);
  CHECK_FALSE((*unfinished)[0].held);
  CHECK((*unfinished)[0].after.empty());
  CHECK(kept(tasks, 1) == std::array<std::uint64_t, 3>{2, 0, 0});
  // And it takes a batch with dependencies now.
  std::shared_ptr<std::vector<std::string>> keep;
  WriteSet set = batchWithTasks(3, 300, {"a"}, &keep);
  set.newBatches[0].after = {1};
  set.newBatches[0].afterDone = {2};
  set.newBatches[0].held = true;
  REQUIRE(tasks.apply(set).ok());
  CHECK((*tasks.batch(3))->afterDone == std::vector<std::uint64_t>{2});
}

TEST_CASE("a batch that names itself or a later batch as a dependency is a bug, and nothing of it is written") {
  TempDb t;
  auto db = Db::open(t.path);
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  std::shared_ptr<std::vector<std::string>> keep;
  WriteSet set = batchWithTasks(5, 500, {"a"}, &keep);
  set.newBatches[0].after = {5};
  CHECK_THROWS(tasks.apply(set));
  CHECK_FALSE(tasks.batch(5)->has_value());
}

TEST_CASE("results and attempts keep the bundle version that ran them, and a version 11 database learns the columns") {
  TempDb t;
  {
    auto db = Db::open(t.path);
    REQUIRE(db.ok());
    TaskStore tasks(*db);
    std::shared_ptr<std::vector<std::string>> keep;
    REQUIRE(tasks.apply(batchWithTasks(1, 100, {"a", "b"}, &keep)).ok());
    WriteSet set;
    AttemptRecord failed;
    failed.task = 100;
    failed.attempt = 1;
    failed.node = "s1";
    failed.outcome = "crashed";
    failed.bundle = "greeter";
    failed.bundleVersion = 3;
    AttemptRecord lost = failed;
    lost.attempt = 2;
    lost.outcome = "node lost";
    lost.bundle.clear();  // no report
    lost.bundleVersion = 0;
    set.attempts = {failed, lost};
    ResultRecord ok;
    ok.task = 100;
    ok.attempts = 3;
    ok.node = "s2";
    ok.output = "v2:a";
    ok.bundle = "greeter";
    ok.bundleVersion = 2;
    ResultRecord builtin;
    builtin.task = 101;
    builtin.attempts = 1;
    builtin.output = "b";
    set.results = {ok, builtin};
    REQUIRE(tasks.apply(set).ok());
    TaskRow row = storedTask(tasks, 100);
    REQUIRE(row.attempts.size() == 2);
    CHECK(row.attempts[0].bundle == "greeter");
    CHECK(row.attempts[0].bundleVersion == 3);
    CHECK(row.attempts[1].bundle.empty());
    CHECK(row.attempts[1].bundleVersion == 0);
    REQUIRE(row.result.has_value());
    CHECK(row.result->bundle == "greeter");
    CHECK(row.result->bundleVersion == 2);
    CHECK(row.batchRecord.id == 1);  // the columns after the result's are read where they are
    auto page = tasks.resultsPage(1, 0, 10);
    REQUIRE(page.ok());
    REQUIRE(page->size() == 2);
    CHECK((*page)[0].result.bundle == "greeter");
    CHECK((*page)[0].result.bundleVersion == 2);
    CHECK((*page)[0].result.output == "v2:a");
    CHECK((*page)[1].result.bundle.empty());
    CHECK_FALSE((*page)[1].retryOf.has_value());
    dropVersion12(*db);
    REQUIRE(db->exec("PRAGMA user_version = 11").ok());
  }
  auto db = Db::open(t.path);  // migrates 11 -> 12: the rows stored before name no bundle
  REQUIRE(db.ok());
  TaskStore tasks(*db);
  TaskRow row = storedTask(tasks, 100);
  REQUIRE(row.attempts.size() == 2);
  CHECK(row.attempts[0].bundle.empty());
  REQUIRE(row.result.has_value());
  CHECK(row.result->bundle.empty());
  CHECK(row.result->output == "v2:a");
}
