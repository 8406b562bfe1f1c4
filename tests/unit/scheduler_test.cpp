#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <map>

#include "mesh/routing/scheduler.h"

using namespace mesh::routing;

namespace {
NodeInfo nodeInfo(const std::string& name, std::uint16_t slots, std::set<std::string> tags = {},
                  std::set<std::string> handlers = {"echo", "sleep"}) {
  NodeInfo n;
  n.key = name + "-key";
  n.name = name;
  n.slots = slots;
  n.tags = std::move(tags);
  n.handlers = std::move(handlers);
  return n;
}

BatchSpec spec(const std::string& handler = "echo", std::uint8_t priority = 0,
               std::vector<std::string> requiredTags = {}, std::uint8_t attempts = 3) {
  BatchSpec s;
  s.handler = handler;
  s.priority = priority;
  s.requiredTags = std::move(requiredTags);
  s.timeoutMs = 1000;
  s.maxAttempts = attempts;
  return s;
}

Batch& batchOf(Scheduler& s, std::uint64_t id, BatchSpec sp, int tasks, std::uint64_t firstTask) {
  Batch& b = s.addBatch(id, std::move(sp));
  for (int i = 0; i < tasks; ++i) s.addTask(b, firstTask + i, i, "p" + std::to_string(i));
  s.seal(b, tasks);
  return b;
}

Report ok(std::uint64_t task, std::uint8_t attempt) {
  Report r;
  r.task = task;
  r.attempt = attempt;
  r.status = Status::kOk;
  r.output = "out";
  r.durationUs = 1000;
  return r;
}

Report failed(std::uint64_t task, std::uint8_t attempt) {
  Report r = ok(task, attempt);
  r.status = Status::kFailed;
  r.error = "boom";
  return r;
}

std::size_t assignedTo(const std::vector<Assignment>& as, NodeId node) {
  for (auto& a : as) {
    if (a.node == node) return a.tasks.size();
  }
  return 0;
}
}  // namespace

TEST_CASE("a task requiring a tag runs only on a node with that tag") {
  Scheduler s(SchedulerConfig{});
  NodeId plain = s.addNode(nodeInfo("plain", 4));
  NodeId gpu = s.addNode(nodeInfo("gpu", 4, {"gpu"}));
  batchOf(s, 1, spec("echo", 0, {"gpu"}), 3, 100);
  auto as = s.dispatch(0, 0);
  CHECK(assignedTo(as, plain) == 0);
  CHECK(assignedTo(as, gpu) == 3);
}

TEST_CASE("a task requiring a tag nobody has stays queued and says why") {
  Scheduler s(SchedulerConfig{});
  s.addNode(nodeInfo("plain", 4));
  batchOf(s, 1, spec("echo", 0, {"tpu"}), 1, 100);
  CHECK(s.dispatch(0, 0).empty());
  const Task* t = s.task(100);
  REQUIRE(t != nullptr);
  CHECK(s.whyWaiting(*t, 0) == "no live spore has tag(s) tpu");
  CHECK(s.queuedTotal() == 1);
}

TEST_CASE("a batch whose handler no node offers says so") {
  Scheduler s(SchedulerConfig{});
  s.addNode(nodeInfo("plain", 4));
  batchOf(s, 1, spec("render"), 1, 100);
  s.dispatch(0, 0);
  CHECK(s.whyWaiting(*s.task(100), 0) == "no live spore offers handler 'render'");
  CHECK_FALSE(s.handlerOffered("render"));
  CHECK(s.handlerOffered("echo"));
}

TEST_CASE("a node never holds more than its slots plus the prefetch") {
  SchedulerConfig c;
  Scheduler s(c);
  NodeId n = s.addNode(nodeInfo("n", 2));
  batchOf(s, 1, spec(), 1000, 1);
  auto as = s.dispatch(0, 0);
  // No task of the batch measured yet: assumed long, so both slots are held by long tasks and
  // nothing is prefetched behind them.
  CHECK(assignedTo(as, n) == 2);
  CHECK(s.dispatch(0, 0).empty());
  // Fast tasks measured: the prefetch grows, but never past maxPrefetch.
  for (auto* t : as[0].tasks) {
    Report r = ok(t->id, 1);
    r.durationUs = 1;
    s.onReport(n, std::move(r), 0, 0);
  }
  std::size_t given = 0;
  for (int round = 0; round < 100; ++round) {
    auto more = s.dispatch(0, 0);
    if (more.empty()) break;
    given += assignedTo(more, n);
  }
  CHECK(given == 2 + c.maxPrefetch);
  CHECK(s.node(n)->inFlight == 2 + c.maxPrefetch);
  // Slow tasks: no prefetch behind them once they hold every slot.
  SchedulerConfig slow;
  Scheduler s2(slow);
  NodeId m = s2.addNode(nodeInfo("m", 2));
  batchOf(s2, 1, spec(), 100, 1);
  auto first = s2.dispatch(0, 0);
  for (auto* t : first[0].tasks) {
    Report r = ok(t->id, 1);
    r.durationUs = 10'000'000;
    s2.onReport(m, std::move(r), 0, 0);
  }
  CHECK(assignedTo(s2.dispatch(0, 0), m) == 2);
  CHECK(s2.dispatch(0, 0).empty());
}

namespace {
// Runs a batch of `count` tasks of `us` microseconds each to the end on whatever nodes there
// are, as a node would report them: afterwards the nodes are idle and have run short tasks.
void runShortBatch(Scheduler& s, std::uint64_t batch, int count, std::uint64_t firstTask, std::uint64_t us) {
  batchOf(s, batch, spec(), count, firstTask);
  for (int round = 0; round < count + 1; ++round) {
    auto as = s.dispatch(0, 0);
    if (as.empty()) break;
    for (auto& a : as) {
      for (auto* t : a.tasks) {
        Report r = ok(t->id, t->attempts);
        r.durationUs = us;
        s.onReport(a.node, std::move(r), 0, 0);
      }
    }
  }
  REQUIRE(s.runningTotal() == 0);
  REQUIRE(s.queuedTotal() == 0);
}
}  // namespace

TEST_CASE("long tasks after many short ones are spread over every free slot") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 2));
  NodeId b = s.addNode(nodeInfo("b", 2));
  runShortBatch(s, 1, 10000, 1, 20);
  batchOf(s, 2, spec("sleep"), 4, 20000);
  auto as = s.dispatch(0, 0);
  CHECK(assignedTo(as, a) == 2);
  CHECK(assignedTo(as, b) == 2);
}

TEST_CASE("no node is given a task beyond its slots while an eligible node has a free slot") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 2));
  NodeId b = s.addNode(nodeInfo("b", 2));
  NodeId c = s.addNode(nodeInfo("c", 2));
  runShortBatch(s, 1, 3000, 1, 10);
  // A batch whose tasks are known to be short, so the prefetch is large, and more tasks than
  // one turn gives one node.
  Batch& batch = batchOf(s, 2, spec(), 66, 5000);
  batch.avgTaskUs = 10;
  auto as = s.dispatch(0, 0);
  CHECK(assignedTo(as, a) >= 2);
  CHECK(assignedTo(as, b) >= 2);
  CHECK(assignedTo(as, c) >= 2);
  // And the prefetch is still there for throughput.
  CHECK(assignedTo(as, a) + assignedTo(as, b) + assignedTo(as, c) > 6);
}

TEST_CASE("a batch with no measured task counts as long, whatever its node ran before: nothing queues behind it") {
  Scheduler s(SchedulerConfig{});
  NodeId n = s.addNode(nodeInfo("n", 2));
  runShortBatch(s, 1, 200, 1, 5);  // the node ran microsecond tasks
  batchOf(s, 2, spec("sleep"), 40, 1000);
  CHECK(assignedTo(s.dispatch(0, 0), n) == 2);  // its slots, no prefetch
  CHECK(s.node(n)->longInFlight == 2);
  // Its first results say 200 ms a task: long still, so again just the slots that freed.
  for (std::uint64_t id : {1000, 1001}) {
    Report r = ok(id, 1);
    r.durationUs = 200'000;
    s.onReport(n, std::move(r), 0, 0);
  }
  CHECK(assignedTo(s.dispatch(0, 0), n) == 2);
  CHECK(s.node(n)->inFlight == 2);
  CHECK(s.dispatch(0, 0).empty());
}

TEST_CASE("a higher priority batch submitted after long low ones waits for the next free slot, then takes it first") {
  Scheduler s(SchedulerConfig{});
  NodeId n = s.addNode(nodeInfo("n", 2));
  runShortBatch(s, 1, 200, 1, 5);  // warm-up: echo tasks of a few microseconds
  batchOf(s, 2, spec("sleep", 0), 40, 1000);
  s.dispatch(0, 0);
  batchOf(s, 3, spec("sleep", 200), 2, 2000);
  // Both slots run long low tasks (none measured yet): nothing is prefetched behind them, not
  // even a higher priority task; it waits in the nexus for the first slot that frees.
  CHECK(s.dispatch(0, 0).empty());
  CHECK(s.node(n)->inFlight == 2);
  std::vector<std::uint64_t> order;  // batch of each task as it is assigned
  std::uint64_t nextLow = 1000;
  for (int round = 0; round < 50 && s.queuedTotal() + s.runningTotal() > 0; ++round) {
    // The oldest running task ends (200 ms), then the scheduler fills the room.
    std::uint64_t done = 0;
    for (std::uint64_t id = nextLow; id < 2002 && !done; ++id) {
      const Task* t = s.task(id);
      if (t && t->state == Task::State::kRunning) done = id;
    }
    REQUIRE(done != 0);
    if (done < 2000) nextLow = done + 1;
    Report r = ok(done, 1);
    r.durationUs = 200'000;
    s.onReport(n, std::move(r), 0, 0);
    for (auto& a : s.dispatch(0, 0)) {
      for (auto* t : a.tasks) order.push_back(t->batch->id);
    }
  }
  REQUIRE(order.size() == 38 + 2);
  // The high tasks take the first two slots that free, before any low one.
  CHECK(order[0] == 3);
  CHECK(order[1] == 3);
  CHECK(order[2] == 2);
}

