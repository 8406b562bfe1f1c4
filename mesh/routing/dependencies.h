// Batches that wait for other batches (`mesh submit --after ID`, `--after-done ID`): what a
// waiting batch's dependencies have come to, and so whether it waits on, runs or is cancelled.
//
// Pure logic, no I/O: the nexus says what it knows of a batch (BatchEnd, from its memory or its
// store) through a lookup, and acts on the Verdict (Scheduler::release, Scheduler::cancel). The
// nexus judges a waiting batch when it is submitted, at a restart, and each time one of the
// batches it waits on finishes (Verdict::wakeOn). docs/protocol.md section 4.21.
//
// A dependency on a map-reduce job (its map-stage batch) follows the job's stage link: the job
// has finished only when its last stage has, and it failed if any stage did.
//
// Thread rule: none (values and functions).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mesh::routing {

// At most this many batches in `after` and `afterDone` together.
constexpr std::size_t kMaxAfter = 64;

// What is known of one batch.
struct BatchEnd {
  bool known = false;     // the nexus has it, in memory or stored
  bool finished = false;  // every task has a committed final result
  bool cancelled = false;  // the batch was cancelled
  std::uint64_t total = 0, succeeded = 0, failed = 0, cancelledTasks = 0;  // final counts, once finished
  std::uint8_t mrStage = 0;     // 1: the map stage of a job
  std::uint64_t nextBatch = 0;  // a finished map stage: its reduce stage, once started
  std::string note;             // a finished map stage: why the job stopped there
};
using BatchLookup = std::function<BatchEnd(std::uint64_t)>;

// What one named dependency has come to.
struct DependencyState {
  enum class Kind : std::uint8_t { kPending, kSucceeded, kFailed };
  Kind kind = Kind::kPending;
  std::uint64_t waitOn = 0;  // kPending: the batch whose end is awaited (the named one, or its job's reduce stage)
  std::string why;           // kFailed: "batch 12 finished with 3 failed tasks", "batch 12 was cancelled", ...
};

// Follows `id` (and a job's stage link) through `lookup`.
DependencyState resolveDependency(std::uint64_t id, const BatchLookup& lookup);

struct Verdict {
  enum class Kind : std::uint8_t { kWait, kRelease, kCancel };
  Kind kind = Kind::kRelease;
  std::string why;                     // kCancel: the error of its tasks, one line
  std::vector<std::uint64_t> waitingFor;  // kWait: the named ids not finished yet, ascending
  std::vector<std::uint64_t> wakeOn;      // kWait: the batches whose end to judge again at
};

// A batch waiting for `after` (every task must succeed) and `afterDone` (any end): cancelled as
// soon as one of `after` fails (whatever the others), released once every one has finished,
// else it waits.
Verdict judgeDependencies(const std::vector<std::uint64_t>& after, const std::vector<std::uint64_t>& afterDone,
                          const BatchLookup& lookup);

// The named dependency lists of a submit, cleaned: sorted, duplicates dropped, and an id named
// in both lists kept in `after` only (the stricter). Ids are not checked here.
void normalizeDependencies(std::vector<std::uint64_t>& after, std::vector<std::uint64_t>& afterDone);

}  // namespace mesh::routing
