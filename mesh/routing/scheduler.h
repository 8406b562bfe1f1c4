// The scheduler: which task runs where, and what happens when it ends.
//
// Pure logic, no I/O: the nexus feeds it batches, tasks, nodes, results and the time, and
// drains the Effects it produces (records to write, cancels to send). That makes every rule
// here unit-testable with a manual clock.
//
// Rules (DESIGN.md section 5):
// - A node is eligible for a batch when it is alive, offers the batch's handler, has every
//   required tag, and has credit for the batch: slots + prefetch - ahead > 0, where ahead counts
//   the tasks in flight on the node (counted here, never taken from the node's word) that would
//   start before the batch's next one: those of its priority or higher, and of the lower ones
//   at most `slots` (they may be running; the spore starts its queued tasks by priority, so
//   it runs the batch's before any lower one still queued there).
// - Prefetch counts only the slots expected to free soon. A task held by a node is long when its
//   batch had no measured task or an average over longTaskUs (100 ms) at the time it was given
//   (flagged on the task, counted in Node::longInFlight, O(1) in hold/release); the node's short
//   slots are slots - min(slots, longInFlight). Prefetch is sized in time by the batch's own
//   measured task duration, about `prefetchTargetUs` of work per short slot, capped at
//   `maxPrefetch`: long tasks get no more than one extra and microsecond tasks get enough to
//   fill the pipe; a batch with no measured task yet counts as long: one extra. It is 0 when
//   long tasks hold every slot, for any batch and priority: nothing waits behind them while
//   another node could run it (a free slot is still filled), and a higher priority task waits in
//   the nexus for the first slot to free anywhere. Whatever the priorities, a node never holds
//   more than slots + maxPrefetch tasks in all: a higher priority batch that finds a node that
//   full waits for the node's short tasks to drain.
// - A dispatch round fills free slots first: no node gets a prefetched task while a free slot
//   of an eligible node is left (every level of priority, then the prefetch, again by priority).
// - Among eligible nodes: lowest load score 0.4 cpu + 0.3 mem + 0.3 min(1, in_flight/10)
//   (weights configurable), scored again for every turn; a retried task avoids the node it last
//   failed on when it can.
// - Highest priority first; FIFO within a batch; batches of equal priority take turns. A node
//   on which a batch waits for credit takes no task of a lower priority meanwhile.
// - A failed attempt is retried with exponential backoff until maxAttempts; a task whose node
//   dies under it is re-queued at once, and quarantined after `quarantineAfter` such deaths.
// - First final result wins; anything later for the same task is a counted duplicate.
// - Recall (recalls(), called every few hundred ms): the tasks a node holds beyond its slots may
//   wait behind the ones it runs. A task that stays in flight far longer than its batch's
//   measured average (overdueUs(): over max(overdueMinUs, overdueFactor x the average), 1 s and
//   20x by default) among the `slots` a node was given first (those it can be running) counts as
//   long from then on, like a task of a long batch: no prefetch is sized by its slot. The nexus
//   does not know when a spore starts a task: a task's time runs from the first check that found
//   it among those first `slots` (so a task that waited in the spore's queue is not taken for
//   one that ran; a check every 250 ms errs by that much, late). When long
//   tasks then hold every slot of the node, its other tasks (the ones assigned after those
//   `slots`) are asked back, those for which another node has room: the spore hands back the
//   ones it has not started (giveBack, uncharged) and runs the others. A node has at most one
//   recall outstanding, a task is recalled at most once per attempt, and a node that leaves a
//   recall unanswered for recallAnswerMs (a spore older than recall) is sent no more. The
//   nodes' tasks in assignment order are kept per node (Node::order: O(1) per task held,
//   compacted in amortized O(1)); a check walks, per node, only its first `slots` live tasks,
//   and its others only when it recalls.
// - A drained node (setDrained, `mesh nodes drain`) is given nothing; every task it holds is
//   recalled once (its running ones finish there).
//
// Thread rule: owned by the nexus loop thread.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <utility>
#include <memory>
#include <optional>
#include <queue>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "mesh/util/counters.h"