TEST_CASE("a node on which a higher priority batch waits for room takes no lower priority task") {
  Scheduler s(SchedulerConfig{});
  NodeId n = s.addNode(nodeInfo("n", 2));
  // Low: 1 ms tasks, measured, so a prefetch of 10; it fills the node to 12.
  Batch& low = batchOf(s, 1, spec("echo", 0), 100, 1);
  low.avgTaskUs = 1000;
  REQUIRE(assignedTo(s.dispatch(0, 0), n) == 12);
  // High: nothing measured, prefetch 1. The low tasks count against it only up to the slots
  // (the spore starts the high one before the low ones queued there): its first task goes at
  // once, its second when the node has 1 high + at most 1 low in flight.
  batchOf(s, 2, spec("sleep", 9), 2, 500);
  auto first = s.dispatch(0, 0);
  REQUIRE(assignedTo(first, n) == 1);
  CHECK(first[0].tasks[0]->batch->id == 2);
  std::uint64_t id = 1;
  for (int i = 0; i < 10; ++i) {
    s.onReport(n, ok(id++, 1), 0, 0);
    CHECK(s.dispatch(0, 0).empty());  // the low batch does not take the room back
  }
  s.onReport(n, ok(id++, 1), 0, 0);  // 1 low, 1 high in flight
  auto as = s.dispatch(0, 0);
  REQUIRE(assignedTo(as, n) == 1);
  CHECK(as[0].tasks[0]->batch->id == 2);
  // Then the two high tasks (not measured: long) will hold both slots: the low batch
  // prefetches nothing behind them.
  CHECK(s.node(n)->longInFlight == 2);
  CHECK(s.node(n)->inFlight == 3);
  CHECK(s.dispatch(0, 0).empty());
}

TEST_CASE("tasks of a lower priority count against a higher one's room only up to the slots") {
  Scheduler s(SchedulerConfig{});
  NodeId n = s.addNode(nodeInfo("n", 2));
  Batch& low = batchOf(s, 1, spec("echo", 0), 100, 1);
  low.avgTaskUs = 1000;  // a prefetch of 10
  REQUIRE(assignedTo(s.dispatch(0, 0), n) == 12);
  batchOf(s, 2, spec("sleep", 9), 1, 500);
  REQUIRE(assignedTo(s.dispatch(0, 0), n) == 1);
  const Node& node = *s.node(n);
  CHECK(node.inFlight == 13);
  CHECK(s.ahead(node, 0) == 13);   // every task in flight
  CHECK(s.ahead(node, 9) == 3);    // its own, and the two low ones that may be running
  CHECK(s.ahead(node, 5) == 3);    // the same
  CHECK(s.ahead(node, 255) == 2);  // the low ones that may be running, whatever else is queued
  // A batch between them, measured short: the high task is long (not measured), so one slot is
  // short, a prefetch of 5 on top of the 2 slots, less those 3.
  Batch& mid = batchOf(s, 3, spec("echo", 5), 10, 800);
  mid.avgTaskUs = 1000;
  CHECK(s.shortSlots(node) == 1);
  CHECK(s.credit(node, mid) == 4);
  // Everything ends: the counts by priority go with it.
  for (int round = 0; round < 300 && s.queuedTotal() + s.runningTotal() > 0; ++round) {
    for (auto& a : s.dispatch(0, 0)) {
      for (auto* t : a.tasks) s.onReport(a.node, ok(t->id, t->attempts), 0, 0);
    }
    std::vector<std::uint64_t> running(node.running.begin(), node.running.end());
    for (auto id : running) s.onReport(n, ok(id, s.task(id)->attempts), 0, 0);
  }
  CHECK(node.inFlight == 0);
  CHECK(node.inFlightByPriority.empty());
}

TEST_CASE("a node never holds more than its slots plus max-prefetch tasks, whatever the priorities") {
  SchedulerConfig c;
  c.maxPrefetch = 4;
  Scheduler s(c);
  NodeId n = s.addNode(nodeInfo("n", 2));
  // Microsecond tasks at 20 levels of priority, submitted one level after the other: each
  // level alone would have room for its full prefetch over the lower ones' slots.
  for (std::uint64_t level = 0; level < 20; ++level) {
    Batch& b = batchOf(s, level + 1, spec("echo", static_cast<std::uint8_t>(level * 10)), 50, 1000 * (level + 1));
    b.avgTaskUs = 5;
    s.dispatch(0, 0);
    CHECK(s.node(n)->inFlight <= 2 + 4);
  }
  CHECK(s.node(n)->inFlight == 6);
  // Every task ends, a few at a time: the bound holds all the way, and everything runs.
  std::size_t done = 0;
  for (int round = 0; round < 2000 && s.queuedTotal() + s.runningTotal() > 0; ++round) {
    std::vector<std::uint64_t> running(s.node(n)->running.begin(), s.node(n)->running.end());
    for (std::size_t i = 0; i < running.size() && i < 3; ++i, ++done) {
      s.onReport(n, ok(running[i], s.task(running[i])->attempts), 0, 0);
    }
    s.dispatch(0, 0);
    REQUIRE(s.node(n)->inFlight <= 2 + 4);
  }
  CHECK(done == 20 * 50);
}

TEST_CASE("a higher priority batch that finds a node full waits for room, and no lower task takes it") {
  SchedulerConfig c;
  c.maxPrefetch = 4;
  Scheduler s(c);
  NodeId n = s.addNode(nodeInfo("n", 2));
  Batch& low = batchOf(s, 1, spec("echo", 0), 100, 1);
  low.avgTaskUs = 5;
  REQUIRE(assignedTo(s.dispatch(0, 0), n) == 6);
  batchOf(s, 2, spec("sleep", 9), 2, 500);
  CHECK(s.dispatch(0, 0).empty());  // 6 in flight: the node is at its bound
  s.onReport(n, ok(1, 1), 0, 0);
  auto as = s.dispatch(0, 0);
  REQUIRE(assignedTo(as, n) == 1);
  CHECK(as[0].tasks[0]->batch->id == 2);
  CHECK(s.node(n)->inFlight == 6);
}

TEST_CASE("a stopping node is given nothing more, and what it hands back is queued again uncharged") {
  SchedulerConfig c;
  c.quarantineAfter = 2;
  Scheduler s(c);
  NodeId a = s.addNode(nodeInfo("a", 1));
  // One attempt each, measured at 5 ms (short): one slot and a prefetch of one.
  batchOf(s, 1, spec("sleep", 0, {}, 1), 3, 10).avgTaskUs = 5000;
  REQUIRE(assignedTo(s.dispatch(0, 0), a) == 2);
  s.setLeaving(a);
  NodeId b = s.addNode(nodeInfo("b", 1));
  // Only b takes the third task.
  auto as = s.dispatch(0, 0);
  CHECK(assignedTo(as, a) == 0);
  REQUIRE(assignedTo(as, b) == 1);
  // a hands back the one it had not started (task 11, attempt 1): queued at once.
  CHECK_FALSE(s.giveBack(a, 11, 2, 0));  // not that attempt
  CHECK_FALSE(s.giveBack(b, 11, 1, 0));  // not held there
  CHECK(s.giveBack(a, 11, 1, 0));
  CHECK(s.task(11)->state == Task::State::kQueued);
  CHECK(s.node(a)->inFlight == 1);
  // Then it leaves with task 10 unfinished: back to the queue too. Neither is charged: with
  // one attempt each, both still run and succeed; handing back many times quarantines nothing.
  s.removeNode(a, 0, "stopped before its tasks ended", false);
  CHECK(s.task(10)->state == Task::State::kQueued);
  s.onReport(b, ok(12, 1), 0, 0);
  for (int round = 0; round < 10 && s.queuedTotal() + s.runningTotal() > 0; ++round) {
    for (auto& x : s.dispatch(0, 0)) {
      for (auto* t : x.tasks) {
        if (round < 3) {
          CHECK(s.giveBack(x.node, t->id, t->attempts, 0));
        } else {
          s.onReport(x.node, ok(t->id, t->attempts), 0, 0);
        }
      }
    }
  }
  CHECK(s.queuedTotal() + s.runningTotal() == 0);
  CHECK(s.counters().get("tasks_quarantined") == 0);
  CHECK(s.counters().get("tasks_failed") == 0);
  CHECK(s.counters().get("tasks_handed_back") >= 4);
}

