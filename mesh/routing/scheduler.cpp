#include "mesh/routing/scheduler.h"

#include <algorithm>
#include <cmath>

#include "mesh/util/result.h"

namespace mesh::routing {

// A queued task costs one malloc chunk of 112 bytes on x86-64 (104 bytes + the chunk header);
// a field more moves it to the 128-byte chunk, +16 bytes per task for a batch of millions
// (benchmark E's RSS). Pack new fields into the padding, or say here why it is worth it.
static_assert(sizeof(void*) != 8 || sizeof(Task) <= 104, "routing::Task outgrew malloc's 112-byte chunk");

const char* statusName(Status s) {
  switch (s) {
    case Status::kOk: return "ok";
    case Status::kFailed: return "failed";
    case Status::kTimedOut: return "timed out";
    case Status::kCrashed: return "crashed";
    case Status::kUnknownHandler: return "unknown handler";
    case Status::kCancelled: return "cancelled";
    case Status::kQuarantined: return "quarantined";
  }
  return "?";
}

// ---- batches and tasks ---------------------------------------------------------------------

Batch& Scheduler::addBatch(std::uint64_t id, BatchSpec spec) {
  auto b = std::make_unique<Batch>();
  b->id = id;
  if (spec.timeoutMs == 0) spec.timeoutMs = config_.defaultTimeoutMs;
  if (spec.maxAttempts == 0) spec.maxAttempts = config_.defaultMaxAttempts;
  b->spec = std::move(spec);
  Batch& ref = *b;
  batches_[id] = std::move(b);
  return ref;
}

Batch* Scheduler::batch(std::uint64_t id) {
  auto it = batches_.find(id);
  return it == batches_.end() ? nullptr : it->second.get();
}

const Task* Scheduler::task(std::uint64_t id) const {
  auto it = tasks_.find(id);
  return it == tasks_.end() ? nullptr : it->second.get();
}

void Scheduler::addTask(Batch& b, std::uint64_t id, std::uint64_t index, std::string payload,
                        std::uint8_t attemptsMade, std::uint8_t nodesLost, std::uint8_t reconnects) {
  MESH_ASSERT(!tasks_.count(id), "task id added twice");
  auto t = std::make_unique<Task>();
  t->id = id;
  t->index = index;
  t->batch = &b;
  t->payload = std::move(payload);
  t->attempts = attemptsMade;
  t->nodesLost = nodesLost;
  t->reconnects = reconnects;
  tasks_[id] = std::move(t);
  b.ready.push_back(id);
  ++b.queued;
  ++queuedTotal_;
  makeActive(b);
}

void Scheduler::addFailedTask(Batch& b, std::uint64_t id, std::uint64_t index, std::string error,
                              std::int64_t nowWallMs) {
  MESH_ASSERT(!tasks_.count(id), "task id added twice");
  auto t = std::make_unique<Task>();
  t->id = id;
  t->index = index;
  t->batch = &b;
  Task& task = *t;
  tasks_[id] = std::move(t);
  finish(task, Status::kFailed, "", std::move(error), nowWallMs, 0, 0, 0);
}

void Scheduler::seal(Batch& b, std::uint64_t total) {
  b.sealed = true;
  b.total = total;
  // A held batch with no task left to end (an empty one) finishes when it is released.
  if (!b.held && b.succeeded + b.failed + b.cancelledCount == b.total) effects_.finishedBatches.push_back(b.id);
}

void Scheduler::restoreCounts(Batch& b, std::uint64_t succeeded, std::uint64_t failed, std::uint64_t cancelled) {
  b.succeeded = b.durableSucceeded = succeeded;
  b.failed = b.durableFailed = failed;
  b.cancelledCount = b.durableCancelled = cancelled;
}

void Scheduler::makeActive(Batch& b) {
  if (b.held || b.cancelled || b.queued == 0 || inActive_.count(&b)) return;
  inActive_.insert(&b);
  active_[b.spec.priority].push_back(&b);
}

void Scheduler::enqueueFront(Task& t) {
  t.state = Task::State::kQueued;
  t.node = kNoNode;
  t.batch->ready.push_front(t.id);
  ++t.batch->queued;
  ++queuedTotal_;
  makeActive(*t.batch);
}

Task* Scheduler::frontTask(Batch& b) {
  while (!b.ready.empty()) {
    auto it = tasks_.find(b.ready.front());
    if (it != tasks_.end() && it->second->state == Task::State::kQueued && it->second->batch == &b) {
      return it->second.get();
    }
    b.ready.pop_front();  // ended or moved since it was queued
  }
  return nullptr;
}

void Scheduler::release(Batch& b) {
  if (!b.held) return;
  b.held = false;
  makeActive(b);
  if (b.sealed && b.succeeded + b.failed + b.cancelledCount == b.total) effects_.finishedBatches.push_back(b.id);
}

std::uint64_t Scheduler::cancel(Batch& b, std::int64_t nowWallMs) {
  b.cancelled = true;
  const bool wasHeld = std::exchange(b.held, false);
  const std::string why = b.cancelWhy.empty() ? "cancelled by the client" : b.cancelWhy;
  std::vector<Task*> mine;
  // With none of its tasks in memory (a repeated cancel, or all of them ended), no need to
  // walk every task the scheduler holds; with all of them queued (a held batch, or one not
  // started), its `ready` list holds every one (and maybe ids that moved on: checked).
  if (b.queued + b.waiting + b.running == 0) {
    // nothing to walk
  } else if (b.running == 0 && b.waiting == 0) {
    for (std::uint64_t id : b.ready) {
      auto it = tasks_.find(id);
      if (it != tasks_.end() && it->second->batch == &b && it->second->state == Task::State::kQueued) {
        mine.push_back(it->second.get());
      }
    }
    std::sort(mine.begin(), mine.end());
    mine.erase(std::unique(mine.begin(), mine.end()), mine.end());
    if (mine.size() != b.queued) {
      // Not expected (every queued task is in `ready`): the whole walk, to end them all.
      counters_.add("cancel_ready_mismatch");
      mine.clear();
    }
  }
  if (mine.size() != b.queued + b.waiting + b.running) {
    mine.clear();
    for (auto& [id, t] : tasks_) {
      if (t->batch == &b) mine.push_back(t.get());
    }
  }
  std::sort(mine.begin(), mine.end(), [](Task* x, Task* y) { return x->id < y->id; });
  for (Task* t : mine) {
    if (t->state == Task::State::kRunning) {
      effects_.cancels.emplace_back(t->node, t->id);
      NodeId node = t->node;
      std::int64_t startedMs = detachFromNode(*t);
      finish(*t, Status::kCancelled, "", why, nowWallMs, startedMs, 0, node);
    } else {
      if (t->state == Task::State::kQueued) {
        --b.queued;
        --queuedTotal_;
      } else {
        --b.waiting;
        --queuedTotal_;
      }
      finish(*t, Status::kCancelled, "", why, nowWallMs, 0, 0, kNoNode);
    }
  }
  b.ready.clear();
  deactivate(b);
  counters_.add("tasks_cancelled", mine.size());
  // A held batch with no task to end (an empty one) did not finish at its seal: it does now.
  if (wasHeld && mine.empty() && b.sealed && b.succeeded + b.failed + b.cancelledCount == b.total) {
    effects_.finishedBatches.push_back(b.id);
  }
  return mine.size();
}

std::uint64_t Scheduler::withdraw(std::uint64_t batchId) {
  Batch* b = batch(batchId);
  if (!b) return 0;
  std::vector<std::uint64_t> mine;
  for (auto& [id, t] : tasks_) {
    if (t->batch == b) mine.push_back(id);
  }
  std::sort(mine.begin(), mine.end());
  for (std::uint64_t id : mine) {
    Task& t = *tasks_[id];
    if (t.state == Task::State::kRunning) {
      effects_.cancels.emplace_back(t.node, t.id);
      detachFromNode(t);
    } else if (t.state == Task::State::kQueued) {
      --b->queued;
      --queuedTotal_;
    } else {
      --b->waiting;
      --queuedTotal_;
    }
    tasks_.erase(id);
    formerHolders_.erase(id);
  }
  // Results and attempts of its tasks that ended already, not yet taken by the caller.
  auto& fx = effects_;
  fx.finals.erase(std::remove_if(fx.finals.begin(), fx.finals.end(), [&](const FinalResult& f) { return f.batch == batchId; }),
                  fx.finals.end());
  fx.finishedBatches.erase(std::remove(fx.finishedBatches.begin(), fx.finishedBatches.end(), batchId),
                           fx.finishedBatches.end());
  fx.attempts.erase(std::remove_if(fx.attempts.begin(), fx.attempts.end(),
                                   [&](const EndedAttempt& a) { return std::binary_search(mine.begin(), mine.end(), a.task); }),
                    fx.attempts.end());
  b->ready.clear();
  deactivate(*b);
  batches_.erase(batchId);
  return mine.size();
}

void Scheduler::markDurable(std::uint64_t batchId, Status status, std::uint64_t count) {
  Batch* b = batch(batchId);
  if (!b) return;
  if (status == Status::kOk) b->durableSucceeded += count;
  else if (status == Status::kCancelled) b->durableCancelled += count;
  else b->durableFailed += count;
}

Progress Scheduler::progress(const Batch& b) const {
  Progress p;
  p.total = b.total;
  p.sealed = b.sealed;
  p.queued = b.queued + b.waiting;
  p.running = b.running;
  p.succeeded = b.durableSucceeded;
  p.failed = b.durableFailed;
  p.cancelled = b.durableCancelled;
  p.finished = b.sealed && b.durableDone() >= b.total;
  p.batchCancelled = b.cancelled;
  return p;
}

void Scheduler::forget(std::uint64_t batchId) {
  Batch* b = batch(batchId);
  if (!b) return;
  MESH_ASSERT(b->queued == 0 && b->running == 0 && b->waiting == 0, "forgetting a batch with live tasks");
  // It may still be in its priority's turn: its last queued task ended without being dispatched
  // (a result the spore had kept over a nexus restart), and no dispatch has visited it since.
  deactivate(*b);
  batches_.erase(batchId);
}

void Scheduler::deactivate(Batch& b) {
  if (!inActive_.erase(&b)) return;
  auto level = active_.find(b.spec.priority);
  if (level == active_.end()) return;
  level->second.remove(&b);
  if (level->second.empty()) active_.erase(level);
}

std::string Scheduler::whyWaiting(const Task& t, std::int64_t nowMono) const {
  switch (t.state) {
    case Task::State::kRunning: return "";
    case Task::State::kWaiting:
      return "waiting " + std::to_string(std::max<std::int64_t>(0, t.notBeforeMono - nowMono)) +
             " ms before attempt " + std::to_string(t.attempts + 1) + " (backoff after a failure)";
    case Task::State::kQueued:
      if (t.batch->held) return "its batch waits for other batches to finish (mesh submit --after)";
      if (!t.batch->blockedWhy.empty()) return t.batch->blockedWhy;
      return explainBlocked(*t.batch);
  }
  return "";
}

// ---- nodes ---------------------------------------------------------------------------------

NodeId Scheduler::addNode(NodeInfo info) {
  NodeId id = nextNode_++;
  Node& n = nodes_[id];
  n.id = id;
  n.info = std::move(info);
  if (n.info.slots == 0) n.info.slots = 1;
  // A new node can unblock batches that found no eligible node.
  for (auto& [bid, b] : batches_) makeActive(*b);
  return id;
}

void Scheduler::updateNode(NodeId id, NodeInfo info) {
  Node* n = node(id);
  if (!n) return;
  info.key = n->info.key;
  if (info.slots == 0) info.slots = 1;
  n->info = std::move(info);
  // New handlers or tags can unblock batches that found no eligible node.
  for (auto& [bid, b] : batches_) makeActive(*b);
}

void Scheduler::updateLoad(NodeId id, double cpuPct, double memPct) {
  if (Node* n = node(id)) {
    n->cpuPct = std::clamp(cpuPct, 0.0, 100.0);
    n->memPct = std::clamp(memPct, 0.0, 100.0);
  }
}

Node* Scheduler::node(NodeId id) {
  auto it = nodes_.find(id);
  return it == nodes_.end() ? nullptr : &it->second;
}

void Scheduler::endAllOn(Node& n, std::int64_t nowWallMs,
                         const std::function<std::pair<std::string, bool>(std::uint64_t)>& how) {
  std::vector<std::uint64_t> running(n.running.begin(), n.running.end());
  std::sort(running.begin(), running.end());
  for (std::uint64_t tid : running) {
    auto it = tasks_.find(tid);
    if (it == tasks_.end()) continue;
    auto [why, charge] = how(tid);
    endAttempt(*it->second, Status::kCrashed, "spore " + n.info.name + " lost: " + why, 0, nowWallMs, true, nullptr,
               charge);
  }
  const NodeId id = n.id;
  nodes_.erase(id);  // n is gone from here on
}

void Scheduler::removeNode(NodeId id, std::int64_t nowWallMs, const std::string& why, bool nodeFault) {
  Node* n = node(id);
  if (!n) return;
  if (nodeFault) counters_.add("nodes_lost");
  endAllOn(*n, nowWallMs, [&](std::uint64_t) { return std::make_pair(why, nodeFault); });
}

void Scheduler::replaceNode(NodeId id, std::int64_t nowWallMs, const std::unordered_set<std::uint64_t>& stillHeld) {
  Node* n = node(id);
  if (!n) return;
  bool lostAny = false;
  endAllOn(*n, nowWallMs, [&](std::uint64_t tid) {
    const bool held = stillHeld.count(tid) > 0;
    lostAny = lostAny || !held;
    return std::make_pair(std::string(held ? "reconnected" : "restarted, without this task"), !held);
  });
  if (lostAny) counters_.add("nodes_restarted");
}

void Scheduler::setLeaving(NodeId id) {
  if (Node* n = node(id)) n->leaving = true;
}

void Scheduler::setDrained(NodeId id, bool drained) {
  Node* n = node(id);
  if (!n || n->drained == drained) return;
  n->drained = drained;
  // Batches that waited for it may have left their turn (no eligible node): back in.
  if (!drained) {
    for (auto& [bid, b] : batches_) makeActive(*b);
  }
}

bool Scheduler::giveBack(NodeId id, std::uint64_t task, std::uint8_t attempt, std::int64_t nowWallMs,
                         GiveBackWhy why) {
  auto it = tasks_.find(task);
  if (it == tasks_.end()) return false;
  Task& t = *it->second;
  if (t.state != Task::State::kRunning || t.node != id || t.attempts != attempt) return false;
  counters_.add("tasks_handed_back");
  bool recalled = why == GiveBackWhy::kRecalled;
  // Attempt numbers are 8 bits: a task handed back over and over (a spore that keeps taking it
  // and giving it back) is charged from kChargedHandBacksFrom on, so that quarantine ends it
  // long before its attempt number could wrap.
  bool charge = t.attempts >= kChargedHandBacksFrom;
  if (charge) counters_.add("hand_backs_charged");
  endAttempt(t, Status::kCrashed,
             "handed back by spore " + nodeName(id) + (recalled ? " (recalled)" : " (stopping)") + " before it started", 0,
             nowWallMs, true, nullptr, charge, recalled ? "recalled" : "node left");
  return true;
}

std::size_t Scheduler::handBack(NodeId id, const std::vector<std::pair<std::uint64_t, std::uint8_t>>& tasks,
                                std::int64_t nowWallMs) {
  Node* n = node(id);
  if (!n) return 0;
  n->recallSentMono = -1;
  n->recallsIgnored = false;  // it knows recall after all (a slow answer)
  counters_.add("handbacks");
  std::size_t back = 0;
  for (auto [task, attempt] : tasks) {
    if (giveBack(id, task, attempt, nowWallMs, GiveBackWhy::kRecalled)) {
      ++back;
    } else {
      counters_.add("handback_unheld");
    }
  }
  return back;
}

std::int64_t Scheduler::overdueUs(const Batch& b) const {
  if (b.avgTaskUs <= 0) return 0;
  return std::max<std::int64_t>(config_.overdueMinUs, static_cast<std::int64_t>(config_.overdueFactor * b.avgTaskUs));
}

bool Scheduler::liveOn(const Node& n, const std::pair<std::uint64_t, std::uint8_t>& entry) const {
  auto it = tasks_.find(entry.first);
  if (it == tasks_.end()) return false;
  const Task& t = *it->second;
  return t.state == Task::State::kRunning && t.node == n.id && t.attempts == entry.second;
}

bool Scheduler::roomElsewhere(const Node& n, const Batch& b, RoomByBatch& room) const {
  auto known = room.find(&b);
  if (known == room.end()) {
    // One pass over the nodes per batch and check: up to two nodes with room are enough to
    // answer for every node (a check that asked per node would cost nodes x nodes).
    std::vector<NodeId> with;
    for (const auto& [id, m] : nodes_) {
      if (eligible(m, b) && (freeSlots(m) > 0 || credit(m, b) > 0)) with.push_back(id);
      if (with.size() == 2) break;
    }
    known = room.emplace(&b, std::move(with)).first;
  }
  const auto& with = known->second;
  return with.size() == 2 || (with.size() == 1 && with[0] != n.id);
}

void Scheduler::collectRecall(Node& n, std::size_t from, RoomByBatch* room, Recall& r, std::int64_t nowMono) {
  for (std::size_t at = from; at < n.order.size(); ++at) {
    if (!liveOn(n, n.order[at])) continue;
    Task& t = *tasks_.at(n.order[at].first);
    if (t.recalled) continue;
    if (room && !roomElsewhere(n, *t.batch, *room)) continue;
    t.recalled = true;
    r.tasks.push_back(n.order[at]);
  }
  if (r.tasks.empty()) return;
  n.recallSentMono = nowMono;
  counters_.add("recalls_sent");
  counters_.add("tasks_recalled", r.tasks.size());
}

RecallCheck Scheduler::recalls(std::int64_t nowMono) {
  RecallCheck out;
  RoomByBatch room;  // nothing is dispatched during a check: room stays as found
  for (auto& [id, n] : nodes_) {
    if (n.recallSentMono >= 0) {
      if (nowMono - n.recallSentMono < config_.recallAnswerMs) continue;
      n.recallSentMono = -1;
      n.recallsIgnored = true;
      counters_.add("recalls_unanswered");
      out.unanswered.push_back(id);
      continue;
    }
    if (n.inFlight == 0) {
      n.order.clear();  // every entry is an ended attempt
      continue;
    }
    if (n.leaving || n.recallsIgnored) continue;
    while (!n.order.empty() && !liveOn(n, n.order.front())) n.order.pop_front();
    Recall r;
    r.node = id;
    if (n.drained) {
      r.drain = true;
      collectRecall(n, 0, nullptr, r, nowMono);
      if (!r.tasks.empty()) out.recalls.push_back(std::move(r));
      continue;
    }
    if (n.inFlight <= n.info.slots) continue;  // nothing can be waiting behind its running tasks
    // The node's first `slots` tasks are the ones it can be running: one of them far past its
    // batch's average counts as long from now on (no prefetch is sized by its slot).
    std::size_t at = 0, seen = 0;
    for (; at < n.order.size() && seen < n.info.slots; ++at) {
      if (!liveOn(n, n.order[at])) continue;
      ++seen;
      Task& t = *tasks_.at(n.order[at].first);
      if (t.frontSinceMono < 0) t.frontSinceMono = nowMono;
      if (!t.overdue && !t.heldLong) {
        std::int64_t limit = overdueUs(*t.batch);
        if (limit > 0 && (nowMono - t.frontSinceMono) * 1000 > limit) {
          t.overdue = true;
          t.heldLong = true;
          ++n.longInFlight;
          counters_.add("tasks_overdue");
        }
      }
      if (t.overdue && r.longTask == 0) r.longTask = t.id;
    }
    // Recall only behind a task that overran (not behind tasks known long when they were given:
    // nothing was prefetched behind those), and only when long tasks hold every slot: a short
    // slot still works through what is queued.
    if (r.longTask == 0 || shortSlots(n) > 0) continue;
    collectRecall(n, at, &room, r, nowMono);
    if (!r.tasks.empty()) out.recalls.push_back(std::move(r));
  }
  return out;
}

void Scheduler::recallUnsent(const Recall& r) {
  Node* n = node(r.node);
  if (!n) return;
  n->recallSentMono = -1;
  for (const auto& entry : r.tasks) {
    if (liveOn(*n, entry)) tasks_.at(entry.first)->recalled = false;
  }
}

Recall Scheduler::recallDrained(NodeId id, std::int64_t nowMono) {
  Recall r;
  r.node = id;
  r.drain = true;
  Node* n = node(id);
  if (!n || !n->drained) return r;
  collectRecall(*n, 0, nullptr, r, nowMono);
  return r;
}

double Scheduler::score(const Node& n) const {
  const auto& w = config_.weights;
  return w.cpu * n.cpuPct / 100.0 + w.mem * n.memPct / 100.0 +
         w.inFlight * std::min(1.0, n.inFlight / 10.0);
}

std::uint32_t Scheduler::prefetchFor(std::uint16_t slots, double avgTaskUs) const {
  if (slots == 0) return 0;      // every slot held by a long task: nothing queues behind them
  if (avgTaskUs <= 0) return 1;  // nothing measured yet: assume long tasks
  double p = std::ceil(slots * static_cast<double>(config_.prefetchTargetUs) / avgTaskUs);
  return static_cast<std::uint32_t>(std::clamp(p, 1.0, static_cast<double>(std::max<std::uint32_t>(1, config_.maxPrefetch))));
}

std::uint32_t Scheduler::prefetch(const Node& n, const Batch& b) const {
  return prefetchFor(static_cast<std::uint16_t>(shortSlots(n)), b.avgTaskUs);
}

std::uint32_t Scheduler::shortSlots(const Node& n) const {
  return n.info.slots - std::min<std::uint32_t>(n.info.slots, n.longInFlight);
}

bool Scheduler::isLong(const Batch& b) const {
  return b.avgTaskUs <= 0 || b.avgTaskUs > static_cast<double>(config_.longTaskUs);
}

std::uint32_t Scheduler::credit(const Node& n, const Batch& b) const {
  std::uint64_t limit = std::uint64_t{n.info.slots} + prefetch(n, b);
  std::uint32_t before = ahead(n, b.spec.priority);
  std::uint64_t room = limit > before ? limit - before : 0;
  return static_cast<std::uint32_t>(std::min(room, roomAtMost(n)));
}

std::uint64_t Scheduler::roomAtMost(const Node& n) const {
  std::uint64_t most = std::uint64_t{n.info.slots} + std::max<std::uint32_t>(1, config_.maxPrefetch);
  return most > n.inFlight ? most - n.inFlight : 0;
}

std::uint32_t Scheduler::ahead(const Node& n, std::uint8_t priority) const {
  std::uint32_t atOrAbove = 0, below = 0;
  for (auto [p, count] : n.inFlightByPriority) (p >= priority ? atOrAbove : below) += count;
  return atOrAbove + std::min<std::uint32_t>(below, n.info.slots);
}

void Scheduler::hold(Node& n, Task& t) const {
  ++n.inFlight;
  ++n.inFlightByPriority[t.batch->spec.priority];
  // Decided now and kept with the task, so the count stays right when the batch's average
  // changes while it is in flight.
  t.heldLong = isLong(*t.batch);
  if (t.heldLong) ++n.longInFlight;
  t.recalled = false;
  t.overdue = false;
  t.frontSinceMono = -1;
  n.order.emplace_back(t.id, t.attempts);
  // When ended attempts outnumber the live ones (and some slack), keep the live ones only: a
  // pass over the entries once per about as many holds, O(1) per hold amortized.
  if (n.order.size() > 2 * std::size_t{n.inFlight} + 64) {
    std::deque<std::pair<std::uint64_t, std::uint8_t>> live;
    for (const auto& entry : n.order) {
      if (liveOn(n, entry)) live.push_back(entry);
    }
    n.order = std::move(live);
  }
}

void Scheduler::release(Node& n, Task& t) {
  if (n.inFlight > 0) --n.inFlight;
  if (t.heldLong && n.longInFlight > 0) --n.longInFlight;
  t.heldLong = false;
  t.overdue = false;
  auto it = n.inFlightByPriority.find(t.batch->spec.priority);
  if (it != n.inFlightByPriority.end() && --it->second == 0) n.inFlightByPriority.erase(it);
}

std::uint32_t Scheduler::freeSlots(const Node& n) const {
  return n.info.slots > n.inFlight ? n.info.slots - n.inFlight : 0;
}

std::vector<std::uint64_t> Scheduler::adoptRunning(NodeId id,
                                                   const std::vector<std::pair<std::uint64_t, std::uint8_t>>& reported,
                                                   std::int64_t nowMono, std::int64_t nowWallMs,
                                                   std::vector<std::uint64_t>* behind) {
  std::vector<std::uint64_t> unknown;
  Node* n = node(id);
  for (auto [tid, attempt] : reported) {
    if (!n) {
      unknown.push_back(tid);
      continue;
    }
    auto it = tasks_.find(tid);
    // A drained node still runs (and reports) what it runs: adopted, then recalled if not started.
    if (it == tasks_.end() || it->second->state != Task::State::kQueued || n->leaving ||
        !offers(*n, *it->second->batch)) {
      unknown.push_back(tid);
      continue;
    }
    Task& t = *it->second;
    // Still queued since its node was lost: the node never stopped, so let it finish, under
    // the attempt number it runs (after a nexus restart that attempt was never recorded).
    --t.batch->queued;
    --queuedTotal_;
    t.state = Task::State::kRunning;
    t.node = id;
    if (attempt > t.attempts) t.attempts = attempt;
    if (attempt < t.attempts && behind) {
      // Its run there is a new attempt for the nexus (the numbers up to t.attempts name attempts
      // that ended elsewhere): the next number, which the spore is told.
      if (t.attempts < 255) ++t.attempts;
      counters_.add("tasks_adopted_behind");
      behind->push_back(tid);
    }
    if (nowWallMs > 0) t.assignedWallMs = nowWallMs;  // the real assign time went with the connection
    t.deadlineMono = nowMono + t.batch->spec.timeoutMs + config_.deadlineGraceMs;
    deadlines_.insert({t.deadlineMono, t.id});
    n->running.insert(tid);
    hold(*n, t);
    ++t.batch->running;
    ++runningTotal_;
    counters_.add("tasks_adopted");
  }
  return unknown;
}

void Scheduler::adoptDone(NodeId id, const std::vector<std::uint64_t>& reported) {
  const Node* n = node(id);
  if (!n) return;
  for (auto tid : reported) {
    auto it = tasks_.find(tid);
    if (it == tasks_.end() || n->leaving || !offers(*n, *it->second->batch)) continue;
    addFormerHolder(tid, id, 0);  // assigned before a restart: when is not known
    counters_.add("tasks_done_adopted");
  }
}

void Scheduler::addFormerHolder(std::uint64_t task, NodeId id, std::int64_t assignedWallMs) {
  const Node* n = node(id);
  if (!n) return;
  auto& holders = formerHolders_[task];
  for (auto& h : holders) {
    if (h.key != n->info.key) continue;
    if (assignedWallMs > 0) h.assignedWallMs = assignedWallMs;  // its latest attempt
    return;
  }
  holders.push_back({n->info.key, assignedWallMs});
}

const Scheduler::FormerHolder* Scheduler::formerHolder(std::uint64_t task, NodeId id) const {
  auto it = formerHolders_.find(task);
  auto n = nodes_.find(id);
  if (it == formerHolders_.end() || n == nodes_.end()) return nullptr;
  for (const auto& h : it->second) {
    if (h.key == n->second.info.key) return &h;
  }
  return nullptr;
}

bool Scheduler::handlerOffered(const std::string& handler) const {
  for (const auto& [id, n] : nodes_) {
    if (n.info.handlers.count(handler)) return true;
  }
  return false;
}

bool Scheduler::eligible(const Node& n, const Batch& b) const {
  return !n.leaving && !n.drained && offers(n, b);
}

bool Scheduler::offers(const Node& n, const Batch& b) const {
  if (!n.info.handlers.count(b.spec.handler)) return false;
  for (const auto& h : b.spec.alsoNeeds) {
    if (!n.info.handlers.count(h)) return false;
  }
  for (const auto& tag : b.spec.requiredTags) {
    if (!n.info.tags.count(tag)) return false;
  }
  return true;
}

Node* Scheduler::pickNode(const Batch& b, NodeId avoid, bool prefetch, const std::set<NodeId>& reserved) {
  Node* best = nullptr;
  Node* second = nullptr;
  auto better = [&](const Node* x, const Node* y) {
    if (!y) return true;
    double sx = score(*x), sy = score(*y);
    if (sx != sy) return sx < sy;
    if (x->inFlight != y->inFlight) return x->inFlight < y->inFlight;
    return x->id < y->id;
  };
  for (auto& [id, n] : nodes_) {
    if ((prefetch ? credit(n, b) : freeSlots(n)) == 0 || reserved.count(id) || !eligible(n, b)) continue;
    if (better(&n, best)) {
      second = best;
      best = &n;
    } else if (better(&n, second)) {
      second = &n;
    }
  }
  if (best && best->id == avoid && second) return second;
  return best;
}

std::string Scheduler::explainBlocked(const Batch& b) const {
  if (nodes_.empty()) return "no spore is connected";
  bool handler = false, tags = false, both = false;
  std::uint64_t slots = 0, busy = 0, drained = 0, leaving = 0;
  for (const auto& [id, n] : nodes_) {
    bool h = n.info.handlers.count(b.spec.handler) > 0;
    for (const auto& extra : b.spec.alsoNeeds) h = h && n.info.handlers.count(extra) > 0;
    bool t = true;
    for (const auto& tag : b.spec.requiredTags) t = t && n.info.tags.count(tag);
    handler = handler || h;
    tags = tags || t;
    if (h && t) {
      both = true;
      if (n.drained) {
        ++drained;
      } else if (n.leaving) {
        ++leaving;
      } else {
        slots += n.info.slots;
        busy += n.inFlight;
      }
    }
  }
  std::string tagList;
  for (const auto& t : b.spec.requiredTags) tagList += (tagList.empty() ? "" : ",") + t;
  std::string handlers = b.spec.handler;
  for (const auto& extra : b.spec.alsoNeeds) handlers += "' and '" + extra;
  if (!handler) return "no live spore offers handler '" + handlers + "'";
  if (!tags) return "no live spore has tag(s) " + tagList;
  if (!both) return "no live spore has both handler '" + handlers + "' and tag(s) " + tagList;
  if (slots == 0 && drained > 0) {
    return "every live spore that can run it is drained (" + std::to_string(drained) + ")" +
           (leaving ? " or stopping (" + std::to_string(leaving) + ")" : "") +
           ": `mesh nodes undrain NAME` gives one work again";
  }
  if (slots == 0 && leaving > 0) return "every live spore that can run it is stopping (" + std::to_string(leaving) + ")";
  return "waiting for a free slot: eligible spores have " + std::to_string(slots) + " slots and " +
         std::to_string(busy) + " tasks in flight";
}

// ---- the work ------------------------------------------------------------------------------

// Two passes over the priority levels: the first fills free slots only, the second tops nodes
// up to their prefetch. So no node is given a task beyond its slots while an eligible node has
// a free one, and the prefetch of one batch is sized by that batch's own task time (over the
// node's slots not held by long tasks).
std::vector<Assignment> Scheduler::dispatch(std::int64_t nowMono, std::int64_t nowWallMs) {
  std::map<NodeId, std::vector<Task*>> out;
  for (bool prefetchPass : {false, true}) {
    // The largest room any queued batch of a level (or a lower one) can have on a node is that
    // of the batch with the shortest measured tasks, at the level's priority (a lower one has
    // as many tasks ahead of it or more): a node without it takes nothing from the level on.
    double shortest = 0;
    for (auto level = active_.begin(); prefetchPass && level != active_.end(); ++level) {
      for (Batch* b : level->second) {
        if (b->avgTaskUs > 0 && (shortest <= 0 || b->avgTaskUs < shortest)) shortest = b->avgTaskUs;
      }
    }
    auto anyRoom = [&](std::uint8_t priority) {
      for (auto& [id, n] : nodes_) {
        // A drained or stopping node's room is no room: counting it would send every dispatch
        // through every waiting batch for nothing while it sits idle.
        if (n.drained || n.leaving) continue;
        std::uint64_t most =
            n.info.slots + (prefetchPass ? prefetchFor(static_cast<std::uint16_t>(shortSlots(n)), shortest) : 0);
        if (most > (prefetchPass ? ahead(n, priority) : n.inFlight) && roomAtMost(n) > 0) return true;
      }
      return false;
    };
    // Nodes on which a batch of a higher priority waits for room: lower priorities keep off.
    std::set<NodeId> reserved;
    for (auto level = active_.begin(); level != active_.end() && anyRoom(level->first);) {
      auto& turn = level->second;
      std::size_t blockedInARow = 0;
      while (!turn.empty() && blockedInARow < turn.size()) {
        if (!anyRoom(level->first)) break;
        Batch* b = turn.front();
        turn.pop_front();
        Task* head = frontTask(*b);
        if (!head) {
          inActive_.erase(b);
          continue;
        }
        Node* n = pickNode(*b, head->lastNode, prefetchPass, reserved);
        if (!n) {
          if (prefetchPass) b->blockedWhy = explainBlocked(*b);
          turn.push_back(b);
          ++blockedInARow;
          continue;
        }
        b->blockedWhy.clear();
        blockedInARow = 0;
        std::uint32_t room = prefetchPass ? credit(*n, *b) : freeSlots(*n);
        std::uint32_t take = std::min(room, std::max<std::uint32_t>(1, config_.dispatchChunk));
        auto& list = out[n->id];
        for (std::uint32_t i = 0; i < take; ++i) {
          Task* t = frontTask(*b);
          if (!t) break;
          if (i > 0 && t->lastNode == n->id) break;  // its own turn will steer it elsewhere
          b->ready.pop_front();
          --b->queued;
          --queuedTotal_;
          t->state = Task::State::kRunning;
          t->node = n->id;
          ++t->attempts;
          t->assignedWallMs = nowWallMs;
          t->deadlineMono = nowMono + b->spec.timeoutMs + config_.deadlineGraceMs;
          deadlines_.insert({t->deadlineMono, t->id});
          n->running.insert(t->id);
          hold(*n, *t);
          ++b->running;
          ++runningTotal_;
          list.push_back(t);
        }
        if (b->queued > 0) {
          turn.push_back(b);
        } else {
          inActive_.erase(b);
        }
      }
      // What is left at this level waits for room on the nodes that could run it.
      for (Batch* b : turn) {
        for (auto& [id, n] : nodes_) {
          if (eligible(n, *b)) reserved.insert(id);
        }
      }
      if (turn.empty()) {
        level = active_.erase(level);
      } else {
        ++level;
      }
    }
  }
  std::vector<Assignment> result;
  for (auto& [node, tasks] : out) {
    if (!tasks.empty()) result.push_back({node, std::move(tasks)});
  }
  return result;
}

std::int64_t Scheduler::detachFromNode(Task& t) {
  if (t.state != Task::State::kRunning) return 0;
  deadlines_.erase({t.deadlineMono, t.id});
  std::int64_t started = 0;
  if (!starts_.empty()) {
    if (auto s = starts_.find(t.id); s != starts_.end()) {
      if (s->second.first == t.attempts) started = s->second.second;
      starts_.erase(s);
    }
  }
  if (Node* n = node(t.node)) {
    n->running.erase(t.id);
    release(*n, t);
  }
  --t.batch->running;
  --runningTotal_;
  t.lastNode = t.node;
  t.node = kNoNode;
  return started;
}

bool Scheduler::noteStarted(NodeId id, std::uint64_t task, std::uint8_t attempt, std::int64_t startedMs) {
  auto it = tasks_.find(task);
  if (it == tasks_.end() || startedMs <= 0) return false;
  const Task& t = *it->second;
  if (t.state != Task::State::kRunning || t.node != id || t.attempts != attempt) return false;
  starts_[task] = {attempt, startedMs};
  return true;
}

std::int64_t Scheduler::startedOf(std::uint64_t task) const {
  auto s = starts_.find(task);
  if (s == starts_.end()) return 0;
  auto it = tasks_.find(task);
  if (it == tasks_.end() || it->second->state != Task::State::kRunning || it->second->attempts != s->second.first) return 0;
  return s->second.second;
}

std::string Scheduler::nodeName(NodeId id) const {
  auto it = nodes_.find(id);
  return it == nodes_.end() ? std::string() : it->second.info.name;
}

void Scheduler::finish(Task& t, Status status, std::string output, std::string error, std::int64_t nowWallMs,
                       std::int64_t startedMs, std::uint64_t durationUs, NodeId node, const Report* ran) {
  FinalResult r;
  r.task = t.id;
  r.batch = t.batch->id;
  r.index = t.index;
  r.status = status;
  r.output = std::move(output);
  r.error = std::move(error);
  r.attempts = t.attempts;
  r.node = nodeName(node);
  r.assignedMs = t.assignedWallMs;
  r.startedMs = startedMs;
  r.finishedMs = nowWallMs;
  r.durationUs = durationUs;
  if (ran) {
    r.bundle = ran->bundle;
    r.bundleVersion = ran->bundleVersion;
  }
  if (status != Status::kOk && status != Status::kCancelled) r.payload = std::move(t.payload);
  effects_.finals.push_back(std::move(r));
  Batch& b = *t.batch;
  if (status == Status::kOk) ++b.succeeded;
  else if (status == Status::kCancelled) ++b.cancelledCount;
  else ++b.failed;
  if (!formerHolders_.empty()) formerHolders_.erase(t.id);
  tasks_.erase(t.id);  // t is gone from here on
  if (b.sealed && b.succeeded + b.failed + b.cancelledCount == b.total) effects_.finishedBatches.push_back(b.id);
}

void Scheduler::endAttempt(Task& t, Status status, const std::string& error, std::int64_t nowMono,
                           std::int64_t nowWallMs, bool nodeLost, const Report* report, bool charge,
                           const char* leftOutcome) {
  NodeId node = t.node;
  std::string nodeLabel = nodeName(node);
  addFormerHolder(t.id, node, t.assignedWallMs);  // its late result still counts
  std::int64_t reportedStart = detachFromNode(t);  // by a heartbeat, when the attempt ends without a report
  std::int64_t startedMs = report && report->startedMs > 0 ? report->startedMs : reportedStart;
  Batch& b = *t.batch;
  if (nodeLost) ++t.nodesLost;
  if (nodeLost && !charge) ++t.reconnects;
  std::uint8_t notFailures = static_cast<std::uint8_t>(std::min<int>(255, t.nodesLost));
  std::uint8_t failures = static_cast<std::uint8_t>(t.attempts - std::min(t.attempts, notFailures));
  bool quarantine = nodeLost && charge && t.nodesLost - t.reconnects >= config_.quarantineAfter;
  bool exhausted = !nodeLost && failures >= b.spec.maxAttempts;
  if (quarantine) {
    counters_.add("tasks_quarantined");
    finish(t, Status::kQuarantined, "",
           "quarantined: its spore died or went silent under it " + std::to_string(t.nodesLost) +
               " times (last: " + error + ")",
           nowWallMs, startedMs, 0, node);
    return;
  }
  if (exhausted) {
    counters_.add("tasks_failed");
    if (status == Status::kTimedOut) counters_.add("tasks_timed_out");
    finish(t, status, report ? report->output : std::string(),
           error + " (attempt " + std::to_string(t.attempts) + " of " + std::to_string(b.spec.maxAttempts) + ")",
           nowWallMs, startedMs, report ? report->durationUs : 0, node, report);
    return;
  }
  EndedAttempt a;
  a.task = t.id;
  a.attempt = t.attempts;
  a.node = nodeLabel;
  a.assignedMs = t.assignedWallMs;
  a.endedMs = nowWallMs;
  a.startedMs = startedMs;
  a.outcome = nodeLost ? (charge ? "node lost" : leftOutcome) : statusName(status);  // left: not its fault (the reason is in error)
  a.error = error;
  a.nodeLost = nodeLost && charge;
  if (report) {
    a.bundle = report->bundle;
    a.bundleVersion = report->bundleVersion;
  }
  effects_.attempts.push_back(std::move(a));
  if (nodeLost) {
    counters_.add("tasks_requeued");
    enqueueFront(t);
    return;
  }
  counters_.add("tasks_retried");
  if (status == Status::kTimedOut) counters_.add("tasks_timed_out");
  std::int64_t backoff = config_.retryBaseMs << std::min<int>(20, std::max<int>(0, failures - 1));
  backoff = std::min(backoff, config_.retryMaxMs);
  t.state = Task::State::kWaiting;
  t.notBeforeMono = nowMono + backoff;
  ++b.waiting;
  ++queuedTotal_;
  retries_.push({t.notBeforeMono, t.id});
}

void Scheduler::onReport(NodeId from, Report&& report, std::int64_t nowMono, std::int64_t nowWallMs) {
  auto it = tasks_.find(report.task);
  if (it == tasks_.end()) {
    counters_.add("results_duplicate");
    return;
  }
  Task& t = *it->second;
  bool holder = t.state == Task::State::kRunning && t.node == from;
  const FormerHolder* former = holder ? nullptr : formerHolder(t.id, from);
  if (!holder && !former) {
    // Never assigned to the sender: a forged result, or one for a task it does not hold.
    counters_.add("results_unassigned");
    return;
  }
  bool current = holder && t.attempts == report.attempt;
  Node* n = node(from);
  if (report.status == Status::kOk || report.status == Status::kFailed) {
    Batch& b = *t.batch;
    double d = static_cast<double>(std::max<std::uint64_t>(1, report.durationUs));
    b.avgTaskUs = b.avgTaskUs <= 0 ? d : 0.9 * b.avgTaskUs + 0.1 * d;
  }
  if (!current) {
    if (report.status != Status::kOk) {
      counters_.add("results_stale_dropped");
      return;
    }
    // A valid result from an attempt we had given up on: the first result wins.
    counters_.add("results_late_accepted");
    if (t.state == Task::State::kRunning) {
      effects_.cancels.emplace_back(t.node, t.id);
      detachFromNode(t);
    } else if (t.state == Task::State::kQueued) {
      --t.batch->queued;
      --queuedTotal_;
    } else {
      --t.batch->waiting;
      --queuedTotal_;
    }
    if (n) ++n->done;
    // After a nexus restart the task's own count starts at 0: the attempt that ran is the
    // spore's word (at least one ran).
    t.attempts = std::max<std::uint8_t>({t.attempts, report.attempt, std::uint8_t{1}});
    // Recorded with the assign time of the attempt that ran, not that of the task's current
    // assignment (a re-send, perhaps to another spore, after it): 0 when it is not known.
    if (!former) former = formerHolder(t.id, from);
    t.assignedWallMs = former ? former->assignedWallMs : 0;
    finish(t, Status::kOk, std::move(report.output), "", nowWallMs, report.startedMs, report.durationUs, from, &report);
    return;
  }
  if (report.status == Status::kOk) {
    detachFromNode(t);
    if (n) ++n->done;
    finish(t, Status::kOk, std::move(report.output), "", nowWallMs, report.startedMs, report.durationUs, from, &report);
    return;
  }
  if (n) ++n->done;
  std::string error = report.error.empty() ? statusName(report.status) : report.error;
  endAttempt(t, report.status == Status::kCancelled ? Status::kFailed : report.status, error, nowMono, nowWallMs,
             false, &report);
}

void Scheduler::tick(std::int64_t nowMono, std::int64_t nowWallMs) {
  while (!retries_.empty() && retries_.top().first <= nowMono) {
    std::uint64_t id = retries_.top().second;
    retries_.pop();
    auto it = tasks_.find(id);
    if (it == tasks_.end() || it->second->state != Task::State::kWaiting) continue;
    Task& t = *it->second;
    --t.batch->waiting;
    --queuedTotal_;
    enqueueFront(t);
  }
  while (!deadlines_.empty() && deadlines_.begin()->first <= nowMono) {
    auto [at, id] = *deadlines_.begin();
    deadlines_.erase(deadlines_.begin());
    auto it = tasks_.find(id);
    if (it == tasks_.end()) continue;
    Task& t = *it->second;
    if (t.state != Task::State::kRunning || t.deadlineMono != at) continue;
    effects_.cancels.emplace_back(t.node, t.id);
    counters_.add("attempts_expired");
    endAttempt(t, Status::kTimedOut,
               "no result from spore " + nodeName(t.node) + " within the timeout of " +
                   std::to_string(t.batch->spec.timeoutMs) + " ms",
               nowMono, nowWallMs, false, nullptr);
  }
}

std::optional<std::int64_t> Scheduler::nextDeadline() const {
  std::optional<std::int64_t> next;
  if (!retries_.empty()) next = retries_.top().first;
  if (!deadlines_.empty() && (!next || deadlines_.begin()->first < *next)) next = deadlines_.begin()->first;
  return next;
}

}  // namespace mesh::routing