namespace mesh::routing {

using NodeId = std::uint32_t;
constexpr NodeId kNoNode = 0;
// From this attempt on, a task handed back (giveBack) is charged as a node loss: see giveBack.
constexpr std::uint8_t kChargedHandBacksFrom = 200;

// proto::TaskStatus values, repeated here so the scheduler does not depend on the wire schema.
enum class Status : std::uint8_t { kOk = 0, kFailed = 1, kTimedOut = 2, kCrashed = 3, kUnknownHandler = 4,
                                   kCancelled = 5, kQuarantined = 6 };
const char* statusName(Status s);

struct LoadWeights {
  double cpu = 0.4, mem = 0.3, inFlight = 0.3;
};

struct SchedulerConfig {
  LoadWeights weights;
  std::uint32_t maxPrefetch = 256;
  std::int64_t prefetchTargetUs = 5000;
  // A task whose batch averages more than this (or has no measured task yet) holds its slot
  // long: no prefetch is sized by that slot. Below it, a task prefetched behind one waits
  // little, and refilling the slot only when it frees would cost a round trip per task (~1 ms:
  // 5-20 % of 5-20 ms tasks, e.g. the word count's map tasks).
  std::int64_t longTaskUs = 100'000;
  // A task in flight longer than max(overdueMinUs, overdueFactor x its batch's average) runs far
  // longer than its batch's tasks do (see recalls()). 20x is far outside the spread of a batch's
  // task times (the average is a moving one) and the 1 s floor keeps millisecond tasks (the word
  // count's maps, ~5-20 ms) clear of a stall of the host: a recall costs a round trip and a
  // re-send, small against a second of waiting.
  std::int64_t overdueMinUs = 1'000'000;
  double overdueFactor = 20;
  // A recall not answered within this long: the node does not know recall (an older spore); it
  // is sent no more on this connection.
  std::int64_t recallAnswerMs = 10'000;
  std::int64_t retryBaseMs = 200;
  std::int64_t retryMaxMs = 30000;
  std::uint8_t quarantineAfter = 3;
  std::uint32_t defaultTimeoutMs = 3'600'000;
  std::uint8_t defaultMaxAttempts = 3;
  // How long past a task's own timeout the nexus waits for a spore's answer before it
  // declares the attempt lost (the spore enforces the timeout itself first).
  std::int64_t deadlineGraceMs = 5000;
  std::uint32_t dispatchChunk = 64;  // tasks given to one node per turn
};

struct BatchSpec {
  std::string handler;
  std::uint8_t priority = 0;
  std::vector<std::string> requiredTags;
  std::uint32_t timeoutMs = 0;
  std::uint8_t maxAttempts = 0;
  std::string label;
  std::string clientKey;
  std::int64_t submittedMs = 0;
  // Other handlers an eligible node must also offer (a map stage's combiner).
  std::vector<std::string> alsoNeeds;
  // Map-reduce, carried to the spores with each task (0 none, 1 map, 2 reduce).
  std::uint8_t mrStage = 0;
  std::uint32_t mrPartitions = 0;
  std::string mrCombiner;
  std::string mrReducer;
  // `mesh retry`: the batch whose failed tasks this one runs again (0: none). Not used here.
  std::uint64_t retryOf = 0;
  // `mesh submit --after` / `--after-done`: the batches it waits for (the nexus decides when;
  // see Batch::held). Not used here.
  std::vector<std::uint64_t> after, afterDone;
};

struct Progress {
  std::uint64_t total = 0, queued = 0, running = 0, succeeded = 0, failed = 0, cancelled = 0;
  bool sealed = false, finished = false;
  bool batchCancelled = false;  // the batch was cancelled, even if the cancel ended no task
};

struct Batch;

struct Task {
  std::uint64_t id = 0;
  std::uint64_t index = 0;
  Batch* batch = nullptr;
  std::string payload;
  std::uint8_t attempts = 0;   // attempts started (the running one included)
  std::uint8_t nodesLost = 0;   // attempts ended by the node going away (not failures)
  std::uint8_t reconnects = 0;  // of which were reconnections, not charged toward quarantine
  enum class State : std::uint8_t { kQueued, kWaiting, kRunning } state = State::kQueued;
  NodeId node = kNoNode;       // while running
  bool heldLong = false;       // counted in its node's longInFlight (decided when it was held)
  bool recalled = false;       // its attempt has been recalled (never twice)
  bool overdue = false;        // found in flight far past its batch's average (then heldLong)
  NodeId lastNode = kNoNode;   // the node of the last ended attempt
  std::int64_t assignedWallMs = 0;
  // When a recall check first found it among the first `slots` tasks its node holds (the ones
  // the node can be running), -1 before: the earliest it is taken to have started. (A Task is
  // kept per queued task, a million of them for a large batch: the fields are packed so that
  // it stays in malloc's 112-byte chunk.)
  std::int64_t frontSinceMono = -1;
  std::int64_t deadlineMono = 0;
  std::int64_t notBeforeMono = 0;
};

struct Batch {
  std::uint64_t id = 0;
  BatchSpec spec;
  std::deque<std::uint64_t> ready;  // task ids; ids of tasks that ended meanwhile are skipped
  std::uint64_t queued = 0;          // tasks in `ready` that are really queued
  std::uint64_t total = 0;
  bool sealed = false;
  bool cancelled = false;
  std::uint64_t running = 0, waiting = 0;
  double avgTaskUs = 0;  // EWMA of its tasks' reported durations; 0 = none measured yet
  // Final results produced in memory, and of those, the ones the store has committed.
  std::uint64_t succeeded = 0, failed = 0, cancelledCount = 0;
  std::uint64_t durableSucceeded = 0, durableFailed = 0, durableCancelled = 0;
  std::string blockedWhy;  // set when a dispatch round found no eligible node
  // Held (the nexus's dependencies: `mesh submit --after`): its tasks are queued but the batch
  // never takes a turn in dispatch (it is kept out of the turns, so a held batch costs dispatch
  // nothing, however many tasks it has) until release(). Set before its first task is added.
  bool held = false;
  // The error of the tasks cancel() ends (empty: "cancelled by the client").
  std::string cancelWhy;
  // Bookkeeping of the nexus for chunks accepted but not yet committed (not used here).
  std::uint64_t pendingAdds = 0;
  bool sealPending = false;
  bool finishRecorded = false;
  std::uint64_t durableDone() const { return durableSucceeded + durableFailed + durableCancelled; }
};

struct NodeInfo {
  std::string key;          // z85 public key
  std::string name;         // shown to people
  std::uint16_t slots = 1;
  std::set<std::string> tags;
  std::set<std::string> handlers;
};

struct Node {
  NodeId id = kNoNode;
  NodeInfo info;
  double cpuPct = 0, memPct = 0;
  std::uint32_t inFlight = 0;
  std::map<std::uint8_t, std::uint32_t> inFlightByPriority;  // the same by batch priority; no zeros
  // Of inFlight, the long tasks (see Scheduler::isLong, decided when each was held): the slots
  // they hold are not expected to free soon, so no prefetch is sized by them.
  std::uint32_t longInFlight = 0;
  std::unordered_set<std::uint64_t> running;
  std::uint64_t done = 0;
  bool leaving = false;  // stopping: it finishes what it runs and is given nothing more
  bool drained = false;  // `mesh nodes drain`: given nothing, what it holds is recalled
  // The (task, attempt) it was given, in that order; entries whose attempt has ended are dropped
  // lazily (at the front, and by a compaction when they outnumber the live ones).
  std::deque<std::pair<std::uint64_t, std::uint8_t>> order;
  std::int64_t recallSentMono = -1;  // when its outstanding recall was sent; -1: none
  bool recallsIgnored = false;       // left a recall unanswered: sent no more
};

// Tasks (id, attempt) the nexus asks a node to hand back if it has not started them.
struct Recall {
  NodeId node = kNoNode;
  std::vector<std::pair<std::uint64_t, std::uint8_t>> tasks;
  bool drain = false;          // the node is drained; else long tasks hold its slots
  std::uint64_t longTask = 0;  // (not drain) a task that runs far longer than its batch's average
};

struct RecallCheck {
  std::vector<Recall> recalls;
  std::vector<NodeId> unanswered;  // nodes that left a recall unanswered (sent no more)
};

// A task's final result (the nexus writes it to the store).
struct FinalResult {
  std::uint64_t task = 0;
  std::uint64_t batch = 0;
  std::uint64_t index = 0;  // the task's index in its batch
  Status status = Status::kOk;
  std::string output;
  std::string error;
  std::uint8_t attempts = 0;
  std::string node;
  std::int64_t assignedMs = 0, startedMs = 0, finishedMs = 0;
  std::uint64_t durationUs = 0;
  std::string bundle;  // Report::bundle of the attempt that ended it ("": none)
  std::uint64_t bundleVersion = 0;
  // A failure's payload (any status but ok and cancelled), moved out of the task, so that the
  // store can keep it for `mesh retry` (store::ResultRecord::payload); empty otherwise.
  std::string payload;
};

// An attempt that ended without ending its task (the timeline of `mesh task`).
struct EndedAttempt {
  std::uint64_t task = 0;
  std::uint8_t attempt = 0;
  std::string node;
  std::int64_t assignedMs = 0, endedMs = 0;
  std::int64_t startedMs = 0;  // as the spore reported it (0: no report, e.g. the node was lost)
  std::string outcome;
  std::string error;
  bool nodeLost = false;
  std::string bundle;  // Report::bundle ("": no report, or a handler of no bundle)
  std::uint64_t bundleVersion = 0;
};

// What the nexus must do after a call: write these records, send these cancels.
struct Effects {
  std::vector<FinalResult> finals;
  std::vector<EndedAttempt> attempts;
  std::vector<std::pair<NodeId, std::uint64_t>> cancels;  // node, task id
  std::vector<std::uint64_t> finishedBatches;             // every task has a final result (in memory)
};

struct Assignment {
  NodeId node;
  std::vector<Task*> tasks;  // valid until the next call that can end them
};

// One result reported by a node.
struct Report {
  std::uint64_t task = 0;
  std::uint8_t attempt = 0;
  Status status = Status::kOk;
  std::string output;
  std::string error;
  std::int64_t startedMs = 0;
  std::uint64_t durationUs = 0;
  std::string bundle;  // the signed bundle whose program ran it, and its version ("", 0: none)
  std::uint64_t bundleVersion = 0;
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config) : config_(std::move(config)) {}