TEST_CASE("a batch whose last queued task ends by a kept result leaves the dispatch turns when forgotten") {
  // After a nexus restart: the spore finished a task while the nexus was down and says so in
  // its hello; the task, queued again from the store, ends by that result without being
  // dispatched, its batch finishes and is forgotten. Dispatch must not visit it again (it did:
  // a freed batch in its priority's turn, and the nexus spun in dispatch).
  Scheduler s(SchedulerConfig{});
  NodeId n = s.addNode(nodeInfo("n", 1));
  batchOf(s, 1, spec("sleep", 0), 1, 10);
  batchOf(s, 2, spec("sleep", 9), 2, 20);
  s.adoptDone(n, {10});
  s.onReport(n, ok(10, 1), 0, 0);
  auto fx = s.takeEffects();
  REQUIRE(fx.finals.size() == 1);
  s.markDurable(1, Status::kOk, 1);
  CHECK(s.batchesInTurns() == 2);  // batch 1 has no task queued, but no dispatch has seen that
  s.forget(1);
  CHECK(s.batch(1) == nullptr);
  CHECK(s.batchesInTurns() == 1);
  auto as = s.dispatch(0, 0);
  REQUIRE(assignedTo(as, n) == 1);
  CHECK(as[0].tasks[0]->batch->id == 2);
  // Another batch at the forgotten one's priority is dispatched as usual.
  batchOf(s, 3, spec("sleep", 0), 1, 30);
  s.onReport(n, ok(as[0].tasks[0]->id, 1), 0, 0);
  for (int round = 0; round < 5 && s.queuedTotal() + s.runningTotal() > 0; ++round) {
    for (auto& a : s.dispatch(0, 0)) {
      for (auto* t : a.tasks) s.onReport(a.node, ok(t->id, t->attempts), 0, 0);
    }
  }
  CHECK(s.queuedTotal() + s.runningTotal() == 0);
}

TEST_CASE("a lost node's tasks leave no count by priority behind") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 2));
  batchOf(s, 1, spec("echo", 0), 20, 1).avgTaskUs = 1000;  // a prefetch of 10 on 2 slots, 5 on 1
  batchOf(s, 2, spec("echo", 7), 1, 100).avgTaskUs = 1000;  // short too: no slot held long
  REQUIRE(assignedTo(s.dispatch(0, 0), a) == 1 + 11);
  CHECK(s.node(a)->inFlightByPriority == std::map<std::uint8_t, std::uint32_t>{{0, 11}, {7, 1}});
  s.removeNode(a, 0, "test");
  NodeId b = s.addNode(nodeInfo("b", 1));
  auto as = s.dispatch(0, 0);
  REQUIRE(assignedTo(as, b) == 1 + 5);
  CHECK(as[0].tasks[0]->batch->id == 2);
  CHECK(s.node(b)->inFlightByPriority == std::map<std::uint8_t, std::uint32_t>{{0, 5}, {7, 1}});
  s.cancel(*s.batch(2), 0);
  CHECK(s.node(b)->inFlightByPriority == std::map<std::uint8_t, std::uint32_t>{{0, 5}});
  s.cancel(*s.batch(1), 0);
  CHECK(s.node(b)->inFlightByPriority.empty());
  CHECK(s.node(b)->inFlight == 0);
}

TEST_CASE("no task is prefetched behind long tasks that hold every slot of a node: the other node takes them all") {
  // The Celery complaint: two 600 s sleeps hold both slots of one spore, then 40,000 echo
  // tasks come. None may wait behind the sleeps while the other spore runs the rest.
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 2, {"long"}));
  NodeId b = s.addNode(nodeInfo("b", 2));
  batchOf(s, 1, spec("sleep", 0, {"long"}), 2, 1);
  REQUIRE(assignedTo(s.dispatch(0, 0), a) == 2);
  CHECK(s.node(a)->longInFlight == 2);
  CHECK(s.shortSlots(*s.node(a)) == 0);
  Batch& echo = batchOf(s, 2, spec("echo"), 40000, 1000);
  std::size_t onB = 0, mostOnB = 0;
  for (int round = 0; round < 100000 && s.batch(2)->queued > 0; ++round) {
    for (auto& x : s.dispatch(0, 0)) {
      REQUIRE(x.node == b);
      onB += x.tasks.size();
    }
    CHECK(s.node(a)->inFlight == 2);
    CHECK(s.credit(*s.node(a), echo) == 0);
    mostOnB = std::max<std::size_t>(mostOnB, s.node(b)->inFlight);
    std::vector<std::uint64_t> running(s.node(b)->running.begin(), s.node(b)->running.end());
    for (auto id : running) {
      Report r = ok(id, 1);
      r.durationUs = 20;
      s.onReport(b, std::move(r), 0, 0);
    }
  }
  CHECK(onB == 40000);
  CHECK(echo.succeeded == 40000);
  CHECK(mostOnB == 2 + SchedulerConfig{}.maxPrefetch);  // b still gets its full prefetch
  CHECK(s.node(a)->running.size() == 2);
}

TEST_CASE("a node with one slot held by a long task gets a prefetch sized by its other slot") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 2));
  batchOf(s, 1, spec("sleep"), 1, 1);  // not measured: long
  REQUIRE(assignedTo(s.dispatch(0, 0), a) == 1);
  Batch& echo = batchOf(s, 2, spec("echo"), 100, 100);
  echo.avgTaskUs = 1000;  // 1 ms: 5 per short slot
  const Node& n = *s.node(a);
  CHECK(s.shortSlots(n) == 1);
  CHECK(s.prefetch(n, echo) == 5);
  CHECK(s.credit(n, echo) == 1 + 5);  // the free slot and a prefetch for it
  CHECK(assignedTo(s.dispatch(0, 0), a) == 6);
  CHECK(n.longInFlight == 1);
  // The long task ends: both slots are short again, the prefetch is sized by both.
  s.onReport(a, ok(1, 1), 0, 0);
  CHECK(n.longInFlight == 0);
  CHECK(s.prefetch(n, echo) == 10);
  CHECK(assignedTo(s.dispatch(0, 0), a) == 6);  // 2 slots + 10, 6 in flight
  CHECK(n.inFlight == 12);
}

TEST_CASE("long counts stay right when a batch's average changes in flight, at results, timeouts and a lost node") {
  SchedulerConfig c;
  c.retryBaseMs = 10;
  c.deadlineGraceMs = 0;
  Scheduler s(c);
  NodeId a = s.addNode(nodeInfo("a", 2));
  Batch& b = batchOf(s, 1, spec(), 1000, 1);
  REQUIRE(assignedTo(s.dispatch(0, 0), a) == 2);  // tasks 1, 2: long (nothing measured)
  const Node* n = s.node(a);
  CHECK(n->longInFlight == 2);
  // Task 1 ends in 10 us: the batch is measured short; task 2 stays counted long until it ends.
  Report r = ok(1, 1);
  r.durationUs = 10;
  s.onReport(a, std::move(r), 0, 0);
  CHECK(b.avgTaskUs == 10);
  CHECK(n->longInFlight == 1);
  auto as = s.dispatch(0, 0);
  CHECK(assignedTo(as, a) == 1 + 256);  // the free slot, and a prefetch for one short slot
  CHECK(n->longInFlight == 1);
  s.onReport(a, ok(2, 1), 0, 0);  // the long one ends (its 1 ms keeps the average short)
  CHECK(n->longInFlight == 0);
  // The average turns long while short tasks are in flight: they end without a count to undo.
  b.avgTaskUs = 1e6;
  std::vector<std::uint64_t> running(n->running.begin(), n->running.end());
  for (std::size_t i = 0; i < running.size(); ++i) {
    Report x = ok(running[i], 1);
    x.durationUs = 1'000'000;
    if (i == 0) {
      x.status = Status::kFailed;  // a failure ends the attempt too (retried later)
      x.error = "boom";
    }
    s.onReport(a, std::move(x), 0, 0);
    CHECK(n->longInFlight == 0);
  }
  REQUIRE(n->inFlight == 0);
  // Now long: two of them, no prefetch.
  REQUIRE(assignedTo(s.dispatch(0, 0), a) == 2);
  CHECK(n->longInFlight == 2);
  // One times out on the node: it is released with its count.
  s.tick(1000, 0);
  CHECK(n->inFlight == 0);
  CHECK(n->longInFlight == 0);
  s.tick(5000, 0);  // the backoffs are over
  REQUIRE(assignedTo(s.dispatch(5000, 0), a) == 2);
  CHECK(n->longInFlight == 2);
  // The node is lost: its tasks go to another node, counted long there.
  s.removeNode(a, 0, "gone");
  NodeId other = s.addNode(nodeInfo("other", 3));
  REQUIRE(assignedTo(s.dispatch(5000, 0), other) == 3);
  CHECK(s.node(other)->longInFlight == 3);
  // Cancelled: nothing left counted.
  s.cancel(b, 0);
  CHECK(s.node(other)->inFlight == 0);
  CHECK(s.node(other)->longInFlight == 0);
}

TEST_CASE("higher priority batches are dispatched first") {
  Scheduler s(SchedulerConfig{});
  NodeId n = s.addNode(nodeInfo("n", 1));
  batchOf(s, 1, spec("echo", 1), 5, 100).avgTaskUs = 5000;  // short: a prefetch of one
  batchOf(s, 2, spec("echo", 9), 5, 200).avgTaskUs = 5000;
  auto as = s.dispatch(0, 0);
  REQUIRE(assignedTo(as, n) == 2);
  for (auto* t : as[0].tasks) CHECK(t->batch->id == 2);
}

