// Helpers shared by the tests of the exec module that run real programs: a temporary
// directory for scripts and work directories, bounded waits, and /proc look-ups of processes.
#pragma once

#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mesh/exec/registry.h"
#include "mesh/util/bytes.h"
#include "mesh/util/clock.h"

namespace mesh::exec::testing {

inline std::int64_t nowMs() { return util::systemClock().monotonicMs(); }

// A temporary directory with `work` for the runs' work directories and `handlers` for an
// operator's handler programs, removed with everything in it.
struct TestDir {
  std::string path;
  std::string handlers;
  std::string work;
  TestDir() {
    char tmpl[] = "/tmp/mesh-exec-test-XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    path = tmpl;
    handlers = path + "/handlers";
    work = path + "/work";
    REQUIRE(mkdir(handlers.c_str(), 0700) == 0);
    REQUIRE(mkdir(work.c_str(), 0700) == 0);
  }
  ~TestDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  // Writes a /bin/sh script at `file` (atomically, so no writer fd can cause ETXTBSY).
  std::string write(const std::string& file, const std::string& body, unsigned mode = 0755) const {
    REQUIRE(util::writeFileAtomic(file, "#!/bin/sh\n" + body, mode).ok());
    return file;
  }
  // An executable script in the directory itself, or in `handlers`.
  std::string script(const std::string& name, const std::string& body) const {
    return write(path + "/" + name, body);
  }
  std::string handler(const std::string& name, const std::string& body) const {
    return write(handlers + "/" + name, body);
  }
  // How a spore runs programs, with the work directories here.
  ProgramSettings settings() const {
    ProgramSettings s;
    s.workParent = work;
    s.limits.timeoutMs = 20'000;  // a safety net: no test may hang
    return s;
  }
  bool workIsEmpty() const { return std::filesystem::is_empty(work); }
};

// The state letter of /proc/PID/stat (after the ")"): 'R', 'S', 'D', 'Z', ...; '?' when gone.
inline char procState(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return '?';
  auto close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) return '?';
  return line[close + 2];
}

// Runnable means not gone and not a zombie.
inline bool runnable(pid_t pid) {
  char state = procState(pid);
  return state != '?' && state != 'Z' && state != 'X';
}

// Processes of group `pgid` that are still runnable.
inline std::vector<pid_t> runnableInGroup(pid_t pgid) {
  std::vector<pid_t> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state;
    long ppid, pgrp;
    if (!(rest >> state >> ppid >> pgrp)) continue;
    if (pgrp == pgid && state != 'Z' && state != 'X') found.push_back(std::stoi(name));
  }
  return found;
}

// Waits, at most `ms`, for `done` to hold. SIGKILL is asynchronous: a killed process needs a
// moment to finish dying, so this polls (a bounded wait, not a sleep used as synchronisation).
template <typename Pred>
bool within(std::int64_t ms, Pred done) {
  std::int64_t deadline = nowMs() + ms;
  while (!done()) {
    if (nowMs() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

inline std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

}  // namespace mesh::exec::testing