  const SchedulerConfig& config() const { return config_; }

  // ---- batches and tasks
  Batch& addBatch(std::uint64_t id, BatchSpec spec);
  Batch* batch(std::uint64_t id);
  // Adds a task at the end of its batch's queue. `attemptsMade`, `nodesLost` and `reconnects`
  // (Task's fields) carry its history over a restart.
  void addTask(Batch& b, std::uint64_t id, std::uint64_t index, std::string payload,
               std::uint8_t attemptsMade = 0, std::uint8_t nodesLost = 0, std::uint8_t reconnects = 0);
  // After a restart: a task that cannot run again (its payload is lost) ends as failed with
  // `error` at once; its result is written like any other.
  void addFailedTask(Batch& b, std::uint64_t id, std::uint64_t index, std::string error, std::int64_t nowWallMs);
  void seal(Batch& b, std::uint64_t total);
  // After a restart: results the store already holds for the batch.
  void restoreCounts(Batch& b, std::uint64_t succeeded, std::uint64_t failed, std::uint64_t cancelled);
  // Every queued, waiting and running task of the batch ends as cancelled, with Batch::cancelWhy
  // (or "cancelled by the client") as its error; tasks added to the batch later are cancelled by
  // calling this again. Returns how many tasks it ended.
  std::uint64_t cancel(Batch& b, std::int64_t nowWallMs);
  // A held batch (Batch::held) takes its turns in dispatch from now on. O(1).
  void release(Batch& b);
  // Takes back a batch whose tasks were handed out before the store had them, when storing them
  // failed: running tasks are cancelled on their nodes (Effects::cancels), every task is dropped
  // without a final result, effects not yet taken that belong to the batch are dropped too, and
  // the batch is forgotten. A later report of one of its tasks counts as a duplicate. Returns
  // how many tasks it dropped that had not ended yet.
  std::uint64_t withdraw(std::uint64_t batchId);
  // The store committed these final results (for Progress and for "finished").
  void markDurable(std::uint64_t batchId, Status status, std::uint64_t count);
  Progress progress(const Batch& b) const;
  // Drops a finished batch from memory once its completion is durable.
  void forget(std::uint64_t batchId);
  const std::map<std::uint64_t, std::unique_ptr<Batch>>& batches() const { return batches_; }
  const Task* task(std::uint64_t id) const;
  // Why a task is not running, in words, or empty.
  std::string whyWaiting(const Task& t, std::int64_t nowMono) const;