TEST_CASE("batches of equal priority take turns") {
  SchedulerConfig c;
  c.dispatchChunk = 1;
  Scheduler s(c);
  s.addNode(nodeInfo("n", 4));
  batchOf(s, 1, spec(), 10, 100);
  batchOf(s, 2, spec(), 10, 200);
  auto as = s.dispatch(0, 0);
  REQUIRE(as.size() == 1);
  std::map<std::uint64_t, int> perBatch;
  for (auto* t : as[0].tasks) perBatch[t->batch->id]++;
  // 4 slots and no prefetch (nothing measured yet: long tasks): 4 tasks, shared in turns.
  CHECK(perBatch[1] + perBatch[2] == 4);
  CHECK(std::abs(perBatch[1] - perBatch[2]) <= 1);
}

TEST_CASE("the node with the lower load score gets the work") {
  SchedulerConfig c;
  c.dispatchChunk = 1;
  Scheduler s(c);
  NodeId busy = s.addNode(nodeInfo("busy", 1));
  NodeId idle = s.addNode(nodeInfo("idle", 1));
  s.updateLoad(busy, 95, 80);
  s.updateLoad(idle, 5, 10);
  batchOf(s, 1, spec(), 1, 100);
  auto as = s.dispatch(0, 0);
  CHECK(assignedTo(as, idle) == 1);
  CHECK(assignedTo(as, busy) == 0);
  CHECK(s.score(*s.node(busy)) == doctest::Approx(0.4 * 0.95 + 0.3 * 0.8));
}

TEST_CASE("a failed task is retried with backoff on another node, then fails for good") {
  SchedulerConfig c;
  c.retryBaseMs = 100;
  Scheduler s(c);
  NodeId a = s.addNode(nodeInfo("a", 1));
  NodeId b = s.addNode(nodeInfo("b", 1));
  batchOf(s, 1, spec("echo", 0, {}, 2), 1, 100);
  auto as = s.dispatch(0, 0);
  REQUIRE(as.size() == 1);
  NodeId first = as[0].node;
  s.onReport(first, failed(100, 1), 0, 0);
  auto fx = s.takeEffects();
  CHECK(fx.finals.empty());
  REQUIRE(fx.attempts.size() == 1);
  CHECK(fx.attempts[0].outcome == "failed");
  CHECK(s.dispatch(50, 0).empty());  // still backing off
  s.tick(100, 0);
  as = s.dispatch(100, 0);
  REQUIRE(as.size() == 1);
  CHECK(as[0].node == (first == a ? b : a));
  s.onReport(as[0].node, failed(100, 2), 100, 0);
  fx = s.takeEffects();
  REQUIRE(fx.finals.size() == 1);
  CHECK(fx.finals[0].status == Status::kFailed);
  CHECK(fx.finals[0].error.find("attempt 2 of 2") != std::string::npos);
  CHECK(fx.finishedBatches == std::vector<std::uint64_t>{1});
  CHECK(s.counters().get("tasks_retried") == 1);
}

TEST_CASE("a lost node's tasks are re-queued at once, and a task that keeps losing nodes is quarantined") {
  SchedulerConfig c;
  c.quarantineAfter = 3;
  Scheduler s(c);
  batchOf(s, 1, spec(), 1, 100);
  for (int round = 1; round <= 3; ++round) {
    NodeId n = s.addNode(nodeInfo("n" + std::to_string(round), 1));
    auto as = s.dispatch(0, 0);
    REQUIRE(assignedTo(as, n) == 1);
    s.removeNode(n, 0, "missed 3 heartbeats");
  }
  auto fx = s.takeEffects();
  CHECK(fx.attempts.size() == 2);
  REQUIRE(fx.finals.size() == 1);
  CHECK(fx.finals[0].status == Status::kQuarantined);
  CHECK(s.counters().get("tasks_quarantined") == 1);
}

TEST_CASE("a reconnection re-queues tasks without charging them toward quarantine") {
  SchedulerConfig c;
  c.quarantineAfter = 2;
  Scheduler s(c);
  batchOf(s, 1, spec(), 1, 100);
  for (int round = 0; round < 5; ++round) {
    NodeId n = s.addNode(nodeInfo("n", 1));
    REQUIRE(assignedTo(s.dispatch(0, 0), n) == 1);
    s.removeNode(n, 0, "reconnected", /*nodeFault=*/false);
  }
  auto fx = s.takeEffects();
  CHECK(fx.finals.empty());
  REQUIRE(fx.attempts.size() == 5);
  CHECK(fx.attempts[0].outcome == "node left");
  CHECK_FALSE(fx.attempts[0].nodeLost);
  CHECK(s.counters().get("nodes_lost") == 0);
  CHECK(s.task(100) != nullptr);
}

TEST_CASE("an adopted task keeps the attempt number its node runs") {
  Scheduler s(SchedulerConfig{});
  Batch& b = s.addBatch(1, spec());
  s.addTask(b, 100, 0, "p", /*attemptsMade=*/1);  // after a restart: one recorded attempt
  s.seal(b, 1);
  NodeId n = s.addNode(nodeInfo("n", 1));
  CHECK(s.adoptRunning(n, {{100, 2}}, 0).empty());  // the node runs attempt 2
  s.onReport(n, failed(100, 2), 0, 0);              // its failure counts as the current attempt
  auto fx = s.takeEffects();
  REQUIRE(fx.attempts.size() == 1);
  CHECK(fx.attempts[0].attempt == 2);
  CHECK(s.node(n)->inFlight == 0);
}

TEST_CASE("after a restart, attempts that ended without charge (left, recalled) are not failures") {
  Scheduler s(SchedulerConfig{});
  BatchSpec sp = spec();
  sp.maxAttempts = 3;
  Batch& b = s.addBatch(1, sp);
  // Two recorded attempts, both handed back uncharged (a recall, a spore that stopped).
  s.addTask(b, 100, 0, "p", /*attemptsMade=*/2, /*nodesLost=*/2, /*reconnects=*/2);
  s.seal(b, 1);
  NodeId n = s.addNode(nodeInfo("n", 1));
  REQUIRE(assignedTo(s.dispatch(0, 0), n) == 1);
  s.onReport(n, failed(100, 3), 0, 0);  // its first real failure: retried, not final
  auto fx = s.takeEffects();
  CHECK(fx.finals.empty());
  REQUIRE(fx.attempts.size() == 1);
  CHECK(fx.attempts[0].outcome == "failed");
  // A charged loss of the node now is its first: no quarantine.
  s.tick(1'000'000, 0);  // its backoff is over
  REQUIRE(assignedTo(s.dispatch(1'000'000, 0), n) == 1);
  s.removeNode(n, 0, "silent");
  CHECK(s.takeEffects().finals.empty());
}

TEST_CASE("the first result wins and a late duplicate is dropped") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 1));
  batchOf(s, 1, spec(), 1, 100);
  s.dispatch(0, 0);
  s.removeNode(a, 0, "silent");          // re-queued
  NodeId b = s.addNode(nodeInfo("b", 1));
  auto as = s.dispatch(0, 0);
  REQUIRE(assignedTo(as, b) == 1);
  // The "dead" node comes back (a new hello, the same key) with a valid result: it ran an
  // earlier attempt, and its result is the first, so it wins.
  NodeId a2 = s.addNode(nodeInfo("a", 1));
  s.onReport(a2, ok(100, 1), 0, 0);
  auto fx = s.takeEffects();
  REQUIRE(fx.finals.size() == 1);
  REQUIRE(fx.cancels.size() == 1);
  CHECK(fx.cancels[0].first == b);
  // The second result for the same task is dropped and counted.
  s.onReport(b, ok(100, 2), 0, 0);
  CHECK(s.takeEffects().finals.empty());
  CHECK(s.counters().get("results_duplicate") == 1);
  CHECK(s.node(b)->inFlight == 0);
}

TEST_CASE("a late result records when its own attempt was assigned, not the re-send's time") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 1));
  batchOf(s, 1, spec(), 2, 100).avgTaskUs = 5000;  // short: a prefetch of one
  REQUIRE(assignedTo(s.dispatch(0, 1000), a) == 2);  // to a at 1000 (a slot and a prefetch)
  s.removeNode(a, 0, "silent");
  NodeId b = s.addNode(nodeInfo("b", 2));
  REQUIRE(assignedTo(s.dispatch(0, 5000), b) == 2);  // both to b at 5000
  s.takeEffects();
  NodeId a2 = s.addNode(nodeInfo("a", 1));
  s.onReport(a2, ok(100, 1), 0, 6000);
  auto fx = s.takeEffects();
  REQUIRE(fx.finals.size() == 1);
  CHECK(fx.finals[0].node == "a");
  CHECK(fx.finals[0].assignedMs == 1000);
  // A spore that says in its hello that it finished a task assigned before a nexus restart:
  // when that was is not known.
  NodeId c = s.addNode(nodeInfo("c", 1));
  s.adoptDone(c, {101});
  s.onReport(c, ok(101, 1), 0, 7000);
  fx = s.takeEffects();
  REQUIRE(fx.finals.size() == 1);
  CHECK(fx.finals[0].node == "c");
  CHECK(fx.finals[0].assignedMs == 0);
}

