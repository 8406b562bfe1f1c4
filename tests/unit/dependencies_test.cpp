#include <doctest/doctest.h>

#include <map>

#include "mesh/routing/dependencies.h"

using namespace mesh::routing;

namespace {
// A fake nexus: batches by id; an id not in the map is unknown.
struct Known {
  std::map<std::uint64_t, BatchEnd> batches;
  BatchLookup lookup() {
    return [this](std::uint64_t id) {
      auto it = batches.find(id);
      return it == batches.end() ? BatchEnd{} : it->second;
    };
  }
  void running(std::uint64_t id, std::uint8_t stage = 0) {
    BatchEnd e;
    e.known = true;
    e.mrStage = stage;
    batches[id] = e;
  }
  void done(std::uint64_t id, std::uint64_t ok, std::uint64_t failed = 0, std::uint64_t cancelledTasks = 0,
            bool cancelled = false) {
    BatchEnd e;
    e.known = true;
    e.finished = true;
    e.total = ok + failed + cancelledTasks;
    e.succeeded = ok;
    e.failed = failed;
    e.cancelledTasks = cancelledTasks;
    e.cancelled = cancelled;
    e.mrStage = batches.count(id) ? batches[id].mrStage : 0;
    batches[id] = e;
  }
};
}  // namespace

TEST_CASE("a batch after one still running waits on it, and runs once it succeeded") {
  Known k;
  k.running(12);
  Verdict v = judgeDependencies({12}, {}, k.lookup());
  CHECK(v.kind == Verdict::Kind::kWait);
  CHECK(v.waitingFor == std::vector<std::uint64_t>{12});
  CHECK(v.wakeOn == std::vector<std::uint64_t>{12});
  k.done(12, 5);
  CHECK(judgeDependencies({12}, {}, k.lookup()).kind == Verdict::Kind::kRelease);
}

TEST_CASE("a batch after one that failed is cancelled with a reason that names it") {
  Known k;
  k.done(12, 2, 3);
  Verdict v = judgeDependencies({12}, {}, k.lookup());
  REQUIRE(v.kind == Verdict::Kind::kCancel);
  CHECK(v.why.rfind("batch 12 finished with 3 failed tasks; nothing of this batch ran", 0) == 0);
  k.done(13, 1, 0, 0, /*cancelled=*/true);
  CHECK(judgeDependencies({13}, {}, k.lookup()).why.rfind("batch 13 was cancelled;", 0) == 0);
  k.done(14, 1, 1, 2);
  CHECK(judgeDependencies({14}, {}, k.lookup()).why.rfind("batch 14 finished with 1 failed task and 2 cancelled tasks", 0) == 0);
}

TEST_CASE("after-done waits for the end whatever it is; a failed after cancels even while others run") {
  Known k;
  k.running(1);
  k.done(2, 0, 4);
  Verdict v = judgeDependencies({}, {1, 2}, k.lookup());
  CHECK(v.kind == Verdict::Kind::kWait);
  CHECK(v.waitingFor == std::vector<std::uint64_t>{1});
  k.done(1, 0, 0, 0, true);
  CHECK(judgeDependencies({}, {1, 2}, k.lookup()).kind == Verdict::Kind::kRelease);
  k.running(3);
  CHECK(judgeDependencies({2}, {3}, k.lookup()).kind == Verdict::Kind::kCancel);
}

TEST_CASE("an unknown dependency fails it") {
  Known k;
  Verdict v = judgeDependencies({99}, {}, k.lookup());
  REQUIRE(v.kind == Verdict::Kind::kCancel);
  CHECK(v.why.find("batch 99 does not exist") != std::string::npos);
  // After-done: an unknown batch has ended, as far as anyone will ever see.
  CHECK(judgeDependencies({}, {99}, k.lookup()).kind == Verdict::Kind::kRelease);
}

TEST_CASE("a map-reduce job is finished only when its reduce stage is, and fails when a stage does") {
  Known k;
  k.running(5, /*stage=*/1);
  CHECK(judgeDependencies({5}, {}, k.lookup()).wakeOn == std::vector<std::uint64_t>{5});
  // The map stage ended, its reduce stage not linked yet: still waiting on the job.
  k.done(5, 10);
  CHECK(k.batches[5].mrStage == 1);
  CHECK(judgeDependencies({5}, {}, k.lookup()).kind == Verdict::Kind::kWait);
  // Linked: the wait moves to the reduce stage, the named id stays the job's.
  k.batches[5].nextBatch = 6;
  k.running(6, 2);
  Verdict v = judgeDependencies({5}, {}, k.lookup());
  CHECK(v.kind == Verdict::Kind::kWait);
  CHECK(v.waitingFor == std::vector<std::uint64_t>{5});
  CHECK(v.wakeOn == std::vector<std::uint64_t>{6});
  k.done(6, 0, 1);
  v = judgeDependencies({5}, {}, k.lookup());
  REQUIRE(v.kind == Verdict::Kind::kCancel);
  CHECK(v.why.rfind("job 5: its reduce stage, batch 6 finished with 1 failed task", 0) == 0);
  CHECK(judgeDependencies({}, {5}, k.lookup()).kind == Verdict::Kind::kRelease);
  k.done(6, 1);
  CHECK(judgeDependencies({5}, {}, k.lookup()).kind == Verdict::Kind::kRelease);
  // A job that stopped at its map stage (a note, no reduce stage) has failed, and has ended.
  k.running(7, 1);
  k.done(7, 3);
  k.batches[7].note = "map task 0 returned malformed output: the reduce stage did not start";
  v = judgeDependencies({7}, {}, k.lookup());
  REQUIRE(v.kind == Verdict::Kind::kCancel);
  CHECK(v.why.rfind("job 7 stopped at its map stage: map task 0", 0) == 0);
  CHECK(judgeDependencies({}, {7}, k.lookup()).kind == Verdict::Kind::kRelease);
}

TEST_CASE("stage links that loop end as a failure, not a hang") {
  Known k;
  k.running(1, 1);
  k.done(1, 1);
  k.batches[1].nextBatch = 1;
  CHECK(judgeDependencies({1}, {}, k.lookup()).kind == Verdict::Kind::kCancel);
}

TEST_CASE("dependency lists are sorted, deduplicated, and an id in both is kept in after only") {
  std::vector<std::uint64_t> after{9, 3, 9}, done{3, 4, 4, 1};
  normalizeDependencies(after, done);
  CHECK(after == std::vector<std::uint64_t>{3, 9});
  CHECK(done == std::vector<std::uint64_t>{1, 4});
}