  // ---- nodes
  NodeId addNode(NodeInfo info);
  // The node says what it offers again (a spore's hello after a bundle install that kept every
  // handler it had): its handlers, tags, slots and name change, what it runs does not. The key
  // stays the node's.
  void updateNode(NodeId id, NodeInfo info);
  void updateLoad(NodeId id, double cpuPct, double memPct);
  // Ends every attempt running on the node: its tasks are re-queued at once. When nodeFault is
  // true (the node died or went silent) the loss is charged to each task, which is quarantined
  // after `quarantineAfter` charges; a reconnection or a revoked key is not charged.
  void removeNode(NodeId id, std::int64_t nowWallMs, const std::string& why, bool nodeFault = true);
  // A node replaced by a new connection with its key (a reconnection, or the spore restarted):
  // the tasks the new connection still holds (`stillHeld`: its hello's running and done) end
  // uncharged, as a reconnection; the others were lost with the old process, which may have
  // died of one of them, so they are charged like a node that died (`why` says so).
  void replaceNode(NodeId id, std::int64_t nowWallMs, const std::unordered_set<std::uint64_t>& stillHeld);
  // The node is stopping: it is given no task from now on (its running ones may still end).
  void setLeaving(NodeId id);
  // Drains (true) or undrains a node: a drained node is given no task; recalls() asks back what
  // it holds. Undraining lets batches that waited for it take a turn again.
  void setDrained(NodeId id, bool drained);
  // Why a task goes back without charge: its spore stops, or it answers a recall.
  enum class GiveBackWhy : std::uint8_t { kLeaving, kRecalled };
  // The node hands back a task it holds (attempt `attempt`) and will not start: it goes back to
  // the front of its queue at once, not charged to the task (an attempt that ended "node left",
  // or "recalled"). False if the task is not running there under that attempt (ended, or
  // re-sent meanwhile).
  bool giveBack(NodeId id, std::uint64_t task, std::uint8_t attempt, std::int64_t nowWallMs,
                GiveBackWhy why = GiveBackWhy::kLeaving);
  // The node answers a recall (any hand-back answers the outstanding one): each task it holds
  // under that attempt goes back as giveBack(kRecalled) does; any other is counted
  // (handback_unheld) and changes nothing. Returns how many went back.
  std::size_t handBack(NodeId id, const std::vector<std::pair<std::uint64_t, std::uint8_t>>& tasks,
                       std::int64_t nowWallMs);
  // The periodic recall check (see the header comment): the recalls to send now (each is
  // recorded as sent) and the nodes found not answering.
  RecallCheck recalls(std::int64_t nowMono);
  // A recall that could not be sent (the node's queue was full, or it is gone): its tasks may be
  // recalled again, and the node has no recall outstanding.
  void recallUnsent(const Recall& r);
  // Recalls every task the drained node holds and that was not recalled yet, whether or not
  // a recall is outstanding (an operator's drain does not wait). Empty tasks: nothing to recall.
  Recall recallDrained(NodeId id, std::int64_t nowMono);
  // A task of its batch in flight longer than this (µs) runs far past the batch's average; 0
  // while the batch has no measured task (then nothing is overdue).
  std::int64_t overdueUs(const Batch& b) const;
  Node* node(NodeId id);
  const std::map<NodeId, Node>& nodes() const { return nodes_; }
  double score(const Node& n) const;
  // Tasks of the batch the node may hold beyond its slots, sized by the node's short slots s
  // (shortSlots): ceil(s * prefetchTargetUs / the batch's average task time) in
  // [1, maxPrefetch], 1 while the batch has none measured; 0 when s is 0.
  std::uint32_t prefetch(const Node& n, const Batch& b) const;
  // The slots of the node not held by long tasks: slots - min(slots, longInFlight).
  std::uint32_t shortSlots(const Node& n) const;
  // A task of the batch, held now, counts as long: the batch has no measured task yet, or
  // its average is over longTaskUs.
  bool isLong(const Batch& b) const;
  // How many more tasks of the batch the node may be given: slots + prefetch - ahead, or 0,
  // where ahead = in flight at the batch's priority or higher + min(slots, in flight below it);
  // never more than roomAtMost(n).
  std::uint32_t credit(const Node& n, const Batch& b) const;
  // The node's hard bound over every priority: slots + maxPrefetch - in flight, or 0.
  std::uint64_t roomAtMost(const Node& n) const;
  // The tasks in flight on the node that would start before a new task of `priority` there.
  std::uint32_t ahead(const Node& n, std::uint8_t priority) const;
  // slots - in_flight, or 0.
  std::uint32_t freeSlots(const Node& n) const;
  // Tasks (id, attempt) the node reports as still running after a reconnect or a nexus
  // restart: those still queued are assigned back to it, with a fresh deadline, and the
  // adoption (nowWallMs, when given) as their assign time. Returns the ids it must drop (done,
  // or running elsewhere meanwhile). A task runs on under the attempt the node reports when that
  // is the nexus's or a newer one (after a restart, the nexus's may never have been recorded);
  // under an older one (the nexus gave that attempt up, and a later one was lost elsewhere),
  // it runs under the nexus's next number (a new attempt) and its id goes to `behind`: the
  // caller assigns it to the node again under that number, which the node takes as "report it
  // under this attempt" (else a failure report would be dropped as stale and the task wait for
  // its deadline). Without `behind`, the task runs under the nexus's number as it is.
  std::vector<std::uint64_t> adoptRunning(NodeId id, const std::vector<std::pair<std::uint64_t, std::uint8_t>>& tasks,
                                          std::int64_t nowMono, std::int64_t nowWallMs = 0,
                                          std::vector<std::uint64_t>* behind = nullptr);
  // Tasks the node finished while it was away from this nexus (a nexus restart, a lost
  // connection), whose results it sends after its hello: their results are accepted from it
  // like late results (see onReport). Tasks it is not eligible for are ignored.
  void adoptDone(NodeId id, const std::vector<std::uint64_t>& tasks);
  // The node's word (a heartbeat) that it started `task` under `attempt` at `startedMs`, its wall
  // clock: kept while that attempt runs there, for startedOf() and for the attempt's record if
  // it ends without a report (node lost, deadline, cancel). False, and nothing kept, when the
  // task does not run on that node under that attempt (it has ended meanwhile, say).
  bool noteStarted(NodeId id, std::uint64_t task, std::uint8_t attempt, std::int64_t startedMs);
  // The start its node reported for the running attempt of `task`; 0 when not known.
  std::int64_t startedOf(std::uint64_t task) const;
  // Does any live node offer this handler?
  bool handlerOffered(const std::string& handler) const;

