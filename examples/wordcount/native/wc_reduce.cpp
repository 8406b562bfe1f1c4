// wc-reduce: a word-count reducer (and combiner). Reads `key<TAB>count` lines sorted by key on
// stdin and writes one `key<TAB>sum` line per key, in the same order. A line without a TAB
// counts 1 for the whole line as key. A handler program for Hive Mesh spores. Built twice: as
// wc-reduce (one process per task) and, with WC_SERVE defined, as wc-reduce.serve.
#include <cstdlib>
#include <string>
#include <string_view>

#include "handler_io.h"

namespace {

std::string sumSorted(std::string_view input) {
  std::string out;
  std::string_view key;
  unsigned long long sum = 0;
  bool have = false;
  while (!input.empty()) {
    std::size_t nl = input.find('\n');
    std::string_view line = input.substr(0, nl);
    input.remove_prefix(nl == std::string_view::npos ? input.size() : nl + 1);
    if (line.empty()) continue;
    std::size_t tab = line.find('\t');
    std::string_view k = line.substr(0, tab);
    unsigned long long value = 1;
    if (tab != std::string_view::npos) {
      std::string digits(line.substr(tab + 1));  // NUL-terminated for strtoull
      value = std::strtoull(digits.c_str(), nullptr, 10);
    }
    if (have && k != key) {  // the key may hold any byte but newline, NUL included
      wc::appendCount(out, key, sum);
      sum = 0;
    }
    key = k;
    sum += value;
    have = true;
  }
  if (have) wc::appendCount(out, key, sum);
  return out;
}

}  // namespace

int main() { return wc::handlerMain(sumSorted); }
