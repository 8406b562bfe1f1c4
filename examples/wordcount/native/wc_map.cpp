// wc-map: a word-count mapper that combines in the mapper. Reads text on stdin and writes one
// `word<TAB>count` line per distinct whitespace-separated word (space, TAB, newline, CR, FF, VT),
// so a map task's output is as small as it can be and no combiner process is needed.
// A handler program for Hive Mesh spores (the Hadoop Streaming contract; see ../README.md).
// Built twice: as wc-map (one process per task) and, with WC_SERVE defined, as wc-map.serve
// (a serve handler: one process for many tasks).
#include <string>
#include <string_view>
#include <unordered_map>

#include "handler_io.h"

namespace {

bool isSpace(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string countWords(std::string_view input) {
  std::unordered_map<std::string_view, unsigned long> counts;
  counts.reserve(8192);
  std::size_t i = 0, n = input.size();
  while (i < n) {
    while (i < n && isSpace(static_cast<unsigned char>(input[i]))) ++i;
    std::size_t start = i;
    while (i < n && !isSpace(static_cast<unsigned char>(input[i]))) ++i;
    if (i > start) ++counts[input.substr(start, i - start)];
  }
  std::string out;
  out.reserve(counts.size() * 16);
  for (const auto& [word, count] : counts) wc::appendCount(out, word, count);
  return out;
}

}  // namespace

int main() { return wc::handlerMain(countWords); }