TEST_CASE("finished attempts leave no deadline behind") {
  Scheduler s(SchedulerConfig{});
  NodeId n = s.addNode(nodeInfo("n", 4));
  batchOf(s, 1, spec(), 1000, 1);
  for (int round = 0; round < 1000; ++round) {
    auto as = s.dispatch(0, 0);
    if (as.empty()) break;
    CHECK(s.deadlinesTracked() == as[0].tasks.size());
    for (auto* t : as[0].tasks) s.onReport(n, ok(t->id, 1), 0, 0);
    CHECK(s.deadlinesTracked() == 0);
  }
  CHECK(s.tasksInMemory() == 0);
  s.removeNode(n, 0, "gone");
  CHECK(s.deadlinesTracked() == 0);
}

TEST_CASE("an attempt past its deadline is expired and retried") {
  SchedulerConfig c;
  c.deadlineGraceMs = 500;
  c.retryBaseMs = 10;
  Scheduler s(c);
  NodeId a = s.addNode(nodeInfo("a", 1));
  batchOf(s, 1, spec(), 1, 100);  // timeout 1000 ms
  s.dispatch(0, 0);
  s.tick(1499, 0);
  CHECK(s.takeEffects().attempts.empty());
  s.tick(1500, 0);
  auto fx = s.takeEffects();
  REQUIRE(fx.attempts.size() == 1);
  CHECK(fx.attempts[0].outcome == "timed out");
  REQUIRE(fx.cancels.size() == 1);
  CHECK(fx.cancels[0].first == a);
  CHECK(s.node(a)->inFlight == 0);
}

TEST_CASE("cancelling a batch ends every task and tells nodes to stop running ones") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 1));
  Batch& b = batchOf(s, 1, spec(), 5, 100);
  b.avgTaskUs = 5000;  // short: one slot and a prefetch of one
  s.dispatch(0, 0);
  CHECK(s.cancel(b, 0) == 5);
  auto fx = s.takeEffects();
  CHECK(fx.finals.size() == 5);
  CHECK(fx.cancels.size() == 2);
  CHECK(s.node(a)->inFlight == 0);
  CHECK(s.queuedTotal() == 0);
  CHECK(s.runningTotal() == 0);
  CHECK(s.dispatch(0, 0).empty());
}

TEST_CASE("an open batch cancelled after all its tasks succeeded ends none, and its progress says cancelled") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 4));
  Batch& b = s.addBatch(1, spec());
  for (int i = 0; i < 3; ++i) s.addTask(b, 100 + i, i, "p");
  for (auto& as : s.dispatch(0, 0)) {
    for (auto* t : as.tasks) s.onReport(a, ok(t->id, 1), 0, 0);
  }
  CHECK(s.takeEffects().finals.size() == 3);
  CHECK_FALSE(s.progress(b).batchCancelled);
  s.seal(b, 3);  // as the nexus seals an open batch before it cancels it
  CHECK(s.cancel(b, 0) == 0);
  auto fx = s.takeEffects();
  CHECK(fx.finals.empty());
  CHECK(fx.finishedBatches == std::vector<std::uint64_t>{1});
  for (int i = 0; i < 3; ++i) s.markDurable(1, Status::kOk, 1);
  auto p = s.progress(b);
  CHECK(p.finished);
  CHECK(p.batchCancelled);
  CHECK(p.cancelled == 0);
  CHECK(p.succeeded == 3);
}

TEST_CASE("withdrawing a batch drops its tasks and their results without a trace") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 2));  // 2 slots plus prefetch: some run, some stay queued
  batchOf(s, 1, spec(), 6, 100);
  Batch& other = batchOf(s, 2, spec(), 1, 200);
  auto as = s.dispatch(0, 0);
  REQUIRE(!as.empty());
  std::uint64_t done = as[0].tasks[0]->id;
  REQUIRE(as[0].tasks[0]->batch->id == 1);
  s.onReport(a, ok(done, 1), 0, 0);  // one ended already: its result is an effect not yet taken
  std::uint64_t running = 0;  // of batch 1
  for (std::uint64_t id = 100; id < 106; ++id) {
    const Task* t = s.task(id);
    if (t && t->state == Task::State::kRunning) ++running;
  }
  REQUIRE(running >= 1);
  CHECK(s.withdraw(1) == 5);
  auto fx = s.takeEffects();
  CHECK(fx.finals.empty());
  CHECK(fx.finishedBatches.empty());
  CHECK(fx.cancels.size() == running);  // each of its running tasks is stopped on its node
  for (auto& [node, task] : fx.cancels) CHECK((node == a && task >= 100 && task < 106));
  CHECK(s.batch(1) == nullptr);
  CHECK(s.task(101) == nullptr);
  CHECK(s.queuedTotal() + s.runningTotal() == 1);  // the other batch's task
  CHECK(s.node(a)->inFlight == s.runningTotal());
  // A late report of a withdrawn task is a duplicate; the other batch still runs and finishes.
  s.onReport(a, ok(102, 1), 0, 0);
  s.dispatch(0, 0);
  REQUIRE(s.task(200)->state == Task::State::kRunning);
  s.onReport(a, ok(200, 1), 0, 0);
  fx = s.takeEffects();
  REQUIRE(fx.finals.size() == 1);
  CHECK(fx.finals[0].task == 200);
  CHECK(fx.finals[0].index == 0);
  CHECK(fx.finishedBatches == std::vector<std::uint64_t>{other.id});
  CHECK(s.withdraw(1) == 0);
}

TEST_CASE("a reconnecting node keeps the tasks it still runs") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 2));
  batchOf(s, 1, spec(), 2, 100);
  s.dispatch(0, 0);
  s.removeNode(a, 0, "reconnected");
  NodeId a2 = s.addNode(nodeInfo("a", 2));
  auto unknown = s.adoptRunning(a2, {{100, 1}, {555, 1}}, 0);
  CHECK(unknown == std::vector<std::uint64_t>{555});
  s.onReport(a2, ok(100, 1), 0, 0);
  auto fx = s.takeEffects();
  CHECK(fx.finals.size() == 1);
  CHECK(s.task(101) != nullptr);
}

TEST_CASE("progress counts only what the store has committed") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 2));
  Batch& b = batchOf(s, 1, spec(), 2, 100);
  s.dispatch(0, 0);
  s.onReport(a, ok(100, 1), 0, 0);
  s.onReport(a, ok(101, 1), 0, 0);
  auto fx = s.takeEffects();
  CHECK(fx.finishedBatches == std::vector<std::uint64_t>{1});
  CHECK_FALSE(s.progress(b).finished);
  s.markDurable(1, Status::kOk, 2);
  CHECK(s.progress(b).finished);
  CHECK(s.progress(b).succeeded == 2);
  s.forget(1);
  CHECK(s.batch(1) == nullptr);
}

TEST_CASE("a result for a task never assigned to the sender is dropped and counted") {
  Scheduler s(SchedulerConfig{});
  NodeId plain = s.addNode(nodeInfo("plain", 1));
  batchOf(s, 1, spec("echo", 0, {"gpu"}), 2, 100);  // no node has gpu: both stay queued
  batchOf(s, 2, spec(), 3, 200).avgTaskUs = 5000;  // short: a prefetch of one
  auto as = s.dispatch(0, 0);
  REQUIRE(assignedTo(as, plain) == 2);  // 200 and 201 (one slot, one prefetched); 202 queued
  s.onReport(plain, ok(100, 1), 0, 0);  // needs a tag it lacks
  s.onReport(plain, ok(202, 1), 0, 0);  // queued, never sent to it
  NodeId other = s.addNode(nodeInfo("other", 1));
  s.onReport(other, ok(200, 1), 0, 0);  // running on another node
  auto fx = s.takeEffects();
  CHECK(fx.finals.empty());
  CHECK(fx.cancels.empty());
  CHECK(s.counters().get("results_unassigned") == 3);
  CHECK(s.task(100)->state == Task::State::kQueued);
  CHECK(s.task(200)->node == plain);
  // The node running it may report it.
  s.onReport(plain, ok(200, 1), 0, 0);
  CHECK(s.takeEffects().finals.size() == 1);
}

TEST_CASE("a task a node finished while away is accepted from it after adoptDone, and only then") {
  Scheduler s(SchedulerConfig{});
  batchOf(s, 1, spec(), 2, 100);
  batchOf(s, 2, spec("echo", 0, {"gpu"}), 1, 300);
  NodeId a = s.addNode(nodeInfo("a", 1));
  s.adoptDone(a, {100, 300, 999});  // 300 needs gpu; 999 does not exist
  CHECK(s.counters().get("tasks_done_adopted") == 1);
  s.onReport(a, ok(100, 1), 0, 0);
  s.onReport(a, ok(300, 1), 0, 0);
  s.onReport(a, ok(101, 1), 0, 0);
  auto fx = s.takeEffects();
  REQUIRE(fx.finals.size() == 1);
  CHECK(fx.finals[0].task == 100);
  CHECK(fx.finals[0].node == "a");      // named by the sender's hello
  CHECK(fx.finals[0].attempts == 1);    // the spore's attempt, not the restarted nexus's 0
  CHECK(s.counters().get("results_unassigned") == 2);
  CHECK(s.queuedTotal() == 2);
}

