// wc-reduce: a word-count reducer (and combiner). Reads `key<TAB>count` lines sorted by key on
// stdin and writes one `key<TAB>sum` line per key, in the same order, streaming. A line without
// a TAB counts 1 for the whole line as key. A handler program for Hive Mesh spores.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {
// The key may hold any byte but newline, NUL included: write it with fwrite, not %s.
void emit(const std::string& key, unsigned long long sum) {
  std::fwrite(key.data(), 1, key.size(), stdout);
  std::printf("\t%llu\n", sum);
}
}  // namespace

int main() {
  std::string key;
  unsigned long long sum = 0;
  bool have = false;
  char* line = nullptr;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, stdin)) >= 0) {
    if (len > 0 && line[len - 1] == '\n') line[--len] = '\0';
    if (len == 0) continue;
    char* tab = static_cast<char*>(std::memchr(line, '\t', static_cast<size_t>(len)));
    std::size_t keyLen = tab ? static_cast<std::size_t>(tab - line) : static_cast<std::size_t>(len);
    unsigned long long value = tab ? std::strtoull(tab + 1, nullptr, 10) : 1;
    if (have && (key.size() != keyLen || std::memcmp(key.data(), line, keyLen) != 0)) {
      emit(key, sum);
      sum = 0;
    }
    key.assign(line, keyLen);
    sum += value;
    have = true;
  }
  if (have) emit(key, sum);
  std::free(line);
  return std::ferror(stdout) ? 1 : 0;
}
