// Tests of the map-reduce data format (keys, partitions, sorting, framing, merging, chunking)
// and of the map and reduce tasks, run with built-ins and with shell-script handlers generated
// into a temporary directory, plus the example word count of examples/wordcount. Every run has
// a timeout; random data comes from fixed seeds.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "mesh/exec/builtins.h"
#include "mesh/exec/mapreduce.h"
#include "mesh/exec/registry.h"
#include "mesh/exec/serve.h"
#include "mesh/util/bytes.h"
#include "mesh/util/clock.h"
#include "tests/unit/exec_testing.h"

using namespace mesh::exec;
using mesh::exec::testing::nowMs;
using mesh::exec::testing::TestDir;
namespace fs = std::filesystem;

namespace {

const bool kSigpipeIgnored = (ignoreSigpipe(), true);


// --- an independent model of the contract, written plainly --------------------------------

std::vector<std::string> splitRecords(std::string_view text) {
  std::vector<std::string> lines;
  std::string cur;
  for (char c : text) {
    if (c == '\n') {
      if (!cur.empty()) lines.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) lines.push_back(cur);
  return lines;
}

bool bytesLess(std::string_view a, std::string_view b) {
  return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return static_cast<unsigned char>(x) < static_cast<unsigned char>(y);
  });
}

std::string modelKey(const std::string& line) { return line.substr(0, line.find('\t')); }

bool modelLess(const std::string& a, const std::string& b) {
  std::string ka = modelKey(a), kb = modelKey(b);
  if (ka != kb) return bytesLess(ka, kb);
  return bytesLess(a, b);
}

std::string modelSort(std::string_view text) {
  std::vector<std::string> lines = splitRecords(text);
  std::sort(lines.begin(), lines.end(), modelLess);
  std::string out;
  for (const std::string& l : lines) out += l + "\n";
  return out;
}

bool isSortedText(std::string_view text) {
  std::vector<std::string> lines = splitRecords(text);
  return std::is_sorted(lines.begin(), lines.end(), modelLess);
}