TEST_CASE("an adopted task's assign time is its adoption") {
  Scheduler s(SchedulerConfig{});
  batchOf(s, 1, spec(), 1, 100);
  NodeId a = s.addNode(nodeInfo("a", 1));
  CHECK(s.adoptRunning(a, {{100, 2}}, 0, 1'700'000'123'456).empty());
  s.onReport(a, ok(100, 2), 0, 1'700'000'124'000);
  auto fx = s.takeEffects();
  REQUIRE(fx.finals.size() == 1);
  CHECK(fx.finals[0].assignedMs == 1'700'000'123'456);
  CHECK(fx.finals[0].attempts == 2);
}

TEST_CASE("a task adopted under an attempt given up since runs under the nexus's next number, and its failure counts") {
  Scheduler s(SchedulerConfig{});
  batchOf(s, 1, spec("echo", 0, {}, 5), 1, 100);
  NodeId a = s.addNode(nodeInfo("a", 1));
  REQUIRE(assignedTo(s.dispatch(0, 0), a) == 1);  // 100 runs on a under attempt 1
  s.removeNode(a, 0, "went silent");          // a flaky link: a is declared lost, but runs on
  NodeId b = s.addNode(nodeInfo("b", 1));
  REQUIRE(assignedTo(s.dispatch(0, 0), b) == 1);  // attempt 2 on b
  s.removeNode(b, 0, "went silent");
  s.removeNode(b, 0, "again");                 // (a no-op)
  REQUIRE(s.task(100)->state == Task::State::kQueued);
  const std::uint8_t nexusAttempt = s.task(100)->attempts;
  NodeId a2 = s.addNode(nodeInfo("a", 1));     // a comes back, still running attempt 1
  std::vector<std::uint64_t> behind;
  CHECK(s.adoptRunning(a2, {{100, 1}}, 0, 0, &behind).empty());
  CHECK(behind == std::vector<std::uint64_t>{100});  // to be assigned again under the nexus's next number
  CHECK(s.task(100)->attempts == nexusAttempt + 1);
  CHECK(s.task(100)->state == Task::State::kRunning);
  // Told its attempt, the spore reports the failure under it: counted, not dropped as stale.
  s.onReport(a2, failed(100, nexusAttempt + 1), 0, 0);
  CHECK(s.counters().get("results_stale_dropped") == 0);
  CHECK(s.task(100)->state != Task::State::kRunning);
  // Adopted under the nexus's own attempt (or a newer one): nothing to tell.
  Scheduler t(SchedulerConfig{});
  batchOf(t, 1, spec(), 1, 100);
  NodeId c = t.addNode(nodeInfo("c", 1));
  behind.clear();
  CHECK(t.adoptRunning(c, {{100, 2}}, 0, 0, &behind).empty());
  CHECK(behind.empty());
}

TEST_CASE("a node replaced by a new connection: the tasks it still holds are not charged, the others are") {
  SchedulerConfig c;
  c.quarantineAfter = 1;
  Scheduler s(c);
  batchOf(s, 1, spec(), 2, 100);
  NodeId a = s.addNode(nodeInfo("a", 2));
  REQUIRE(assignedTo(s.dispatch(0, 0), a) == 2);
  s.replaceNode(a, 0, {100});  // the new connection's hello lists 100 only: 101 died with it
  CHECK(s.task(100)->state == Task::State::kQueued);  // a reconnection: not charged
  CHECK(s.task(100)->nodesLost == s.task(100)->reconnects);
  CHECK(s.task(101) == nullptr);                      // charged: quarantined at the first loss
  auto fx = s.takeEffects();
  REQUIRE(fx.finals.size() == 1);
  CHECK(fx.finals[0].task == 101);
  CHECK(fx.finals[0].status == Status::kQuarantined);
  CHECK(fx.finals[0].error.find("restarted, without this task") != std::string::npos);
  CHECK(s.counters().get("nodes_restarted") == 1);
}

TEST_CASE("cancelling a batch whose tasks are all queued ends each of them, from its ready list") {
  Scheduler s(SchedulerConfig{});
  batchOf(s, 1, spec(), 100, 1000);
  batchOf(s, 2, spec(), 50, 5000);
  NodeId a = s.addNode(nodeInfo("a", 1));
  CHECK(s.cancel(*s.batch(1), 0) == 100);
  auto fx = s.takeEffects();
  CHECK(fx.finals.size() == 100);
  CHECK(s.counters().get("cancel_ready_mismatch") == 0);
  CHECK(s.queuedTotal() == 50);
  CHECK(s.cancel(*s.batch(1), 0) == 0);  // again: nothing left
  // With a task running, the whole walk: the running one is cancelled on its node too.
  REQUIRE(assignedTo(s.dispatch(0, 0), a) >= 1);
  const std::uint64_t left = s.queuedTotal();
  CHECK(s.cancel(*s.batch(2), 0) == 50);
  CHECK(s.takeEffects().cancels.size() == 50 - left);
  CHECK(s.queuedTotal() == 0);
}

TEST_CASE("a reconnecting node cannot adopt a task it is not eligible for") {
  Scheduler s(SchedulerConfig{});
  batchOf(s, 1, spec("echo", 0, {"gpu"}), 1, 100);
  NodeId a = s.addNode(nodeInfo("a", 2));
  auto unknown = s.adoptRunning(a, {{100, 1}}, 0);
  CHECK(unknown == std::vector<std::uint64_t>{100});
  CHECK(s.task(100)->state == Task::State::kQueued);
}

// ---- recall and drain ---------------------------------------------------------------------------

namespace {
// Two nodes of one slot; a batch of 12 sleep tasks measured at 1 ms (prefetch 5 per short slot):
// a holds tasks 1-6 (task 1 first: the one it runs), b holds 7-12 and finishes them at once, so
// the queue is empty and b has room.
struct BehindLong {
  Scheduler s;
  NodeId a, b;
  explicit BehindLong(SchedulerConfig c = {}) : s(c) {
    a = s.addNode(nodeInfo("a", 1));
    batchOf(s, 1, spec("sleep"), 12, 1).avgTaskUs = 1000;
    REQUIRE(assignedTo(s.dispatch(0, 0), a) == 6);
    b = s.addNode(nodeInfo("b", 1));
    REQUIRE(assignedTo(s.dispatch(0, 0), b) == 6);
    for (std::uint64_t id = 7; id <= 12; ++id) s.onReport(b, ok(id, 1), 10, 0);
    REQUIRE(s.batch(1)->queued == 0);
    // The first check finds task 1 at a's front: its time runs from here (t = 0).
    REQUIRE(s.recalls(0).recalls.empty());
  }
};
std::vector<std::uint64_t> idsOf(const Recall& r) {
  std::vector<std::uint64_t> ids;
  for (auto [id, attempt] : r.tasks) ids.push_back(id);
  return ids;
}
}  // namespace

TEST_CASE("the tasks behind one that runs far past its batch's average are recalled once, then run elsewhere") {
  BehindLong x;
  auto& s = x.s;
  // Under max(1 s, 20 x 1 ms) in flight: nothing.
  CHECK(s.recalls(999).recalls.empty());
  CHECK(s.node(x.a)->longInFlight == 0);
  // Past it: task 1 (the one a can be running) counts as long now, and 2-6 are recalled.
  auto check = s.recalls(1001);
  REQUIRE(check.recalls.size() == 1);
  const Recall& r = check.recalls[0];
  CHECK(r.node == x.a);
  CHECK_FALSE(r.drain);
  CHECK(r.longTask == 1);
  CHECK(idsOf(r) == std::vector<std::uint64_t>{2, 3, 4, 5, 6});
  for (auto [id, attempt] : r.tasks) CHECK(attempt == 1);
  CHECK(s.node(x.a)->longInFlight == 1);
  CHECK(s.shortSlots(*s.node(x.a)) == 0);
  CHECK(s.counters().get("recalls_sent") == 1);
  CHECK(s.counters().get("tasks_recalled") == 5);
  CHECK(s.counters().get("tasks_overdue") == 1);
  // One outstanding recall per node.
  CHECK(s.recalls(1200).recalls.empty());
  // a hands back 2, 3 and 4 (it had started 5 and 6, say); a task it does not hold and a wrong
  // attempt re-queue nothing and are counted.
  CHECK(s.handBack(x.a, {{2, 1}, {3, 1}, {4, 1}, {999, 1}, {5, 2}}, 0) == 3);
  CHECK(s.counters().get("handback_unheld") == 2);
  CHECK(s.counters().get("tasks_handed_back") == 3);
  CHECK(s.task(2)->state == Task::State::kQueued);
  CHECK(s.task(5)->state == Task::State::kRunning);
  auto fx = s.takeEffects();
  REQUIRE(fx.attempts.size() == 3);
  for (const auto& a : fx.attempts) {
    CHECK(a.outcome == "recalled");
    CHECK_FALSE(a.nodeLost);
  }
  // Answered, but 5 and 6 were recalled already: not again.
  CHECK(s.recalls(1300).recalls.empty());
  // The handed-back ones go to b; a, whose only slot is long, gets nothing.
  auto as = s.dispatch(1300, 0);
  CHECK(assignedTo(as, x.a) == 0);
  CHECK(assignedTo(as, x.b) == 3);
  // Uncharged: task 2 runs its second attempt, the first one counted as a node that left by no
  // fault of its own (not toward its attempts or quarantine).
  CHECK(s.task(2)->attempts == 2);
  CHECK(s.task(2)->nodesLost == 1);
  CHECK(s.task(2)->reconnects == 1);
}