  // ---- the work
  std::vector<Assignment> dispatch(std::int64_t nowMono, std::int64_t nowWallMs);
  // A result is taken only from the node running the task's current attempt, or (a late
  // result) from a node with the key of one that ran an earlier attempt in this run or
  // reported it done (adoptDone); any other is dropped and counted (results_unassigned).
  void onReport(NodeId from, Report&& report, std::int64_t nowMono, std::int64_t nowWallMs);
  // Moves due retries back to their queues and expires attempts past their deadline.
  void tick(std::int64_t nowMono, std::int64_t nowWallMs);
  // The earliest time tick() has work, or nullopt.
  std::optional<std::int64_t> nextDeadline() const;

  Effects takeEffects() { return std::exchange(effects_, Effects{}); }
  util::Counters& counters() { return counters_; }
  const util::Counters& counters() const { return counters_; }
  std::uint64_t queuedTotal() const { return queuedTotal_; }
  std::uint64_t runningTotal() const { return runningTotal_; }
  std::size_t tasksInMemory() const { return tasks_.size(); }
  std::size_t deadlinesTracked() const { return deadlines_.size(); }
  // Batches waiting for their turn in dispatch, over every priority (each at most once).
  std::size_t batchesInTurns() const {
    std::size_t n = 0;
    for (const auto& [priority, turn] : active_) n += turn.size();
    return n;
  }

