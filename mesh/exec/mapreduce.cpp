#include "mesh/exec/mapreduce.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "mesh/util/clock.h"

namespace mesh::exec {
namespace {

constexpr char kPartsMagic[4] = {'M', 'R', 'P', '1'};
constexpr std::size_t kPartsHeader = 8;  // magic + u32 count
constexpr std::uint64_t kFnvOffset = 0xcbf29ce484222325ull;
constexpr std::uint64_t kFnvPrime = 0x100000001b3ull;

// One line of a text, without its '\n', with what comparisons need precomputed: the key's
// length and the key's first 8 bytes as a big-endian number (zero-padded), which decides most
// comparisons without touching the bytes again.
struct Line {
  const char* data;
  std::size_t size;
  std::size_t keySize;
  std::uint64_t prefix;

  std::string_view line() const { return {data, size}; }
  std::string_view key() const { return {data, keySize}; }
};

Line makeLine(const char* data, std::size_t size) {
  const void* tab = std::memchr(data, '\t', size);
  std::size_t keySize = tab == nullptr ? size : static_cast<const char*>(tab) - data;
  std::uint64_t prefix = 0;
  std::size_t n = std::min<std::size_t>(keySize, 8);
  for (std::size_t i = 0; i < 8; ++i)
    prefix = (prefix << 8) | (i < n ? static_cast<unsigned char>(data[i]) : 0u);
  return {data, size, keySize, prefix};
}

// The order of the whole module. Zero padding cannot mislead: when two prefixes differ, they
// differ at a byte both keys have, or one key ended there (and is then a prefix of the other,
// hence smaller, since the other has a non-zero byte there). Equal prefixes fall back to bytes.
// std::string_view::compare is memcmp on unsigned bytes, then length.
bool lineLess(const Line& a, const Line& b) {
  if (a.prefix != b.prefix) return a.prefix < b.prefix;
  int c = a.key().compare(b.key());
  if (c != 0) return c < 0;
  return a.line().compare(b.line()) < 0;
}

// Calls fn(data, size) for each non-empty line of text (without its '\n').
template <typename Fn>
void forEachLine(std::string_view text, Fn&& fn) {
  const char* p = text.data();
  const char* end = p + text.size();
  while (p < end) {
    const void* nl = std::memchr(p, '\n', static_cast<std::size_t>(end - p));
    const char* stop = nl == nullptr ? end : static_cast<const char*>(nl);
    if (stop > p) fn(p, static_cast<std::size_t>(stop - p));
    if (stop == end) break;
    p = stop + 1;
  }
}

std::vector<Line> parseLines(std::string_view text) {
  std::vector<Line> lines;
  forEachLine(text, [&](const char* data, std::size_t size) {
    lines.push_back(makeLine(data, size));
  });
  return lines;
}

void sortIfNeeded(std::vector<Line>& lines) {
  if (!std::is_sorted(lines.begin(), lines.end(), lineLess))
    std::sort(lines.begin(), lines.end(), lineLess);
}

std::string joinLines(const std::vector<Line>& lines) {
  std::size_t total = 0;
  for (const Line& l : lines) total += l.size + 1;
  std::string out;
  out.reserve(total);
  for (const Line& l : lines) {
    out.append(l.data, l.size);
    out.push_back('\n');
  }
  return out;
}

void putU32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void putU64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
std::uint64_t getLe(const char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

template <typename Part>
std::string encodePartsImpl(const std::vector<Part>& parts) {
  MESH_ASSERT(parts.size() <= std::numeric_limits<std::uint32_t>::max(), "too many parts");
  std::size_t total = kPartsHeader + 8 * parts.size();
  for (const auto& p : parts) total += p.size();
  std::string out;
  out.reserve(total);
  out.append(kPartsMagic, sizeof kPartsMagic);
  putU32(out, static_cast<std::uint32_t>(parts.size()));
  for (const auto& p : parts) putU64(out, p.size());
  for (const auto& p : parts) out.append(p.data(), p.size());
  return out;
}

// The time budget of a task: a deadline on the monotonic clock, or none.
class TaskClock {
 public:
  TaskClock(const TaskInput& input, const ProgramSettings& settings)
      : totalMs_(input.timeoutMs > 0 ? input.timeoutMs : settings.limits.timeoutMs),
        deadline_(totalMs_ > 0 ? util::systemClock().monotonicMs() + totalMs_ : 0) {}

  // The timeout to give the next step: > 0, or 0 for "no limit"; -1 when none is left.
  std::int64_t remainingMs() const {
    if (totalMs_ <= 0) return 0;
    std::int64_t left = deadline_ - util::systemClock().monotonicMs();
    return left > 0 ? left : -1;
  }
  std::int64_t totalMs() const { return totalMs_; }

 private:
  std::int64_t totalMs_;
  std::int64_t deadline_;
};

bool cancelled(const TaskInput& input) {
  return input.cancel != nullptr && input.cancel->load();
}

// Runs one step of a task on `payload` within what is left of the task's time. On success
// returns true with the handler's output in `out`; otherwise fills `failure` (the step's outcome,
// its error prefixed by the step) and returns false.
bool runStep(const char* step, const HandlerTable& table, const std::string& handler,
             std::string_view payload, const TaskInput& input, const ProgramSettings& settings,
             const TaskClock& clock, std::string& out, TaskOutput& failure) {
  if (cancelled(input)) {
    failure = {Outcome::kCancelled, {}, std::string(step) + ": cancelled"};
    return false;
  }
  std::int64_t remaining = clock.remainingMs();
  if (remaining < 0) {
    failure = {Outcome::kTimedOut, {},
               std::string(step) + ": timed out after " + std::to_string(clock.totalMs()) +
                   " ms (the task's time was used up before this step)"};
    return false;
  }
  TaskInput stepInput = input;
  stepInput.payload = payload;
  stepInput.timeoutMs = remaining;  // 0 only when there is no limit at all
  TaskOutput result = table.run(handler, stepInput, settings);
  if (result.outcome != Outcome::kOk) {
    failure = {result.outcome, {}, std::string(step) + ": " + result.error, result.programFault};
    if (result.programFault) failure.faultHandler = handler;
    return false;
  }
  out = std::move(result.output);
  return true;
}

}  // namespace

std::string_view keyOf(std::string_view line) {
  if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
  std::size_t tab = line.find('\t');
  return tab == std::string_view::npos ? line : line.substr(0, tab);
}

std::uint64_t fnv1a64(std::string_view bytes) {
  std::uint64_t h = kFnvOffset;
  for (char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= kFnvPrime;
  }
  return h;
}

std::uint32_t partitionOf(std::string_view key, std::uint32_t partitions) {
  MESH_ASSERT(partitions > 0, "partitionOf with zero partitions");
  return static_cast<std::uint32_t>(fnv1a64(key) % partitions);
}

std::string sortLines(std::string_view text) {
  std::vector<Line> lines = parseLines(text);
  sortIfNeeded(lines);
  return joinLines(lines);
}

std::vector<std::string> partitionAndSort(std::string_view text, std::uint32_t partitions) {
  MESH_ASSERT(partitions > 0, "partitionAndSort with zero partitions");
  std::vector<std::vector<Line>> buckets(partitions);
  forEachLine(text, [&](const char* data, std::size_t size) {
    Line line = makeLine(data, size);
    buckets[partitionOf(line.key(), partitions)].push_back(line);
  });
  std::vector<std::string> out;
  out.reserve(partitions);
  for (std::vector<Line>& bucket : buckets) {
    sortIfNeeded(bucket);
    out.push_back(joinLines(bucket));
  }
  return out;
}

std::string encodeParts(const std::vector<std::string>& parts) { return encodePartsImpl(parts); }

std::string encodeParts(const std::vector<std::string_view>& parts) {
  return encodePartsImpl(parts);
}

util::Result<std::vector<std::string_view>> decodeParts(std::string_view blob) {
  if (blob.size() < kPartsHeader)
    return util::err("parts blob of " + std::to_string(blob.size()) +
                     " bytes is shorter than its 8-byte header");
  if (std::memcmp(blob.data(), kPartsMagic, sizeof kPartsMagic) != 0)
    return util::err("parts blob does not start with the magic \"MRP1\"");
  const std::uint64_t count = getLe(blob.data() + 4, 4);
  const std::size_t room = blob.size() - kPartsHeader;
  if (count > room / 8)
    return util::err("parts blob announces " + std::to_string(count) + " parts but its " +
                     std::to_string(blob.size()) + " bytes cannot hold their lengths");
  const char* lengths = blob.data() + kPartsHeader;
  std::size_t offset = kPartsHeader + 8 * count;  // <= blob.size()
  std::vector<std::string_view> parts;
  parts.reserve(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    std::uint64_t size = getLe(lengths + 8 * i, 8);
    if (size > blob.size() - offset)
      return util::err("part " + std::to_string(i) + " of the parts blob (" +
                       std::to_string(size) + " bytes) runs past the blob's end");
    parts.emplace_back(blob.data() + offset, static_cast<std::size_t>(size));
    offset += size;
  }
  if (offset != blob.size())
    return util::err("parts blob has " + std::to_string(blob.size() - offset) +
                     " trailing bytes after its last part");
  return parts;
}

std::string mergeSorted(const std::vector<std::string_view>& runs) {
  struct Cursor {
    Line line;
    const char* next;  // the start of the line after `line`
    const char* end;
  };
  // Moves c to its next non-empty line; false at the end of its run.
  auto advance = [](Cursor& c, const char* from) {
    while (from < c.end) {
      const void* nl = std::memchr(from, '\n', static_cast<std::size_t>(c.end - from));
      const char* stop = nl == nullptr ? c.end : static_cast<const char*>(nl);
      if (stop > from) {
        c.line = makeLine(from, static_cast<std::size_t>(stop - from));
        c.next = stop == c.end ? c.end : stop + 1;
        return true;
      }
      if (stop == c.end) break;
      from = stop + 1;
    }
    return false;
  };
  // A binary min-heap of the cursors by their current line. The smallest line is written, its
  // cursor advanced and sifted down in place (or replaced by the last cursor when its run is
  // done): one sift per line, O(log k).
  std::vector<Cursor> heap;
  heap.reserve(runs.size());
  std::size_t total = 0;
  for (std::string_view run : runs) {
    total += run.size() + 1;
    Cursor c{{}, run.data(), run.data() + run.size()};
    if (advance(c, run.data())) heap.push_back(c);
  }
  auto siftDown = [&heap](std::size_t i) {
    const std::size_t n = heap.size();
    Cursor moving = heap[i];
    for (;;) {
      std::size_t child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && lineLess(heap[child + 1].line, heap[child].line)) ++child;
      if (!lineLess(heap[child].line, moving.line)) break;
      heap[i] = heap[child];
      i = child;
    }
    heap[i] = moving;
  };
  for (std::size_t i = heap.size() / 2; i-- > 0;) siftDown(i);