TEST_CASE("no recall while a short slot is left, no other node has room, or the batch is not measured") {
  SUBCASE("a second slot still works through the queue") {
    Scheduler s(SchedulerConfig{});
    NodeId a = s.addNode(nodeInfo("a", 2));
    batchOf(s, 1, spec("sleep"), 20, 1).avgTaskUs = 1000;
    REQUIRE(assignedTo(s.dispatch(0, 0), a) == 12);  // 2 slots + 10
    NodeId b = s.addNode(nodeInfo("b", 1));
    (void)b;
    CHECK(s.recalls(0).recalls.empty());  // tasks 1 and 2 at the front
    // The second slot moves on every 100 ms; task 1 stays.
    for (std::uint64_t id = 2, t = 100; id <= 8; ++id, t += 100) {
      s.onReport(a, ok(id, 1), static_cast<std::int64_t>(t), 0);
      CHECK(s.recalls(static_cast<std::int64_t>(t) + 5).recalls.empty());
    }
    // At 1.5 s task 1 counts as long; task 9, assigned at 0 but at the front only from 705 ms on
    // (it waited in the spore's queue), does not. Its second slot still works: no recall.
    CHECK(s.recalls(1500).recalls.empty());
    CHECK(s.node(a)->longInFlight == 1);
    CHECK(s.counters().get("tasks_overdue") == 1);
    CHECK(s.task(1)->overdue);
    CHECK_FALSE(s.task(9)->overdue);
  }
  SUBCASE("every other node is full: recalled once one has room") {
    BehindLong x;
    auto& s = x.s;
    batchOf(s, 2, spec("sleep", 0, {}, 3), 20, 100).avgTaskUs = 1000;  // fills b: 1 + 5
    REQUIRE(assignedTo(s.dispatch(0, 0), x.b) == 6);
    CHECK(s.recalls(2000).recalls.empty());
    CHECK(s.counters().get("tasks_overdue") == 1);
    for (std::uint64_t id = 100; id < 106; ++id) s.onReport(x.b, ok(id, 1), 2000, 0);
    auto check = s.recalls(2100);
    REQUIRE(check.recalls.size() == 1);
    CHECK(idsOf(check.recalls[0]) == std::vector<std::uint64_t>{2, 3, 4, 5, 6});
  }
  SUBCASE("tasks of a few ms in flight half a second: no recall (the word count's maps)") {
    BehindLong x;
    x.s.batch(1)->avgTaskUs = 20'000;
    CHECK(x.s.recalls(500).recalls.empty());
    CHECK(x.s.counters().get("tasks_overdue") == 0);
  }
  SUBCASE("20 x the average when that is over 1 s") {
    BehindLong x;
    x.s.batch(1)->avgTaskUs = 90'000;  // 1.8 s
    CHECK(x.s.recalls(1700).recalls.empty());
    CHECK(x.s.recalls(1900).recalls.size() == 1);
  }
  SUBCASE("a task known long when given (an unmeasured batch) is no reason: nothing was prefetched behind it") {
    Scheduler s(SchedulerConfig{});
    NodeId a = s.addNode(nodeInfo("a", 1));
    batchOf(s, 1, spec("sleep"), 1, 1);  // not measured: long
    REQUIRE(assignedTo(s.dispatch(0, 0), a) == 1);
    NodeId b = s.addNode(nodeInfo("b", 1));
    batchOf(s, 2, spec("echo"), 3, 10).avgTaskUs = 1000;
    CHECK(assignedTo(s.dispatch(0, 0), b) == 3);  // a, whose only slot is long, gets none
    for (std::uint64_t id = 10; id < 13; ++id) s.onReport(b, ok(id, 1), 0, 0);
    CHECK(s.recalls(0).recalls.empty());
    CHECK(s.recalls(100'000).recalls.empty());
    CHECK(s.counters().get("tasks_overdue") == 0);
  }
}

TEST_CASE("a node that leaves a recall unanswered is sent no more, until it answers one") {
  BehindLong x;
  auto& s = x.s;
  REQUIRE(s.recalls(1001).recalls.size() == 1);
  auto late = s.recalls(1001 + SchedulerConfig{}.recallAnswerMs);
  CHECK(late.recalls.empty());
  CHECK(late.unanswered == std::vector<NodeId>{x.a});
  CHECK(s.counters().get("recalls_unanswered") == 1);
  CHECK(s.node(x.a)->recallsIgnored);
  // Even for tasks it is given later (here: the nexus drains it), nothing is sent to it.
  s.setDrained(x.a, true);
  CHECK(s.recalls(20'000).recalls.empty());
  CHECK(s.recalls(40'000).unanswered.empty());  // said once
  // A late answer: it knows recall after all.
  CHECK(s.handBack(x.a, {{2, 1}}, 0) == 1);
  CHECK_FALSE(s.node(x.a)->recallsIgnored);
}

TEST_CASE("a drained node is given nothing, what it holds is recalled once, and undraining gives it work again") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 2, {"gpu"}));
  NodeId b = s.addNode(nodeInfo("b", 2));
  Batch& any = batchOf(s, 1, spec("sleep"), 40, 1);
  any.avgTaskUs = 1000;
  auto as = s.dispatch(0, 0);
  std::size_t onA = assignedTo(as, a);
  REQUIRE(onA == 12);
  s.setDrained(a, true);
  Recall r = s.recallDrained(a, 0);
  CHECK(r.drain);
  CHECK(r.tasks.size() == onA);
  CHECK(s.recallDrained(a, 0).tasks.empty());  // never twice
  CHECK(s.recalls(100).recalls.empty());
  // It hands back all but the two it runs; they go to b, never to a.
  std::vector<std::pair<std::uint64_t, std::uint8_t>> back(r.tasks.begin() + 2, r.tasks.end());
  CHECK(s.handBack(a, back, 0) == onA - 2);
  for (int round = 0; round < 100 && s.batch(1)->queued > 0; ++round) {
    auto more = s.dispatch(0, 0);
    CHECK(assignedTo(more, a) == 0);
    for (auto id : std::vector<std::uint64_t>(s.node(b)->running.begin(), s.node(b)->running.end())) {
      s.onReport(b, ok(id, s.task(id)->attempts), 0, 0);
    }
  }
  CHECK(s.batch(1)->queued == 0);
  CHECK(s.node(a)->inFlight == 2);
  // A batch only a can run (tag gpu) waits, and says why.
  batchOf(s, 2, spec("echo", 0, {"gpu"}), 1, 100);
  CHECK(assignedTo(s.dispatch(0, 0), a) == 0);
  CHECK(s.whyWaiting(*s.task(100), 0).find("drained") != std::string::npos);
  // Undrained: it takes it.
  s.setDrained(a, false);
  CHECK(assignedTo(s.dispatch(0, 0), a) == 1);
}

TEST_CASE("a task handed back over and over is quarantined before its attempt number wraps") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 1));
  batchOf(s, 1, spec(), 1, 100);
  std::uint8_t last = 0;
  bool ended = false;
  for (int round = 0; round < 300 && !ended; ++round) {
    REQUIRE(assignedTo(s.dispatch(round, 0), a) == 1);
    const Task* t = s.task(100);
    REQUIRE(t->attempts > last);  // never wraps
    last = t->attempts;
    REQUIRE(s.giveBack(a, 100, t->attempts, 0));
    auto fx = s.takeEffects();
    ended = !fx.finals.empty();
  }
  CHECK(ended);
  CHECK(last >= kChargedHandBacksFrom);
  CHECK(last < kChargedHandBacksFrom + 5);
  CHECK(s.counters().get("hand_backs_charged") > 0);
}

TEST_CASE("a recall that could not be sent is made again") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 2));
  batchOf(s, 1, spec("sleep"), 4, 1).avgTaskUs = 1000;  // measured short: prefetched
  REQUIRE(assignedTo(s.dispatch(0, 0), a) == 4);
  s.setDrained(a, true);
  Recall r = s.recallDrained(a, 0);
  REQUIRE(r.tasks.size() == 4);
  CHECK(s.recallDrained(a, 0).tasks.empty());
  s.recallUnsent(r);  // the nexus could not send it
  CHECK(s.recallDrained(a, 0).tasks.size() == 4);
}

TEST_CASE("a drained node keeps and reports the tasks it adopts after a reconnect; those are recalled") {
  Scheduler s(SchedulerConfig{});
  batchOf(s, 1, spec(), 3, 100);
  NodeId a = s.addNode(nodeInfo("a", 1));
  CHECK(s.adoptRunning(a, {{100, 1}, {101, 1}}, 0).empty());
  s.setDrained(a, true);
  auto check = s.recalls(0);
  REQUIRE(check.recalls.size() == 1);
  CHECK(check.recalls[0].drain);
  CHECK(idsOf(check.recalls[0]) == std::vector<std::uint64_t>{100, 101});
  CHECK(s.handBack(a, {{101, 1}}, 0) == 1);
  s.onReport(a, ok(100, 1), 0, 0);
  CHECK(s.takeEffects().finals.size() == 1);
  CHECK(s.node(a)->inFlight == 0);
  CHECK(s.dispatch(0, 0).empty());  // nobody else: task 101 and 102 wait
  CHECK(s.whyWaiting(*s.task(101), 0).find("drained") != std::string::npos);
}

