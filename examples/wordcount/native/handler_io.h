// How a word-count handler talks to the spore, in its two forms (see ../README.md):
//   runOnce(fn)     one process per task: the payload is all of stdin, fn's result all of stdout
//   serveTasks(fn)  a serve handler (built as NAME.serve): many tasks over the framed protocol of
//                   docs/protocol.md section 8, "TASK <id> <attempt> <bytes>\n" + payload in,
//                   "OK <bytes>\n" + result out, until EOF on stdin
// fn takes the payload and returns the result; the same fn serves both forms, and
// handlerMain(fn) picks the form by WC_SERVE.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <string>
#include <string_view>

namespace wc {

inline bool writeAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t w = write(fd, data.data(), data.size());
    if (w <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(w));
  }
  return true;
}

template <typename Fn>
int runOnce(Fn fn) {
  std::string input;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0) return 1;
    if (n == 0) break;
    input.append(buf, static_cast<std::size_t>(n));
  }
  return writeAll(STDOUT_FILENO, fn(input)) ? 0 : 1;
}

template <typename Fn>
int serveTasks(Fn fn) {
  // stdio buffering is safe here: the spore sends nothing more until it has our reply.
  char header[128];
  std::string payload;
  while (std::fgets(header, sizeof header, stdin) != nullptr) {
    unsigned long long id = 0, attempt = 0, bytes = 0;
    char end = 0;
    if (std::sscanf(header, "TASK %llu %llu %llu%c", &id, &attempt, &bytes, &end) != 4 ||
        end != '\n') {
      std::fprintf(stderr, "not a TASK header: %s\n", header);
      return 2;
    }
    payload.resize(bytes);
    if (bytes > 0 && std::fread(payload.data(), 1, bytes, stdin) != bytes) return 1;
    std::string out = fn(std::string_view(payload));
    std::string reply = "OK " + std::to_string(out.size()) + "\n";
    if (!writeAll(STDOUT_FILENO, reply) || !writeAll(STDOUT_FILENO, out)) return 1;
  }
  return 0;  // EOF: the spore is done with us
}

// Appends the line `key<TAB>count\n`.
inline void appendCount(std::string& out, std::string_view key, unsigned long long count) {
  out.append(key);
  out.push_back('\t');
  out.append(std::to_string(count));
  out.push_back('\n');
}

// main() of a handler: a serve handler when built with WC_SERVE, one-shot otherwise.
template <typename Fn>
int handlerMain(Fn fn) {
#ifdef WC_SERVE
  return serveTasks(fn);
#else
  return runOnce(fn);
#endif
}

}  // namespace wc