// Random lines over a small alphabet (so keys repeat and are prefixes of each other) with
// spaces, TABs, NUL, high bytes and empty lines; '\n' only as the separator.
std::string randomText(std::mt19937_64& rng, std::size_t lines, bool trailingNewline = true) {
  static const char kAlphabet[] = {'a', 'b', ' ', '\0', '\x7f', '\x80', '\xff', 'A'};
  std::string out;
  for (std::size_t i = 0; i < lines; ++i) {
    std::string line;
    if (rng() % 10 != 0) {  // one line in ten stays empty
      std::size_t keyLen = rng() % 4;
      for (std::size_t k = 0; k < keyLen; ++k) line.push_back(kAlphabet[rng() % sizeof kAlphabet]);
      if (rng() % 5 != 0) {  // most lines have a value, some an extra TAB in it
        line.push_back('\t');
        std::size_t valueLen = rng() % 3;
        for (std::size_t k = 0; k < valueLen; ++k)
          line.push_back(rng() % 6 == 0 ? '\t' : kAlphabet[rng() % sizeof kAlphabet]);
      }
      if (line.empty()) line = "x";
    }
    out += line + "\n";
  }
  if (!trailingNewline && !out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// --- handlers -----------------------------------------------------------------------------

// The word count programs, the same awk as examples/wordcount.
const char* const kWcMapper =
    "LC_ALL=C; export LC_ALL\n"
    "exec awk 'BEGIN { OFS = \"\\t1\\n\" } NF { $1 = $1; print $0 \"\\t1\" }'\n";
const char* const kWcSum =
    "LC_ALL=C; export LC_ALL\n"
    "exec awk -F '\\t' '{ k = $1 \"\"\n"
    "  if (started && k != key) { printf \"%s\\t%.0f\\n\", key, sum; sum = 0 }\n"
    "  key = k; started = 1; sum += $2 }\n"
    "  END { if (started) printf \"%s\\t%.0f\\n\", key, sum }'\n";


// A table with the built-ins and the programs of `dir`.
std::shared_ptr<const HandlerTable> tableWith(const std::string& dir) {
  HandlerRegistry registry;
  registerBuiltins(registry);
  auto programs = scanHandlerDirectory(dir);
  REQUIRE(programs.ok());
  registry.setPrograms(Source::kDirectory, programs.value());
  return registry.snapshot();
}

TaskInput taskInput(std::string_view payload, std::int64_t timeoutMs = 0,
                    const std::atomic<bool>* cancel = nullptr) {
  TaskInput in;
  in.taskId = 42;
  in.payload = payload;
  in.timeoutMs = timeoutMs;
  in.cancel = cancel;
  return in;
}

std::vector<std::string> decodeOwned(std::string_view blob) {
  auto parts = decodeParts(blob);
  REQUIRE(parts.ok());
  return std::vector<std::string>(parts->begin(), parts->end());
}

// Word counts the way the word count example defines words (split on space, TAB, newline).
std::map<std::string, long> countWords(std::string_view text) {
  std::map<std::string, long> counts;
  std::string cur;
  for (char c : text) {
    if (c == ' ' || c == '\t' || c == '\n') {
      if (!cur.empty()) ++counts[cur];
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) ++counts[cur];
  return counts;
}

// A small corpus whose words include numbers that awk would compare as equal numbers ("1",
// "01", "1.0", "1e0"), high bytes and long runs of spaces.
std::string wordCorpus(std::size_t lines, std::uint64_t seed) {
  static const std::vector<std::string> kWords = {
      "the", "a",           "mesh",     "spore", "nexus", "1",   "01",     "1.0", "1e0",
      "+1",  "caf\xc3\xa9", "\xff\xfe", "x",     "xx",    "map", "reduce", "Map", "-"};
  std::mt19937_64 rng(seed);
  std::string text;
  for (std::size_t i = 0; i < lines; ++i) {
    std::size_t n = rng() % 12;
    for (std::size_t w = 0; w < n; ++w) {
      text += kWords[rng() % kWords.size()];
      text += rng() % 7 == 0 ? "   " : (rng() % 9 == 0 ? "\t" : " ");
    }
    text += "\n";
  }
  return text;
}

// The whole job as the nexus runs it: chunks -> map tasks -> R reduce tasks; returns the
// concatenated reducer outputs, checking each is sorted and holds only its partition's keys.
std::string runJob(const HandlerTable& table, const ProgramSettings& settings,
                   std::string_view input, std::size_t chunkBytes, const MapSpec& spec,
                   const std::string& reducer, std::size_t* mapTasks = nullptr) {
  std::vector<std::string> mapOutputs;
  for (auto [begin, end] : chunkLines(input, chunkBytes)) {
    TaskOutput out = runMapTask(table, spec, taskInput(input.substr(begin, end - begin)), settings);
    REQUIRE_MESSAGE(out.outcome == Outcome::kOk, out.error);
    mapOutputs.push_back(std::move(out.output));
  }
  if (mapTasks != nullptr) *mapTasks = mapOutputs.size();
  std::vector<std::string_view> views(mapOutputs.begin(), mapOutputs.end());
  std::string all;
  for (std::uint32_t r = 0; r < spec.partitions; ++r) {
    auto payload = reducePayload(views, r);
    REQUIRE(payload.ok());
    TaskOutput out = runReduceTask(table, reducer, taskInput(payload.value()), settings);
    REQUIRE_MESSAGE(out.outcome == Outcome::kOk, out.error);
    CHECK(isSortedText(out.output));
    for (const std::string& line : splitRecords(out.output))
      CHECK(partitionOf(keyOf(line), spec.partitions) == r);
    all += out.output;
  }
  return all;
}

std::map<std::string, long> parseCounts(std::string_view text) {
  std::map<std::string, long> counts;
  for (const std::string& line : splitRecords(text)) {
    std::size_t tab = line.find('\t');
    REQUIRE(tab != std::string::npos);
    CHECK(counts.count(line.substr(0, tab)) == 0);  // one line per word
    counts[line.substr(0, tab)] = std::stol(line.substr(tab + 1));
  }
  return counts;
}

// examples/wordcount in the source tree: the test binary is <build>/tests/mapreduce_test and
// __FILE__ is this file's path as the compiler was given it (relative to <build>, or absolute).
fs::path exampleDir() {
  fs::path exe = fs::read_symlink("/proc/self/exe");
  fs::path self = fs::path(__FILE__).is_absolute() ? fs::path(__FILE__)
                                                   : exe.parent_path().parent_path() / __FILE__;
  return fs::weakly_canonical(self.parent_path() / ".." / ".." / "examples" / "wordcount");
}

// The build directory: the test binary is <build>/tests/mapreduce_test.
fs::path buildRoot() {
  return fs::read_symlink("/proc/self/exe").parent_path().parent_path();
}

}  // namespace

// --- keys and partitions ------------------------------------------------------------------

TEST_CASE("the key of a line is its bytes before the first tab, or the whole line") {
  CHECK(keyOf("word\t1") == "word");
  CHECK(keyOf("word\t1\n") == "word");
  CHECK(keyOf("a b\tc\td") == "a b");
  CHECK(keyOf("no tab here") == "no tab here");
  CHECK(keyOf("no tab here\n") == "no tab here");
  CHECK(keyOf("\tvalue") == "");
  CHECK(keyOf("") == "");
  CHECK(keyOf(std::string_view("\0\xff\t\0", 4)) == std::string_view("\0\xff", 2));
}

TEST_CASE("keys hash with the published FNV-1a 64-bit vectors") {
  CHECK(fnv1a64("") == 0xcbf29ce484222325ull);
  CHECK(fnv1a64("a") == 0xaf63dc4c8601ec8cull);
  CHECK(fnv1a64("foobar") == 0x85944171f73967e8ull);
}

TEST_CASE("the partition of a key is stable: fixed values that must never change") {
  // Computed independently (Python) from FNV-1a 64; a change here breaks mixed-version jobs.
  CHECK(partitionOf("", 1000) == 37);
  CHECK(partitionOf("a", 1000) == 996);
  CHECK(partitionOf("foobar", 1000) == 968);
  CHECK(partitionOf("hello", 7) == 5);
  CHECK(partitionOf("the", 3) == 0);
  CHECK(partitionOf("word\xff", 3) == 2);
  CHECK(partitionOf("word\xff", 7) == 4);
  CHECK(partitionOf("anything", 1) == 0);
  CHECK(partitionOf("x", UINT32_MAX) == fnv1a64("x") % UINT32_MAX);
}

TEST_CASE("keys spread evenly over the partitions") {
  for (std::uint32_t r : {2u, 3u, 7u, 16u}) {
    std::vector<int> counts(r, 0);
    const int n = 20'000;
    for (int i = 0; i < n; ++i) {
      std::uint32_t p = partitionOf("word" + std::to_string(i), r);
      REQUIRE(p < r);
      ++counts[p];
    }
    for (int c : counts) {
      CHECK(c > n / static_cast<int>(r) * 8 / 10);
      CHECK(c < n / static_cast<int>(r) * 12 / 10);
    }
  }
}

TEST_CASE("zero partitions is a bug, not a division by zero") {
  CHECK_THROWS_AS(partitionOf("a", 0), std::logic_error);
  CHECK_THROWS_AS(partitionAndSort("a\n", 0), std::logic_error);
}

// --- sorting ------------------------------------------------------------------------------

TEST_CASE("lines sort bytewise by key with high bytes after ASCII") {
  CHECK(sortLines("\xff\t1\nb\t2\n\x80\t3\na\t4\nB\t5\n") ==
        "B\t5\na\t4\nb\t2\n\x80\t3\n\xff\t1\n");
}

TEST_CASE("lines with equal keys sort by the whole line") {
  CHECK(sortLines("k\t3\nk\t1\nk\t2\nk\t1\n") == "k\t1\nk\t1\nk\t2\nk\t3\n");
  // the key decides before the value: "a\tz" < "a b\ta" although ' ' < '\t' is false
  CHECK(sortLines("a b\ta\na\tz\n") == "a\tz\na b\ta\n");
  // a line without a TAB is its own key, a prefix of the same key with a value
  CHECK(sortLines("a\tv\na\n") == "a\na\tv\n");
}

TEST_CASE("keys with spaces and NUL bytes sort as bytes") {
  using namespace std::string_literals;
  std::string in = "b c\t1\nb\t2\nb  \t3\n\0x\t4\n"s;
  std::string want = "\0x\t4\nb\t2\nb  \t3\nb c\t1\n"s;
  REQUIRE(in.size() == 21);
  CHECK(sortLines(in) == want);
}

TEST_CASE("sorting adds the missing final newline and drops empty lines") {
  CHECK(sortLines("b\t1\n\n\na\t2") == "a\t2\nb\t1\n");
  CHECK(sortLines("") == "");
  CHECK(sortLines("\n\n\n") == "");
  CHECK(sortLines("only") == "only\n");
}

TEST_CASE("sorting agrees with a plain model on seeded random lines") {
  std::mt19937_64 rng(1);
  for (int round = 0; round < 200; ++round) {
    std::string text = randomText(rng, rng() % 60, round % 2 == 0);
    std::string sorted = sortLines(text);
    REQUIRE(sorted == modelSort(text));
    CHECK(sortLines(sorted) == sorted);  // idempotent
  }
}

// --- partitioning -------------------------------------------------------------------------

TEST_CASE("every line lands in exactly the partition its key hashes to, sorted") {
  std::mt19937_64 rng(2);
  for (std::uint32_t r : {1u, 2u, 3u, 5u}) {
    for (int round = 0; round < 50; ++round) {
      std::string text = randomText(rng, rng() % 80, round % 3 != 0);
      std::vector<std::string> parts = partitionAndSort(text, r);
      REQUIRE(parts.size() == r);
      std::string all;
      for (std::uint32_t p = 0; p < r; ++p) {
        CHECK(parts[p] == modelSort(parts[p]));
        for (const std::string& line : splitRecords(parts[p]))
          CHECK(partitionOf(modelKey(line), r) == p);
        all += parts[p];
      }
      CHECK(modelSort(all) == modelSort(text));  // nothing lost, nothing added
    }
  }
}

TEST_CASE("partitioning empty text gives empty partitions") {
  std::vector<std::string> parts = partitionAndSort("\n\n", 4);
  REQUIRE(parts.size() == 4);
  for (const std::string& p : parts) CHECK(p.empty());
}

// --- framing ------------------------------------------------------------------------------

TEST_CASE("parts round-trip through encode and decode, with the documented layout") {
  std::vector<std::string> parts = {"a\t1\n", "", std::string("\0\xff\n", 3), "xyz"};
  std::string blob = encodeParts(parts);
  CHECK(blob.size() == 8 + 8 * parts.size() + 4 + 0 + 3 + 3);
  CHECK(blob.substr(0, 4) == "MRP1");
  CHECK(blob.substr(4, 4) == std::string("\x04\0\0\0", 4));
  CHECK(blob.substr(8, 8) == std::string("\x04\0\0\0\0\0\0\0", 8));
  CHECK(blob.substr(blob.size() - 3) == "xyz");
  CHECK(decodeOwned(blob) == parts);

  std::vector<std::string_view> views(parts.begin(), parts.end());
  CHECK(encodeParts(views) == blob);

  std::string none = encodeParts(std::vector<std::string>{});
  CHECK(none == std::string("MRP1\0\0\0\0", 8));
  CHECK(decodeOwned(none).empty());
}

TEST_CASE("a parts blob truncated at any length is refused") {
  std::string blob = encodeParts(std::vector<std::string>{"one\n", "two\n", "", "three"});
  for (std::size_t n = 0; n < blob.size(); ++n) {
    auto parts = decodeParts(std::string_view(blob).substr(0, n));
    CHECK_MESSAGE(!parts.ok(), "prefix of length " << n);
  }
  CHECK(decodeParts(blob).ok());
}

TEST_CASE("a parts blob with trailing bytes is refused") {
  std::string blob = encodeParts(std::vector<std::string>{"a", "b"});
  auto parts = decodeParts(blob + "x");
  REQUIRE(!parts.ok());
  CHECK(parts.error().message.find("trailing") != std::string::npos);
}

TEST_CASE("a parts blob with the wrong magic is refused") {
  std::string blob = encodeParts(std::vector<std::string>{"a"});
  blob[3] = '2';
  auto parts = decodeParts(blob);
  REQUIRE(!parts.ok());
  CHECK(parts.error().message.find("magic") != std::string::npos);
  CHECK(!decodeParts("plain text, not a blob\n").ok());
}

TEST_CASE("a part length past the blob's end is refused without overflow") {
  std::string blob = encodeParts(std::vector<std::string>{"abc", "de"});
  for (std::uint64_t bad :
       std::vector<std::uint64_t>{4, 6, 1ull << 40, UINT64_MAX, UINT64_MAX - 1}) {
    std::string b = blob;
    for (int i = 0; i < 8; ++i) b[8 + i] = static_cast<char>((bad >> (8 * i)) & 0xff);
    auto parts = decodeParts(b);
    CHECK_MESSAGE(!parts.ok(), "length " << bad);
  }
  // the second length so large that offset + length would wrap around
  std::string b = blob;
  for (int i = 0; i < 8; ++i) b[16 + i] = '\xff';
  CHECK(!decodeParts(b).ok());
}

TEST_CASE("a huge part count is refused before anything is allocated for it") {
  for (std::uint32_t count : {UINT32_MAX, 1u << 28, 3u}) {
    std::string b("MRP1", 4);
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<char>((count >> (8 * i)) & 0xff));
    b += std::string(16, '\0');  // room for two lengths only
    auto parts = decodeParts(b);
    REQUIRE(!parts.ok());
    CHECK(parts.error().message.find("announces") != std::string::npos);
  }
}

TEST_CASE("decoding seeded random and mutated blobs never throws, and what decodes re-encodes") {
  std::mt19937_64 rng(3);
  std::string valid = encodeParts(std::vector<std::string>{"k\t1\n", "", "zz\n", "q"});
  int decoded = 0;
  for (int round = 0; round < 20'000; ++round) {
    std::string blob;
    switch (round % 3) {
      case 0: {  // random bytes, sometimes with the right magic
        std::size_t n = rng() % 64;
        for (std::size_t i = 0; i < n; ++i) blob.push_back(static_cast<char>(rng()));
        if (rng() % 2 == 0 && blob.size() >= 4) blob.replace(0, 4, "MRP1");
        break;
      }
      case 1: {  // a valid blob with a few bytes changed
        blob = valid;
        for (int k = 0; k < 1 + static_cast<int>(rng() % 3); ++k)
          blob[rng() % blob.size()] = static_cast<char>(rng());
        break;
      }
      default: {  // a valid blob of random parts, cut or extended at random
        std::vector<std::string> parts(rng() % 5);
        for (auto& p : parts) p = std::string(rng() % 9, static_cast<char>(rng()));
        blob = encodeParts(parts);
        if (rng() % 2 == 0) blob.resize(rng() % (blob.size() + 3), '\x01');
        break;
      }
    }
    bool threw = false;
    try {
      auto parts = decodeParts(blob);
      if (parts.ok()) {
        ++decoded;
        CHECK(encodeParts(parts.value()) == blob);
      }
    } catch (...) {
      threw = true;
    }
    REQUIRE_MESSAGE(!threw, "round " << round);
  }
  CHECK(decoded > 100);  // the loop reaches the success path too
}

// --- merging ------------------------------------------------------------------------------

TEST_CASE("merging sorted runs equals sorting their concatenation, on seeded random data") {
  std::mt19937_64 rng(4);
  for (int round = 0; round < 300; ++round) {
    std::size_t k = rng() % 7;  // 0 runs too
    std::vector<std::string> runs;
    std::string concatenation;
    for (std::size_t i = 0; i < k; ++i) {
      std::string text = rng() % 4 == 0 ? std::string() : randomText(rng, rng() % 40);
      std::string run = sortLines(text);
      // runs may end without '\n' and hold empty lines: the merge must cope
      if (rng() % 3 == 0 && !run.empty()) run.pop_back();
      if (rng() % 5 == 0) run = "\n" + run;
      concatenation += run + "\n";
      runs.push_back(run);
    }
    std::vector<std::string_view> views(runs.begin(), runs.end());
    REQUIRE(mergeSorted(views) == modelSort(concatenation));
  }
}

TEST_CASE("merging keeps duplicate lines from different runs") {
  std::vector<std::string_view> runs = {"a\t1\nb\t1\n", "a\t1\nb\t2", "", "a\t1\n"};
  CHECK(mergeSorted(runs) == "a\t1\na\t1\na\t1\nb\t1\nb\t2\n");
  CHECK(mergeSorted({}) == "");
}

// --- chunking -----------------------------------------------------------------------------

void checkChunks(std::string_view data, std::size_t chunkBytes) {
  auto chunks = chunkLines(data, chunkBytes);
  std::size_t pos = 0;
  for (auto [begin, end] : chunks) {
    REQUIRE(begin == pos);  // contiguous, in order
    REQUIRE(end > begin);   // never empty
    std::string_view chunk = data.substr(begin, end - begin);
    // ends on a line boundary
    CHECK((end == data.size() || data[end - 1] == '\n'));
    // at most chunkBytes, unless it is one line longer than that
    if (chunk.size() > std::max<std::size_t>(chunkBytes, 1)) {
      CHECK(chunk.find('\n') >= chunk.size() - 1);
    }
    pos = end;
  }
  CHECK(pos == data.size());
}

TEST_CASE("chunks cover the input exactly and end on newlines") {
  std::string text;
  for (int i = 0; i < 500; ++i) text += std::string(1 + i % 37, 'a' + i % 26) + "\n";
  for (std::size_t size : {0u, 1u, 2u, 10u, 37u, 38u, 100u, 1000u, 100000u})
    checkChunks(text, size);
  auto chunks = chunkLines(text, 1000);
  CHECK(chunks.size() >= text.size() / 1000);
  CHECK(chunks.size() <= text.size() / (1000 - 38) + 1);
}

TEST_CASE("a line longer than the chunk size is a chunk of its own") {
  std::string text = "short\n" + std::string(5000, 'x') + "\nend\n";
  auto chunks = chunkLines(text, 100);
  REQUIRE(chunks.size() == 3);
  CHECK(chunks[0] == std::pair<std::size_t, std::size_t>(0, 6));
  CHECK(chunks[1] == std::pair<std::size_t, std::size_t>(6, 5007));
  CHECK(chunks[2] == std::pair<std::size_t, std::size_t>(5007, text.size()));
  // the same huge line without a final newline
  std::string tail = "a\n" + std::string(500, 'y');
  auto t = chunkLines(tail, 10);
  REQUIRE(t.size() == 2);
  CHECK(t[1] == std::pair<std::size_t, std::size_t>(2, tail.size()));
}

TEST_CASE("empty input has no chunks and a last line without newline is chunked") {
  CHECK(chunkLines("", 100).empty());
  auto one = chunkLines("abc", 100);
  REQUIRE(one.size() == 1);
  CHECK(one[0] == std::pair<std::size_t, std::size_t>(0, 3));
  checkChunks("a\nb\nc", 2);
  checkChunks("a\nb\nc", 3);
  checkChunks("\n\n\n\n", 1);
}

TEST_CASE("chunking seeded random text always satisfies the contract") {
  std::mt19937_64 rng(5);
  for (int round = 0; round < 300; ++round) {
    std::string text = randomText(rng, rng() % 50, rng() % 2 == 0);
    checkChunks(text, rng() % 40);
  }
}

// --- reduce payloads ----------------------------------------------------------------------

TEST_CASE("a reduce payload holds one partition of every map output, in order") {
  std::string m0 = encodeParts(std::vector<std::string>{"a\t1\n", "b\t1\n"});
  std::string m1 = encodeParts(std::vector<std::string>{"c\t1\n", "d\t1\n"});
  std::vector<std::string_view> outputs = {m0, m1};
  auto p1 = reducePayload(outputs, 1);
  REQUIRE(p1.ok());
  CHECK(decodeOwned(p1.value()) == std::vector<std::string>{"b\t1\n", "d\t1\n"});

  auto beyond = reducePayload(outputs, 2);
  REQUIRE(!beyond.ok());
  CHECK(beyond.error().message.find("map output 0") != std::string::npos);

  std::vector<std::string_view> bad = {m0, "garbage"};
  auto broken = reducePayload(bad, 0);
  REQUIRE(!broken.ok());
  CHECK(broken.error().message.find("map output 1") != std::string::npos);
}

// --- map and reduce tasks -----------------------------------------------------------------

TEST_CASE("a map task with echo as the identity mapper partitions and sorts the chunk") {
  TestDir dir;
  auto table = tableWith(dir.handlers);
  std::string chunk = "b\t1\na\t2\n\nc d\t3\na\t1\n\xff\t9";
  TaskOutput out = runMapTask(*table, {"echo", "", 3}, taskInput(chunk), dir.settings());
  REQUIRE_MESSAGE(out.outcome == Outcome::kOk, out.error);
  CHECK(decodeOwned(out.output) == partitionAndSort(chunk, 3));

  TaskOutput one = runMapTask(*table, {"echo", "echo", 1}, taskInput(chunk), dir.settings());
  REQUIRE(one.outcome == Outcome::kOk);
  CHECK(decodeOwned(one.output) == std::vector<std::string>{sortLines(chunk)});
}

TEST_CASE("a map task runs the combiner on the mapper's sorted output") {
  TestDir dir;
  // the combiner fails unless its input is sorted, and marks every line it passes on
  dir.handler("check-sorted",
             "LC_ALL=C; export LC_ALL\n"
             "tee in | sort -c -t \"$(printf '\\t')\" -k1,1 -k2 || exit 5\n"
             "sed 's/$/!/' in\n");
  auto table = tableWith(dir.handlers);
  TaskOutput out = runMapTask(*table, {"echo", "check-sorted", 2}, taskInput("z\t1\ny\t1\nx\t2\n"),
                              dir.settings());
  REQUIRE_MESSAGE(out.outcome == Outcome::kOk, out.error);
  CHECK(decodeOwned(out.output) == partitionAndSort("x\t2!\ny\t1!\nz\t1!\n", 2));
}

TEST_CASE("a failing mapper fails the map task and the error names the mapper") {
  TestDir dir;
  dir.handler("bad-mapper", "cat >/dev/null; echo 'mapper broke' >&2; exit 3\n");
  auto table = tableWith(dir.handlers);
  TaskOutput out = runMapTask(*table, {"bad-mapper", "echo", 2}, taskInput("a\n"), dir.settings());
  CHECK(out.outcome == Outcome::kFailed);
  CHECK(out.error.rfind("mapper: ", 0) == 0);
  CHECK(out.error.find("mapper broke") != std::string::npos);
  CHECK(out.output.empty());

  TaskOutput builtin = runMapTask(*table, {"fail", "", 1}, taskInput("no good"), dir.settings());
  CHECK(builtin.outcome == Outcome::kFailed);
  CHECK(builtin.error == "mapper: no good");

  TaskOutput unknown = runMapTask(*table, {"nope", "", 1}, taskInput("x"), dir.settings());
  CHECK(unknown.outcome == Outcome::kUnknownHandler);
  CHECK(unknown.error.rfind("mapper: unknown handler 'nope'", 0) == 0);
}

TEST_CASE("a failing combiner fails the map task and the error names the combiner") {
  TestDir dir;
  dir.handler("bad-combiner", "cat >/dev/null; echo 'combiner broke' >&2; exit 4\n");
  dir.handler("crash-combiner", "kill -SEGV $$\n");
  auto table = tableWith(dir.handlers);
  TaskOutput out =
      runMapTask(*table, {"echo", "bad-combiner", 2}, taskInput("a\t1\n"), dir.settings());
  CHECK(out.outcome == Outcome::kFailed);
  CHECK(out.error.rfind("combiner: ", 0) == 0);
  CHECK(out.error.find("combiner broke") != std::string::npos);

  TaskOutput crash =
      runMapTask(*table, {"echo", "crash-combiner", 2}, taskInput("a\t1\n"), dir.settings());
  CHECK(crash.outcome == Outcome::kCrashed);
  CHECK(crash.error.rfind("combiner: ", 0) == 0);
  // The fault is the combiner's (a bundle's trial charges the combiner's bundle, not the mapper's).
  CHECK(crash.programFault);
  CHECK(crash.faultHandler == "crash-combiner");
  CHECK_FALSE(out.programFault);  // a plain failure is nobody's fault
  CHECK(out.faultHandler.empty());
}

TEST_CASE("a mapper that outlives the task's timeout is timed out") {
  TestDir dir;
  dir.handler("slow-mapper", "sleep 10\n");
  auto table = tableWith(dir.handlers);
  std::int64_t start = nowMs();
  TaskOutput out =
      runMapTask(*table, {"slow-mapper", "", 1}, taskInput("a\n", 300), dir.settings());
  CHECK(out.outcome == Outcome::kTimedOut);
  CHECK(out.error.rfind("mapper: ", 0) == 0);
  CHECK(nowMs() - start < 5000);
}

TEST_CASE("the task's timeout covers mapper and combiner together") {
  TestDir dir;
  dir.handler("slowish-mapper", "sleep 0.4; cat\n");
  dir.handler("slow-combiner", "sleep 10\n");
  auto table = tableWith(dir.handlers);
  std::int64_t start = nowMs();
  TaskOutput out = runMapTask(*table, {"slowish-mapper", "slow-combiner", 1},
                              taskInput("a\t1\n", 900), dir.settings());
  std::int64_t elapsed = nowMs() - start;
  CHECK(out.outcome == Outcome::kTimedOut);
  CHECK(out.error.rfind("combiner: ", 0) == 0);
  // the combiner got what was left (about 0.5 s), not a fresh 0.9 s; SIGTERM ends sleep at once
  CHECK(elapsed >= 850);
  CHECK(elapsed < 1700);
}

TEST_CASE("a task whose time is used up before a step does not start the step") {
  TestDir dir;
  auto table = tableWith(dir.handlers);
  // the built-in sleep overruns its own timeout check by at most a slice; the combiner is then
  // refused without being started
  TaskOutput out = runMapTask(*table, {"sleep", "fail", 1}, taskInput("100", 100), dir.settings());
  CHECK(out.outcome == Outcome::kTimedOut);
  bool named = out.error.rfind("mapper: ", 0) == 0 || out.error.rfind("combiner: ", 0) == 0;
  CHECK(named);
}

TEST_CASE("a cancelled task starts nothing and says so") {
  TestDir dir;
  dir.handler("marker", "touch " + dir.path + "/started\ncat\n");
  auto table = tableWith(dir.handlers);
  std::atomic<bool> cancel{true};
  TaskOutput map =
      runMapTask(*table, {"marker", "", 2}, taskInput("a\n", 0, &cancel), dir.settings());
  CHECK(map.outcome == Outcome::kCancelled);
  CHECK(map.error.rfind("mapper: ", 0) == 0);
  std::string payload = encodeParts(std::vector<std::string>{"a\n"});
  TaskOutput reduce =
      runReduceTask(*table, "marker", taskInput(payload, 0, &cancel), dir.settings());
  CHECK(reduce.outcome == Outcome::kCancelled);
  CHECK(!fs::exists(dir.path + "/started"));
}

TEST_CASE("zero partitions fails the map task instead of throwing") {
  TestDir dir;
  auto table = tableWith(dir.handlers);
  TaskOutput out = runMapTask(*table, {"echo", "", 0}, taskInput("a\n"), dir.settings());
  CHECK(out.outcome == Outcome::kFailed);
}

TEST_CASE("a reduce task merges the runs and feeds them to the reducer") {
  TestDir dir;
  dir.handler("count-lines", "wc -l | tr -d ' '\n");
  auto table = tableWith(dir.handlers);
  std::string payload =
      encodeParts(std::vector<std::string>{"b\t1\nd\t1\n", "", "a\t1\nc\t1", "b\t1\n"});
  TaskOutput echo = runReduceTask(*table, "echo", taskInput(payload), dir.settings());
  REQUIRE_MESSAGE(echo.outcome == Outcome::kOk, echo.error);
  CHECK(echo.output == "a\t1\nb\t1\nb\t1\nc\t1\nd\t1\n");
  TaskOutput count = runReduceTask(*table, "count-lines", taskInput(payload), dir.settings());
  REQUIRE_MESSAGE(count.outcome == Outcome::kOk, count.error);
  CHECK(count.output == "5\n");
  // no runs at all: the reducer still runs, on empty input
  TaskOutput empty = runReduceTask(
      *table, "count-lines", taskInput(encodeParts(std::vector<std::string>{})), dir.settings());
  REQUIRE(empty.outcome == Outcome::kOk);
  CHECK(empty.output == "0\n");
}

TEST_CASE("a reduce task with a malformed payload fails with a clear error") {
  TestDir dir;
  auto table = tableWith(dir.handlers);
  std::string payload = encodeParts(std::vector<std::string>{"a\n", "b\n"});
  for (std::string_view bad :
       {std::string_view("a\tb\n"), std::string_view(payload).substr(0, 12), std::string_view()}) {
    TaskOutput out = runReduceTask(*table, "echo", taskInput(bad), dir.settings());
    CHECK(out.outcome == Outcome::kFailed);
    CHECK(out.error.rfind("reduce: malformed payload: ", 0) == 0);
  }
}

TEST_CASE("a failing or slow reducer fails the reduce task and the error names the reducer") {
  TestDir dir;
  dir.handler("bad-reducer", "cat >/dev/null; echo 'reducer broke' >&2; exit 2\n");
  dir.handler("slow-reducer", "sleep 10\n");
  auto table = tableWith(dir.handlers);
  std::string payload = encodeParts(std::vector<std::string>{"a\t1\n"});
  TaskOutput out = runReduceTask(*table, "bad-reducer", taskInput(payload), dir.settings());
  CHECK(out.outcome == Outcome::kFailed);
  CHECK(out.error.rfind("reducer: ", 0) == 0);
  CHECK(out.error.find("reducer broke") != std::string::npos);

  std::int64_t start = nowMs();
  TaskOutput slow = runReduceTask(*table, "slow-reducer", taskInput(payload, 300), dir.settings());
  CHECK(slow.outcome == Outcome::kTimedOut);
  CHECK(slow.error.rfind("reducer: ", 0) == 0);
  CHECK(nowMs() - start < 5000);
}

TEST_CASE("a tiny word count over 3 chunks and 3 partitions matches a count made here") {
  TestDir dir;
  dir.handler("wc-mapper", kWcMapper);
  dir.handler("wc-combiner", kWcSum);
  dir.handler("wc-reducer", kWcSum);
  auto table = tableWith(dir.handlers);
  std::string text = wordCorpus(300, 6);
  std::size_t chunkBytes = text.size() / 3 + 1;  // the smallest that gives 3 chunks
  while (chunkLines(text, chunkBytes).size() > 3) chunkBytes += 8;
  std::size_t mapTasks = 0;
  std::string result = runJob(*table, dir.settings(), text, chunkBytes,
                              {"wc-mapper", "wc-combiner", 3}, "wc-reducer", &mapTasks);
  CHECK(mapTasks == 3);
  std::map<std::string, long> want = countWords(text);
  REQUIRE(want.size() > 10);
  CHECK(want.count("01") == 1);  // numbers that awk must not compare as numbers are there
  CHECK(want.count("1.0") == 1);
  CHECK(parseCounts(result) == want);

  // without a combiner, and with one partition, the answer is the same
  std::string plain =
      runJob(*table, dir.settings(), text, chunkBytes, {"wc-mapper", "", 1}, "wc-reducer");
  CHECK(parseCounts(plain) == want);
}

TEST_CASE("the example word count programs count a corpus like a count made here") {
  fs::path examples = exampleDir();
  REQUIRE_MESSAGE(fs::exists(examples / "mapper"), "no " << examples.string());
  TestDir dir;
  auto table = tableWith(examples.string());
  REQUIRE(table->has("mapper"));
  REQUIRE(table->has("combiner"));
  REQUIRE(table->has("reducer"));
  std::string text = wordCorpus(3000, 7) + "trailing words without newline";
  std::size_t mapTasks = 0;
  std::string result = runJob(*table, dir.settings(), text, 8 * 1024, {"mapper", "combiner", 4},
                              "reducer", &mapTasks);
  CHECK(mapTasks > 3);
  CHECK(parseCounts(result) == countWords(text));

  // an empty input: no chunks, so no map tasks; every reducer runs on nothing and says nothing
  CHECK(runJob(*table, dir.settings(), "", 1024, {"mapper", "combiner", 2}, "reducer").empty());
}

TEST_CASE("the compiled word count as serve handlers gives the same map and reduce outputs") {
  fs::path examples = buildRoot() / "examples" / "wordcount";
  REQUIRE_MESSAGE(fs::exists(examples / "serve" / "wc-map.serve"), "not built: " << examples);
  TestDir dir;
  auto once = tableWith((examples / "native").string());
  auto serve = tableWith((examples / "serve").string());
  REQUIRE_FALSE(once->isServe("wc-map"));
  REQUIRE(serve->isServe("wc-map"));
  REQUIRE(serve->isServe("wc-reduce"));
  ServeProcesses pool;
  const MapSpec spec{"wc-map", "", 3};
  std::string text = wordCorpus(4000, 11);

  std::vector<std::string> mapOutputs;
  pid_t mapPid = 0;
  for (auto [begin, end] : chunkLines(text, 8 * 1024)) {
    TaskInput in = taskInput(std::string_view(text).substr(begin, end - begin));
    TaskOutput want = runMapTask(*once, spec, in, dir.settings());
    in.serve = &pool;
    TaskOutput got = runMapTask(*serve, spec, in, dir.settings());
    REQUIRE_MESSAGE(got.outcome == Outcome::kOk, got.error);
    REQUIRE(want.outcome == Outcome::kOk);
    CHECK(got.output == want.output);
    if (mapPid == 0) mapPid = pool.pidOf("wc-map");
    CHECK(pool.pidOf("wc-map") == mapPid);  // one process served every map task
    mapOutputs.push_back(std::move(got.output));
  }
  CHECK(mapOutputs.size() > 5);

  std::vector<std::string_view> views(mapOutputs.begin(), mapOutputs.end());
  std::string all;
  for (std::uint32_t r = 0; r < spec.partitions; ++r) {
    auto payload = reducePayload(views, r);
    REQUIRE(payload.ok());
    TaskInput in = taskInput(payload.value());
    TaskOutput want = runReduceTask(*once, "wc-reduce", in, dir.settings());
    in.serve = &pool;
    TaskOutput got = runReduceTask(*serve, "wc-reduce", in, dir.settings());
    REQUIRE_MESSAGE(got.outcome == Outcome::kOk, got.error);
    CHECK(got.output == want.output);
    all += got.output;
  }
  CHECK(pool.size() == 2);
  CHECK(parseCounts(all) == countWords(text));
}