 private:
  // Ends every attempt running on the node (re-queued; `how(task)` gives the reason and whether
  // the loss is charged), then forgets the node.
  void endAllOn(Node& n, std::int64_t nowWallMs,
                const std::function<std::pair<std::string, bool>(std::uint64_t)>& how);
  // The prefetch of a node with `slots` short slots for tasks of `avgTaskUs` (0: not measured).
  std::uint32_t prefetchFor(std::uint16_t slots, double avgTaskUs) const;
  void enqueueFront(Task& t);
  void makeActive(Batch& b);
  // Takes the batch out of its priority's turn (and inActive_), if it is there.
  void deactivate(Batch& b);
  Task* frontTask(Batch& b);
  // The best node with room for the batch: a free slot (prefetch false) or credit (true), and
  // not in `reserved`.
  Node* pickNode(const Batch& b, NodeId avoid, bool prefetch, const std::set<NodeId>& reserved);
  // Not leaving, not drained, and offers(n, b).
  bool eligible(const Node& n, const Batch& b) const;
  // The node has the batch's handlers and tags (whether or not it may be given tasks now).
  bool offers(const Node& n, const Batch& b) const;
  // nodeLost: the attempt ended because its node went away (re-queue at once, no backoff);
  // charge: count that loss toward quarantine; leftOutcome: the attempt's outcome when it ended
  // without charge ("node left", "recalled").
  void endAttempt(Task& t, Status status, const std::string& error, std::int64_t nowMono,
                  std::int64_t nowWallMs, bool nodeLost, const Report* report, bool charge = true,
                  const char* leftOutcome = "node left");
  void finish(Task& t, Status status, std::string output, std::string error, std::int64_t nowWallMs,
              std::int64_t startedMs, std::uint64_t durationUs, NodeId node, const Report* ran = nullptr);
  // Takes a running attempt off its node; returns its start as the node reported it (0: none).
  std::int64_t detachFromNode(Task& t);
  // Counts a task in (hold) or out of (release) the node's in flight, and in its long ones.
  void hold(Node& n, Task& t) const;
  static void release(Node& n, Task& t);
  // Whether the node's order entry is a live attempt on it.
  bool liveOn(const Node& n, const std::pair<std::uint64_t, std::uint8_t>& entry) const;
  // Per batch, up to two nodes with room for it (eligible, a free slot or credit): computed once
  // per recall check, when first asked.
  using RoomByBatch = std::unordered_map<const Batch*, std::vector<NodeId>>;
  // Takes the node's tasks not recalled yet into r (and marks them recalled), from its order
  // entry `from` on (counted in live ones); with `room`, only those of batches another node has
  // room for.
  void collectRecall(Node& n, std::size_t from, RoomByBatch* room, Recall& r, std::int64_t nowMono);
  bool roomElsewhere(const Node& n, const Batch& b, RoomByBatch& room) const;
  std::string nodeName(NodeId id) const;
  std::string explainBlocked(const Batch& b) const;

