// Map-reduce on the spore side: the data format of the Hadoop Streaming contract (DESIGN.md
// section 7) and the two task kinds a spore runs for a map-reduce job.
//
// Records are lines. The key of a line is its bytes before the first TAB (the whole line when it
// has none). Lines are split on '\n' only; a final line without '\n' is still a line; every line
// produced by these functions ends with '\n'; empty lines are dropped (they are not records).
// Keys and values are bytes: binary bytes (NUL and bytes >= 0x80 included) and spaces are fine;
// only '\n' and TAB are special. A mapper or combiner that writes a line without a TAB has made
// that whole line the key.
//
// The order ("sorted" below) is: keys bytewise (memcmp order, unsigned bytes, a key before every
// longer key it is a prefix of), ties by the whole line the same way. Equal lines are equal
// bytes, so the order is total and every sort and merge here is deterministic.
//
// A map task's output is encodeParts(partitions): partition r holds, sorted, the lines whose key
// has partitionOf(key, R) == r. A reduce task's payload is encodeParts(runs), one run per map
// task, each that map task's partition r; the reducer reads their merge.
//
// Thread rule: everything here is a pure function of its arguments (the tasks run handlers
// through the given immutable HandlerTable), safe from any number of threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mesh/exec/registry.h"
#include "mesh/util/result.h"

namespace mesh::exec {

// The key of one line: its bytes before the first TAB, or the whole line without its '\n' when
// it has no TAB. `line` may end with '\n' or not. The view points into `line`.
std::string_view keyOf(std::string_view line);

// The partition of a key, in [0, partitions): FNV-1a 64-bit of the key bytes (offset basis
// 0xcbf29ce484222325, prime 0x100000001b3) modulo `partitions`. Stable across machines and
// releases: map outputs made by different spores and versions must agree. partitions == 0 is a
// bug (throws std::logic_error).
std::uint32_t partitionOf(std::string_view key, std::uint32_t partitions);
// The 64-bit FNV-1a hash itself (partitionOf is fnv1a64(key) % partitions).
std::uint64_t fnv1a64(std::string_view bytes);

// The lines of `text`, sorted, each ending with '\n', empty lines dropped.
std::string sortLines(std::string_view text);

// Splits the lines of `text` into `partitions` texts by partitionOf(keyOf(line)), each sorted as
// sortLines sorts (a partition that is already sorted is not sorted again). Always returns
// exactly `partitions` strings; empty lines are dropped. partitions == 0 is a bug (throws).
std::vector<std::string> partitionAndSort(std::string_view text, std::uint32_t partitions);

// Frames several byte strings in one blob. Layout (all integers little-endian):
//
//   offset 0        4 bytes   magic "MRP1"
//   offset 4        u32       N, the number of parts
//   offset 8        N x u64   the length of each part, in order
//   offset 8 + 8N             the parts' bytes, concatenated in order; the blob ends exactly
//                             after the last part (no padding, no trailing bytes)
//
// The blob is 8 + 8N + (sum of lengths) bytes. More than 2^32 - 1 parts is a bug (throws).
std::string encodeParts(const std::vector<std::string>& parts);
std::string encodeParts(const std::vector<std::string_view>& parts);

// The parts of a blob made by encodeParts, as views into `blob` (which must outlive them).
// Total: never throws and never reads outside `blob`; a blob that is too short, has the wrong
// magic, announces more parts than it can hold, lengths past its end, or trailing bytes is an
// Error that says which. Allocates at most (blob.size() / 8) views, whatever N claims.
[[nodiscard]] util::Result<std::vector<std::string_view>> decodeParts(std::string_view blob);

// The k-way merge of `runs`, each sorted as sortLines sorts, into one sorted text (each line
// ending with '\n', empty lines dropped): a heap of run cursors, O(total bytes + lines log k), no
// re-sort. A run may end without '\n'. If a run is not sorted, the result still holds exactly the
// input's lines, but not in order: sortedness of the runs is the caller's precondition, not
// checked.
std::string mergeSorted(const std::vector<std::string_view>& runs);

// The payload of reduce task `partition`: encodeParts of part `partition` of each map task's
// output (blobs made by runMapTask), in the order given. The parts are copied, so the result
// does not borrow from mapOutputs. Error (naming the map output by its index) when an output is
// malformed or has no part `partition`.
[[nodiscard]] util::Result<std::string> reducePayload(
    const std::vector<std::string_view>& mapOutputs, std::uint32_t partition);

// Splits `data` into chunks that end on line boundaries (just after a '\n', or at the end of
// data) and hold at most chunkBytes bytes, except that a line longer than chunkBytes is a chunk
// of its own. Returns [begin, end) byte offsets, in order, non-empty, covering all of `data`
// exactly; empty data gives no chunks. chunkBytes == 0 is taken as 1 (one line per chunk).
std::vector<std::pair<std::size_t, std::size_t>> chunkLines(std::string_view data,
                                                            std::size_t chunkBytes);

struct MapSpec {
  std::string mapper;            // handler name
  std::string combiner;          // handler name; empty: no combiner
  std::uint32_t partitions = 1;  // R, the number of reduce tasks (>= 1)
};

// One map task. Runs the mapper (table.run, so built-ins and programs both work) on
// input.payload (the chunk); with a combiner, sorts the mapper's output (sortLines) and runs the
// combiner on it; then partitions and sorts the result: output = encodeParts(partitionAndSort(
// result, spec.partitions)), always spec.partitions parts.
//
// A step that does not succeed fails the task with that step's outcome and its error prefixed
// by the step: "mapper: exit code 3", "combiner: timed out after 120 ms". input.timeoutMs (or,
// when it is 0, settings.limits.timeoutMs; 0 for both: no limit) bounds the whole task: each step
// gets the time that is left, and none left before a step is kTimedOut ("...: timed out after N
// ms (the task's time was used up before this step)"). input.cancel is passed to each step and
// looked at between steps (kCancelled). spec.partitions == 0 is kFailed. Never throws for
// anything a handler does.
TaskOutput runMapTask(const HandlerTable& table, const MapSpec& spec, const TaskInput& input,
                      const ProgramSettings& settings);

// One reduce task. input.payload = encodeParts(runs), each run one map task's partition
// (sorted); merges them (mergeSorted) and runs the reducer on the merged text (also when it is
// empty): output = the reducer's stdout. A payload that decodeParts refuses is kFailed ("reduce:
// malformed payload: ..."); a reducer that does not succeed fails the task with its outcome and
// "reducer: ..." as the error. Time and cancel as for runMapTask.
TaskOutput runReduceTask(const HandlerTable& table, const std::string& reducer,
                         const TaskInput& input, const ProgramSettings& settings);

}  // namespace mesh::exec
