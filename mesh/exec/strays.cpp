#include "mesh/exec/strays.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iterator>
#include <mutex>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "mesh/util/log.h"
#include "mesh/util/unique_fd.h"

namespace mesh::exec::strays {
namespace {

constexpr std::size_t kMaxTree = 4096;            // processes stopped and killed per stray
constexpr std::size_t kMaxEnvironBytes = 1 << 20;  // of /proc/PID/environ read for MESH_RUN
constexpr auto kStopWait = std::chrono::milliseconds(50);  // for one SIGSTOP to land
// For all of one sweep's waits: a tree of processes that cannot stop (uninterruptible sleep on a
// hung mount, a vfork parent) must not hold the spore's loop 50 ms per process.
constexpr auto kStopWaitPerSweep = std::chrono::milliseconds(100);
constexpr auto kStopCheckEvery = std::chrono::microseconds(250);

struct State {
  std::mutex sweepMutex;  // one sweep at a time
  // Watched spawns (Spawning::watched_) begun and settled: a sweep acts only when no watched
  // spawn was under way from before its listing of children until after it.
  std::atomic<std::uint64_t> spawnsBegun{0}, spawnsSettled{0};
  std::mutex liveMutex;
  std::unordered_map<std::uint64_t, pid_t> live;  // token -> the run's program
  // Strays sent SIGKILL and not reaped yet (under sweepMutex): not walked again, so that one
  // stuck in an uninterruptible sleep costs no sweep the 50 ms wait for its stop.
  std::unordered_set<pid_t> killedPids;
  std::atomic<std::uint64_t> nextToken{1};
  std::atomic<bool> enabled{false};
  bool childrenFiles = true;  // /proc/PID/task/TID/children exists (CONFIG_PROC_CHILDREN)
  std::atomic<std::uint64_t> killed{0}, reaped{0};
};

State& state() {
  static State s;
  return s;
}

// Up to `max` bytes of a /proc file; empty when it cannot be read (the process is gone).
std::string readProc(const std::string& path, std::size_t max) {
  util::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return {};
  std::string out;
  char buf[4096];
  while (out.size() < max) {
    ssize_t n = ::read(fd.get(), buf, std::min(sizeof buf, max - out.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

struct Stat {
  bool ok = false;
  char state = '?';
  pid_t ppid = 0, pgrp = 0;
  unsigned flags = 0;  // PF_*
  std::string comm;
  // Exiting already (PF_EXITING, say after the group kill): a zombie soon, nothing to kill.
  bool dying() const { return state == 'Z' || state == 'X' || (flags & 0x4u) != 0; }
};

// /proc/PID/stat: "pid (comm) state ppid pgrp session tty_nr tpgid flags ...". The name may
// hold spaces and parentheses, so the fields are read after its last ')'.
Stat statOf(pid_t pid) {
  Stat s;
  std::string text = readProc("/proc/" + std::to_string(pid) + "/stat", 4096);
  std::size_t open = text.find('('), close = text.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close < open) return s;
  s.comm = text.substr(open + 1, close - open - 1);
  long ppid = 0, pgrp = 0;
  char state = '?';
  unsigned flags = 0;
  if (std::sscanf(text.c_str() + close + 1, " %c %ld %ld %*d %*d %*d %u", &state, &ppid, &pgrp,
                  &flags) != 4)
    return s;
  s.ok = true;
  s.state = state;
  s.flags = flags;
  s.ppid = static_cast<pid_t>(ppid);
  s.pgrp = static_cast<pid_t>(pgrp);
  return s;
}

void appendPids(const std::string& text, std::vector<pid_t>& out) {
  const char* p = text.c_str();
  char* end = nullptr;
  for (long v = std::strtol(p, &end, 10); end != p; v = std::strtol(p, &end, 10)) {
    if (v > 0) out.push_back(static_cast<pid_t>(v));
    p = end;
  }
}

std::vector<pid_t> numericEntries(const std::string& dir) {
  std::vector<pid_t> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {  // per-DIR state only: safe across threads
    char* end = nullptr;
    long v = std::strtol(e->d_name, &end, 10);
    if (end != e->d_name && *end == '\0' && v > 0) out.push_back(static_cast<pid_t>(v));
  }
  ::closedir(d);
  return out;
}

// Every process of /proc whose parent is `pid` (any of its threads).
std::vector<pid_t> scanForChildren(pid_t pid) {
  std::vector<pid_t> out;
  for (pid_t p : numericEntries("/proc")) {
    if (statOf(p).ppid == pid) out.push_back(p);
  }
  return out;
}

// The children of every thread of `pid` (of a stopped stray: it has no thread starting more).
std::vector<pid_t> childrenOf(pid_t pid) {
  if (!state().childrenFiles) return scanForChildren(pid);
  std::vector<pid_t> out;
  std::string task = "/proc/" + std::to_string(pid) + "/task/";
  for (pid_t tid : numericEntries(task))
    appendPids(readProc(task + std::to_string(tid) + "/children", 1 << 20), out);
  return out;
}

// The children of this process's main thread, where the kernel puts re-parented processes.
std::vector<pid_t> adoptedChildren() {
  pid_t self = ::getpid();
  if (!state().childrenFiles) return scanForChildren(self);
  std::vector<pid_t> out;
  appendPids(readProc("/proc/" + std::to_string(self) + "/task/" + std::to_string(self) + "/children", 1 << 20), out);
  return out;
}

// What a stray's environment says about the run it came from.
struct Origin {
  std::uint64_t token = 0;  // 0: no MESH_RUN (or an unreadable environment)
  std::string task, handler;
};

Origin originOf(pid_t pid) {
  Origin o;
  std::string env = readProc("/proc/" + std::to_string(pid) + "/environ", kMaxEnvironBytes);
  for (std::size_t at = 0; at < env.size();) {
    std::size_t end = env.find('\0', at);
    if (end == std::string::npos) end = env.size();
    std::string_view entry(env.data() + at, end - at);
    auto value = [&entry](std::string_view name) { return std::string(entry.substr(name.size())); };
    if (entry.rfind("MESH_RUN=", 0) == 0) o.token = std::strtoull(value("MESH_RUN=").c_str(), nullptr, 10);
    if (entry.rfind("MESH_TASK_ID=", 0) == 0) o.task = value("MESH_TASK_ID=");
    if (entry.rfind("MESH_HANDLER=", 0) == 0) o.handler = value("MESH_HANDLER=");
    at = end + 1;
  }
  return o;
}

// Waits until `pid` is stopped or dead, for at most kStopWait and not past `deadline` (the
// sweep's budget): true then, false if it still runs (uninterruptible sleep, say).
bool settledStopped(pid_t pid, std::chrono::steady_clock::time_point deadline) {
  auto until = std::min(deadline, std::chrono::steady_clock::now() + kStopWait);
  for (;;) {
    Stat s = statOf(pid);
    if (!s.ok || s.state == 'T' || s.state == 't' || s.state == 'Z' || s.state == 'X') return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(kStopCheckEvery);
  }
}

// SIGSTOP down the tree of `root` (a child of this process, so its pid cannot be reused while
// it is not reaped), then SIGKILL to every process stopped. Returns how many got SIGKILL.
// `deadline`: when the sweep stops waiting for stops. Under State::sweepMutex.
int killTree(pid_t root, std::chrono::steady_clock::time_point deadline) {
  std::vector<pid_t> stopped;
  std::unordered_set<pid_t> seen{root};
  std::deque<pid_t> todo{root};
  while (!todo.empty() && stopped.size() < kMaxTree) {
    pid_t p = todo.front();
    todo.pop_front();
    if (::kill(p, SIGSTOP) != 0) continue;  // gone, or not ours to signal
    stopped.push_back(p);
    // Only a stopped process's children list is safe to act on: it cannot reap one meanwhile.
    // One that does not stop in time keeps its children until a later sweep adopts them (they
    // are re-parented to this process when it dies of the SIGKILL below).
    if (!settledStopped(p, deadline)) continue;
    for (pid_t c : childrenOf(p)) {
      if (seen.insert(c).second) todo.push_back(c);
    }
  }
  for (pid_t p : stopped) ::kill(p, SIGKILL);
  if (!stopped.empty()) state().killedPids.insert(root);
  return static_cast<int>(stopped.size());
}

}  // namespace

util::Status enable() {
  State& s = state();
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
    return util::err(std::string("prctl(PR_SET_CHILD_SUBREAPER): ") + std::strerror(errno));
  std::string self = "/proc/" + std::to_string(::getpid()) + "/task/" + std::to_string(::getpid()) + "/children";
  s.childrenFiles = ::access(self.c_str(), R_OK) == 0;
  if (!s.childrenFiles)
    MESH_INFO("no /proc/PID/task/TID/children here: strays are found by scanning /proc");
  s.enabled.store(true);
  return {};
}

bool enabled() { return state().enabled.load(); }

Spawning::Spawning()
    : token_(state().nextToken.fetch_add(1)),
      watched_(!state().childrenFiles || ::gettid() == ::getpid()) {
  if (watched_) state().spawnsBegun.fetch_add(1);
}

Spawning::~Spawning() { settle(); }

void Spawning::settle() {
  if (watched_ && !settled_) state().spawnsSettled.fetch_add(1);
  settled_ = true;
}

std::string Spawning::envEntry() const { return "MESH_RUN=" + std::to_string(token_); }

void Spawning::started(pid_t pid) {
  {
    std::lock_guard<std::mutex> g(state().liveMutex);
    state().live[token_] = pid;
  }
  settle();
}

void ended(std::uint64_t token) {
  std::lock_guard<std::mutex> g(state().liveMutex);
  state().live.erase(token);
}

SweepResult sweep() {
  State& s = state();
  SweepResult result;
  if (!s.enabled.load()) return result;
  std::lock_guard<std::mutex> one(s.sweepMutex);
  // Settled before begun, so that a spawn begun after this cannot look settled.
  std::uint64_t settled = s.spawnsSettled.load(), begun = s.spawnsBegun.load();
  if (begun != settled) return result;  // a watched spawn is under way: the next sweep acts
  std::vector<pid_t> children = adoptedChildren();
  std::unordered_set<std::uint64_t> liveTokens;
  std::unordered_set<pid_t> livePids;
  {
    std::lock_guard<std::mutex> g(s.liveMutex);
    for (const auto& [token, pid] : s.live) {
      liveTokens.insert(token);
      livePids.insert(pid);
    }
  }
  if (s.spawnsBegun.load() != begun) return result;  // one began meanwhile: its child may be listed
  const auto stopDeadline = std::chrono::steady_clock::now() + kStopWaitPerSweep;
  std::unordered_set<pid_t> listed(children.begin(), children.end());
  for (auto it = s.killedPids.begin(); it != s.killedPids.end();)  // reaped by someone else?
    it = listed.count(*it) != 0 ? std::next(it) : s.killedPids.erase(it);
  for (pid_t child : children) {
    if (livePids.count(child) != 0) continue;  // a run's own program: its thread reaps it
    Stat st = statOf(child);
    if (!st.ok) continue;
    if (st.dying() || s.killedPids.count(child) != 0) {  // reaped if dead, else by a later sweep
      int status = 0;
      if (::waitpid(child, &status, WNOHANG) == child) {
        ++result.reaped;
        s.killedPids.erase(child);
      }
      continue;
    }
    if (livePids.count(st.pgrp) != 0) continue;  // still in a live run's group
    Origin origin = originOf(child);
    if (origin.token != 0 && liveTokens.count(origin.token) != 0) continue;
    int killed = killTree(child, stopDeadline);
    if (killed == 0) continue;
    result.killed += killed;
    std::string more = killed == 1 ? ""
                       : killed == 2 ? " and 1 process it started"
                                     : " and " + std::to_string(killed - 1) + " processes it started";
    if (origin.token == 0) {  // it cleared its environment (or it cannot be read): whose run is unknown
      MESH_WARN("killed pid %d (%s)%s, left by a handler run outside the run's process group and "
                "without MESH_RUN in its environment (such a process is killed even while its run "
                "goes on)",
                static_cast<int>(child), st.comm.c_str(), more.c_str());
    } else {
      std::string from = origin.task.empty() ? std::string("a handler run")
                                             : "task " + origin.task + " (handler " + origin.handler + ")";
      MESH_WARN("killed pid %d (%s)%s, left running by %s after it ended (setsid or a double fork "
                "took it out of the run's process group)",
                static_cast<int>(child), st.comm.c_str(), more.c_str(), from.c_str());
    }
  }
  s.killed.fetch_add(static_cast<std::uint64_t>(result.killed));
  s.reaped.fetch_add(static_cast<std::uint64_t>(result.reaped));
  return result;
}

Totals totals() {
  return Totals{state().killed.load(), state().reaped.load()};
}

}  // namespace mesh::exec::strays