  SchedulerConfig config_;
  std::map<std::uint64_t, std::unique_ptr<Batch>> batches_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Task>> tasks_;
  // Batches with ready tasks, by priority (highest first), each level in turn order.
  std::map<std::uint8_t, std::list<Batch*>, std::greater<>> active_;
  std::set<Batch*> inActive_;
  std::map<NodeId, Node> nodes_;
  NodeId nextNode_ = 1;
  // Retries waiting for their backoff: (time, task id).
  std::priority_queue<std::pair<std::int64_t, std::uint64_t>, std::vector<std::pair<std::int64_t, std::uint64_t>>,
                      std::greater<>> retries_;
  // Deadlines of running attempts, (time, task id): an entry lives exactly as long as its
  // attempt runs (added at dispatch or adoption, removed when the attempt ends), so memory stays
  // proportional to the tasks in flight, not to the tasks finished within one timeout.
  std::set<std::pair<std::int64_t, std::uint64_t>> deadlines_;
  // Starts of running attempts reported before their results (noteStarted): task id ->
  // (attempt, wall ms). Like deadlines_, an entry lives no longer than its attempt runs.
  std::unordered_map<std::uint64_t, std::pair<std::uint8_t, std::int64_t>> starts_;
  // The nodes (by key) that ran an ended attempt of a task that has not finished (or reported it
  // done): the senders whose late results count, with when their (latest) attempt was assigned
  // (0: not known, e.g. one reported done after a restart), which a late result of theirs
  // records. Entries only for such tasks, dropped with them.
  struct FormerHolder {
    std::string key;
    std::int64_t assignedWallMs = 0;
  };
  std::unordered_map<std::uint64_t, std::vector<FormerHolder>> formerHolders_;
  void addFormerHolder(std::uint64_t task, NodeId node, std::int64_t assignedWallMs);
  const FormerHolder* formerHolder(std::uint64_t task, NodeId node) const;
  Effects effects_;
  util::Counters counters_;
  std::uint64_t queuedTotal_ = 0;
  std::uint64_t runningTotal_ = 0;
};

}  // namespace mesh::routing