TEST_CASE("tasks handed back many times are never charged: no quarantine, no failure") {
  SchedulerConfig c;
  c.quarantineAfter = 1;
  Scheduler s(c);
  NodeId a = s.addNode(nodeInfo("a", 1));
  batchOf(s, 1, spec("sleep", 0, {}, 1), 1, 1);
  for (int i = 0; i < 10; ++i) {
    auto as = s.dispatch(0, 0);
    REQUIRE(assignedTo(as, a) == 1);
    CHECK(s.handBack(a, {{1, s.task(1)->attempts}}, 0) == 1);
  }
  REQUIRE(assignedTo(s.dispatch(0, 0), a) == 1);
  s.onReport(a, ok(1, 11), 0, 0);
  auto fx = s.takeEffects();
  REQUIRE(fx.finals.size() == 1);
  CHECK(fx.finals[0].status == Status::kOk);
  CHECK(s.counters().get("tasks_quarantined") == 0);
}

TEST_CASE("a node's assignment order stays proportional to its tasks in flight") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 2));
  batchOf(s, 1, spec("sleep"), 1, 1);  // a long one that stays in flight throughout
  REQUIRE(assignedTo(s.dispatch(0, 0), a) == 1);
  batchOf(s, 2, spec("echo"), 20000, 100).avgTaskUs = 1000;
  std::size_t most = 0;
  for (int round = 0; round < 100000 && s.batch(2)->queued > 0; ++round) {
    s.dispatch(0, 0);
    const Node& n = *s.node(a);
    most = std::max(most, n.order.size());
    CHECK(n.order.size() <= 2 * std::size_t{n.inFlight} + 64);
    for (auto id : std::vector<std::uint64_t>(n.running.begin(), n.running.end())) {
      if (id != 1) s.onReport(a, ok(id, 1), 0, 0);
    }
  }
  CHECK(s.batch(2)->queued == 0);
  CHECK(most <= 2 * (2 + 5) + 64);
  CHECK(s.node(a)->running.count(1) == 1);
}

// ---- held batches (mesh submit --after: the nexus holds a batch until its dependencies end) --

TEST_CASE("a held batch is never dispatched nor takes a turn, and runs once released") {
  Scheduler s(SchedulerConfig{});
  NodeId n = s.addNode(nodeInfo("a", 2));
  Batch& held = s.addBatch(1, spec());
  held.held = true;
  for (int i = 0; i < 1000; ++i) s.addTask(held, 100 + i, i, "p");
  s.seal(held, 1000);
  // Queued (it counts toward the nexus's queue limit), but out of the turns: dispatch never
  // looks at it.
  CHECK(s.queuedTotal() == 1000);
  CHECK(s.batchesInTurns() == 0);
  CHECK(s.dispatch(0, 0).empty());
  // A node joining or an undrain makes every batch active again: not a held one.
  s.addNode(nodeInfo("b", 1));
  s.setDrained(n, true);
  s.setDrained(n, false);
  CHECK(s.batchesInTurns() == 0);
  CHECK(s.dispatch(0, 0).empty());
  CHECK(s.whyWaiting(*s.task(100), 0).find("waits for other batches") != std::string::npos);
  Batch& other = batchOf(s, 2, spec(), 1, 5000);
  auto as = s.dispatch(0, 0);
  REQUIRE(as.size() == 1);
  CHECK(as[0].tasks[0]->batch == &other);
  s.release(held);
  CHECK(s.batchesInTurns() == 1);
  std::size_t given = 0;
  for (auto& a : s.dispatch(0, 0)) {
    for (Task* t : a.tasks) {
      CHECK(t->batch == &held);
      ++given;
    }
  }
  CHECK(given > 0);
}

TEST_CASE("a held batch cancelled ends every task with the batch's cancel reason") {
  Scheduler s(SchedulerConfig{});
  s.addNode(nodeInfo("a", 2));
  Batch& b = s.addBatch(1, spec());
  b.held = true;
  for (int i = 0; i < 3; ++i) s.addTask(b, 10 + i, i, "p");
  s.seal(b, 3);
  b.cancelWhy = "batch 7 finished with 1 failed task; nothing of this batch ran";
  CHECK(s.cancel(b, 5) == 3);
  auto fx = s.takeEffects();
  REQUIRE(fx.finals.size() == 3);
  for (const auto& f : fx.finals) {
    CHECK(f.status == Status::kCancelled);
    CHECK(f.error == b.cancelWhy);
  }
  CHECK(fx.finishedBatches == std::vector<std::uint64_t>{1});
  CHECK(s.queuedTotal() == 0);
  CHECK(s.batchesInTurns() == 0);
}

TEST_CASE("an empty held batch finishes when released or cancelled, not at its seal") {
  Scheduler s(SchedulerConfig{});
  Batch& b = s.addBatch(1, spec());
  b.held = true;
  s.seal(b, 0);
  CHECK(s.takeEffects().finishedBatches.empty());
  s.release(b);
  CHECK(s.takeEffects().finishedBatches == std::vector<std::uint64_t>{1});
  Batch& c = s.addBatch(2, spec());
  c.held = true;
  s.seal(c, 0);
  CHECK(s.cancel(c, 0) == 0);
  CHECK(s.takeEffects().finishedBatches == std::vector<std::uint64_t>{2});
}

TEST_CASE("a start a node reports before the result is kept for its running attempt only, and recorded when the attempt ends without a report") {
  SchedulerConfig c;
  c.deadlineGraceMs = 500;
  c.retryBaseMs = 10;
  Scheduler s(c);
  NodeId a = s.addNode(nodeInfo("a", 1));
  NodeId b = s.addNode(nodeInfo("b", 1));
  Batch& batch = batchOf(s, 1, spec(), 2, 100);  // timeout 1000 ms
  batch.avgTaskUs = 5'000'000;                    // long: one task per node
  s.dispatch(0, 0);
  NodeId onA = s.task(100)->node == a ? a : b;
  NodeId other = onA == a ? b : a;
  // Not its node, not its attempt, not a time, not a task: refused and nothing kept.
  CHECK_FALSE(s.noteStarted(other, 100, 1, 5000));
  CHECK_FALSE(s.noteStarted(onA, 100, 2, 5000));
  CHECK_FALSE(s.noteStarted(onA, 100, 1, 0));
  CHECK_FALSE(s.noteStarted(onA, 999, 1, 5000));
  CHECK(s.startedOf(100) == 0);
  REQUIRE(s.noteStarted(onA, 100, 1, 5000));
  CHECK(s.startedOf(100) == 5000);
  // The node is lost: the ended attempt carries the start, and the requeued task has none.
  s.removeNode(onA, 9000, "missed 3 heartbeats");
  auto fx = s.takeEffects();
  REQUIRE(fx.attempts.size() == 1);
  CHECK(fx.attempts[0].task == 100);
  CHECK(fx.attempts[0].startedMs == 5000);
  CHECK(s.startedOf(100) == 0);
  // Its next attempt expires at the deadline: the start reported for it is recorded too.
  NodeId c2 = s.addNode(nodeInfo("c", 1));
  s.dispatch(10, 0);
  NodeId now = s.task(100)->node;
  REQUIRE(now != kNoNode);
  REQUIRE(s.noteStarted(now, 100, 2, 7000));
  s.tick(10 + 1500, 0);
  fx = s.takeEffects();
  REQUIRE(fx.attempts.size() >= 1);
  bool seen = false;
  for (const auto& at : fx.attempts) {
    if (at.task == 100) {
      CHECK(at.attempt == 2);
      CHECK(at.startedMs == 7000);
      seen = true;
    }
  }
  CHECK(seen);
  (void)c2;
  // A cancelled running task's final record has the start its node reported (101 expired too:
  // it runs again after its backoff).
  s.tick(3000, 0);
  s.dispatch(3000, 0);
  REQUIRE(s.task(101) != nullptr);
  NodeId runner = s.task(101)->node;
  REQUIRE(runner != kNoNode);
  REQUIRE(s.noteStarted(runner, 101, s.task(101)->attempts, 6000));
  s.cancel(batch, 20000);
  fx = s.takeEffects();
  bool cancelled = false;
  for (const auto& f : fx.finals) {
    if (f.task == 101) {
      CHECK(f.status == Status::kCancelled);
      CHECK(f.startedMs == 6000);
      cancelled = true;
    }
  }
  CHECK(cancelled);
}

TEST_CASE("a node updated in place keeps what it runs and gets the batches its new handler unblocks") {
  Scheduler s(SchedulerConfig{});
  NodeId a = s.addNode(nodeInfo("a", 2, {}, {"echo", "sleep"}));
  batchOf(s, 1, spec("sleep"), 1, 100);
  REQUIRE(assignedTo(s.dispatch(0, 0), a) == 1);
  batchOf(s, 2, spec("count"), 1, 200);
  CHECK(s.dispatch(0, 0).empty());  // no node offers count
  s.updateNode(a, nodeInfo("a", 2, {}, {"echo", "sleep", "count"}));
  CHECK(s.node(a)->info.key == "a-key");
  CHECK(s.task(100)->node == a);  // still running there
  CHECK(assignedTo(s.dispatch(0, 0), a) == 1);
  CHECK(s.takeEffects().attempts.empty());
}