  std::string out;
  out.reserve(total);
  while (!heap.empty()) {
    Cursor& top = heap.front();
    out.append(top.line.data, top.line.size);
    out.push_back('\n');
    if (!advance(top, top.next)) {
      top = heap.back();
      heap.pop_back();
      if (heap.empty()) break;
    }
    siftDown(0);
  }
  return out;
}

util::Result<std::string> reducePayload(const std::vector<std::string_view>& mapOutputs,
                                        std::uint32_t partition) {
  std::vector<std::string_view> runs;
  runs.reserve(mapOutputs.size());
  for (std::size_t i = 0; i < mapOutputs.size(); ++i) {
    auto parts = decodeParts(mapOutputs[i]);
    if (!parts)
      return util::err("map output " + std::to_string(i) + ": " + parts.error().message);
    if (partition >= parts->size())
      return util::err("map output " + std::to_string(i) + " has " +
                       std::to_string(parts->size()) + " partitions, not " +
                       std::to_string(partition + 1) + " or more");
    runs.push_back((*parts)[partition]);
  }
  return encodeParts(runs);
}

std::vector<std::pair<std::size_t, std::size_t>> chunkLines(std::string_view data,
                                                            std::size_t chunkBytes) {
  if (chunkBytes == 0) chunkBytes = 1;
  std::vector<std::pair<std::size_t, std::size_t>> chunks;
  std::size_t pos = 0;
  while (pos < data.size()) {
    std::size_t end;
    if (data.size() - pos <= chunkBytes) {
      end = data.size();
    } else {
      // The last '\n' within the first chunkBytes bytes ends the chunk; with none there, the
      // line at pos is longer than chunkBytes and is a chunk of its own.
      std::size_t nl = data.substr(pos, chunkBytes).rfind('\n');
      if (nl != std::string_view::npos) {
        end = pos + nl + 1;
      } else {
        nl = data.find('\n', pos + chunkBytes);
        end = nl == std::string_view::npos ? data.size() : nl + 1;
      }
    }
    chunks.emplace_back(pos, end);
    pos = end;
  }
  return chunks;
}

TaskOutput runMapTask(const HandlerTable& table, const MapSpec& spec, const TaskInput& input,
                      const ProgramSettings& settings) {
  if (spec.partitions == 0) return {Outcome::kFailed, {}, "map: the job has zero partitions"};
  TaskClock clock(input, settings);
  TaskOutput failure;
  std::string mapped;
  if (!runStep("mapper", table, spec.mapper, input.payload, input, settings, clock, mapped,
               failure))
    return failure;
  if (!spec.combiner.empty()) {
    std::string sorted = sortLines(mapped);
    mapped.clear();
    mapped.shrink_to_fit();
    if (!runStep("combiner", table, spec.combiner, sorted, input, settings, clock, mapped,
                 failure))
      return failure;
  }
  std::string output = encodeParts(partitionAndSort(mapped, spec.partitions));
  if (cancelled(input)) return {Outcome::kCancelled, {}, "map: cancelled"};
  return {Outcome::kOk, std::move(output), {}};
}

TaskOutput runReduceTask(const HandlerTable& table, const std::string& reducer,
                         const TaskInput& input, const ProgramSettings& settings) {
  TaskClock clock(input, settings);
  auto runs = decodeParts(input.payload);
  if (!runs) return {Outcome::kFailed, {}, "reduce: malformed payload: " + runs.error().message};
  std::string merged = mergeSorted(runs.value());
  TaskOutput failure;
  std::string reduced;
  if (!runStep("reducer", table, reducer, merged, input, settings, clock, reduced, failure))
    return failure;
  return {Outcome::kOk, std::move(reduced), {}};
}

}  // namespace mesh::exec
