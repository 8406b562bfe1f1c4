// wc-map: a word-count mapper that combines in the mapper. Reads text on stdin and writes one
// `word<TAB>count` line per distinct whitespace-separated word (space, TAB, newline, CR, FF, VT),
// so a map task's output is as small as it can be and no combiner process is needed.
// A handler program for Hive Mesh spores (the Hadoop Streaming contract; see ../README.md).
#include <unistd.h>

#include <cstdio>
#include <string>
#include <string_view>
#include <unordered_map>

namespace {
bool isSpace(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
}  // namespace

int main() {
  std::string input;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0) return 1;
    if (n == 0) break;
    input.append(buf, static_cast<std::size_t>(n));
  }
  std::unordered_map<std::string_view, unsigned long> counts;
  counts.reserve(8192);
  std::size_t i = 0, n = input.size();
  while (i < n) {
    while (i < n && isSpace(static_cast<unsigned char>(input[i]))) ++i;
    std::size_t start = i;
    while (i < n && !isSpace(static_cast<unsigned char>(input[i]))) ++i;
    if (i > start) ++counts[std::string_view(input.data() + start, i - start)];
  }
  std::string out;
  out.reserve(counts.size() * 16);
  for (const auto& [word, count] : counts) {
    out.append(word);
    out.push_back('\t');
    out.append(std::to_string(count));
    out.push_back('\n');
  }
  std::size_t off = 0;
  while (off < out.size()) {
    ssize_t w = write(STDOUT_FILENO, out.data() + off, out.size() - off);
    if (w <= 0) return 1;
    off += static_cast<std::size_t>(w);
  }
  return 0;
}
