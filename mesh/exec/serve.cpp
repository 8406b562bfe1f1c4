#include "mesh/exec/serve.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>
#include <vector>

#include "mesh/exec/process.h"
#include "mesh/util/bytes.h"
#include "mesh/util/clock.h"
#include "mesh/util/log.h"

namespace mesh::exec {
namespace {

using Step = ChildProcess::StdoutStep;

constexpr std::size_t kReadChunk = 64 * 1024;
constexpr int kReadsPerWakeup = 16;  // so a flood cannot starve the deadline checks

std::int64_t nowMs() { return util::systemClock().monotonicMs(); }
constexpr std::int64_t kLongTaskUs = 1000;  // a task that has run this long calls spec.onLong

// What identifies the file a process was started from: a new bundle version is another path,
// a program rebuilt in place is another inode or modification time.
struct ProgramFile {
  std::string path;
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  timespec mtime{}, ctime{};

  static ProgramFile of(const std::string& path) {
    ProgramFile f;
    f.path = path;
    struct stat st{};
    if (::stat(path.c_str(), &st) == 0) {
      f.dev = st.st_dev;
      f.ino = st.st_ino;
      f.size = st.st_size;
      f.mtime = st.st_mtim;
      f.ctime = st.st_ctim;
    }
    return f;
  }
  bool same(const ProgramFile& o) const {
    return path == o.path && dev == o.dev && ino == o.ino && size == o.size &&
           mtime.tv_sec == o.mtime.tv_sec && mtime.tv_nsec == o.mtime.tv_nsec &&
           ctime.tv_sec == o.ctime.tv_sec && ctime.tv_nsec == o.ctime.tv_nsec;
  }
};

// Printable text of untrusted bytes for an error message: ASCII as is, the rest as \xNN.
std::string printable(std::string_view bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (char c : bytes) {
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '\\') {
      out.push_back(c);
    } else {
      out += "\\x";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 15]);
    }
  }
  return out;
}

// Reads one reply from a serve process: the header a byte at a time (so nothing past the reply
// is ever consumed), then exactly the announced number of bytes.
class ReplyReader {
 public:
  explicit ReplyReader(std::uint64_t maxBytes) : maxBytes_(maxBytes) {}

  Step read(int fd) {
    if (!inBody_) {
      for (;;) {
        char c;
        ssize_t n = ::read(fd, &c, 1);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return Step::kMore;
        if (n <= 0) return Step::kEof;
        if (c == '\n') break;
        header_.push_back(c);
        if (header_.size() >= kMaxReplyHeader) {
          problem_ = "reply header longer than " + std::to_string(kMaxReplyHeader - 1) +
                     " bytes: '" + printable(header_) + "...'";
          return Step::kKill;
        }
      }
      if (Step s = parseHeader(); s != Step::kMore) return s;
      if (want_ == 0) return Step::kDone;
    }
    for (int i = 0; i < kReadsPerWakeup; ++i) {
      std::size_t old = body_.size();
      std::size_t chunk = std::min<std::uint64_t>(kReadChunk, want_ - old);
      body_.resize(old + chunk);
      ssize_t n = ::read(fd, body_.data() + old, chunk);
      body_.resize(old + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return Step::kMore;
      if (n <= 0) return Step::kEof;
      if (body_.size() == want_) return Step::kDone;
    }
    return Step::kMore;
  }

  bool ok() const { return ok_; }               // "OK", not "ERR"
  std::string& body() { return body_; }         // complete after kDone
  const std::string& problem() const { return problem_; }  // the protocol error, after kKill
  bool tooLarge() const { return tooLarge_; }   // the protocol error was the length

 private:
  Step parseHeader() {
    std::string_view h = header_;
    std::string_view number;
    if (h.rfind("OK ", 0) == 0) {
      ok_ = true;
      number = h.substr(3);
    } else if (h.rfind("ERR ", 0) == 0) {
      number = h.substr(4);
    } else {
      problem_ = "bad reply header '" + printable(h) + "' (expected 'OK <bytes>' or 'ERR <bytes>')";
      return Step::kKill;
    }
    if (!util::parseU64(number, &want_)) {
      problem_ = "bad length in reply header '" + printable(h) + "'";
      return Step::kKill;
    }
    if (want_ > maxBytes_) {
      tooLarge_ = true;
      problem_ = "reply of " + std::to_string(want_) + " bytes exceeds the limit of " +
                 std::to_string(maxBytes_) + " bytes; the serve process was killed";
      return Step::kKill;
    }
    inBody_ = true;
    body_.reserve(static_cast<std::size_t>(want_));
    return Step::kMore;
  }

  std::uint64_t maxBytes_;
  std::string header_;
  bool inBody_ = false;
  bool ok_ = false;
  bool tooLarge_ = false;
  std::uint64_t want_ = 0;
  std::string body_;
  std::string problem_;
};

// Reads and drops stdout (a process being stopped has nothing more to say).
Step discardStdout(int fd) {
  char buf[kReadChunk];
  for (int i = 0; i < kReadsPerWakeup; ++i) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return Step::kMore;
    if (n <= 0) return Step::kEof;
  }
  return Step::kMore;
}

// The outcome of a task whose process was finished (killed or exited) before or after a reply.
void describeEnd(const ChildProcess::IoResult& result, int status, ReplyReader& reply,
                 RunOutcome& outcome) {
  ChildProcess::settle(result, status, outcome);
  if (result.stop == ChildProcess::Stop::kKilled) {
    bool large = reply.tooLarge();
    outcome.kind = large ? RunOutcome::Kind::kOutputTooLarge : RunOutcome::Kind::kBroken;
    outcome.reason = large ? reply.problem() : "serve protocol error: " + reply.problem();
    outcome.brokeProtocol = !large;
  } else if (result.stop == ChildProcess::Stop::kNone && result.done) {
    // answered just before it exited, or before it read all of the payload
    outcome.kind = reply.ok() ? RunOutcome::Kind::kReplied : RunOutcome::Kind::kRefused;
    (reply.ok() ? outcome.out : outcome.reason) = std::move(reply.body());
  } else if (outcome.kind == RunOutcome::Kind::kExited) {
    outcome.kind = RunOutcome::Kind::kBroken;
    outcome.reason = "the serve handler exited with code " + std::to_string(outcome.exitCode) +
                     " before it replied";
  }
}

}  // namespace

struct ServeProcesses::Process {
  std::unique_ptr<ChildProcess> child;
  ProgramFile program;
  std::int64_t lastUsedMs = 0;
  std::uint64_t tasks = 0;
};

ServeProcesses::ServeProcesses(ServeOptions options) : options_(options) {}

ServeProcesses::~ServeProcesses() {
  // EOF to all first, so that they exit in parallel within one stopWaitMs.
  for (auto& [handler, process] : processes_) process->child->closeStdin();
  std::int64_t deadline = nowMs() + options_.stopWaitMs;
  for (auto& [handler, process] : processes_) stopGently(handler, *process, deadline, "shutdown");
  processes_.clear();
}

pid_t ServeProcesses::pidOf(const std::string& handler) const {
  auto it = processes_.find(handler);
  return it == processes_.end() ? 0 : it->second->child->pid();
}

std::int64_t ServeProcesses::msUntilIdle() const {
  if (processes_.empty()) return -1;
  std::int64_t oldest = nowMs();
  for (const auto& [handler, process] : processes_) oldest = std::min(oldest, process->lastUsedMs);
  return std::max<std::int64_t>(0, oldest + options_.idleMs - nowMs());
}

void ServeProcesses::stopIdle() {
  std::int64_t now = nowMs();
  for (auto it = processes_.begin(); it != processes_.end();) {
    if (now - it->second->lastUsedMs >= options_.idleMs) {
      stopGently(it->first, *it->second, now + options_.stopWaitMs, "idle");
      it = processes_.erase(it);
    } else {
      ++it;
    }
  }
}

void ServeProcesses::stopGently(const std::string& handler, Process& process,
                                std::int64_t deadlineMs, const char* why) {
  ChildProcess& child = *process.child;
  ChildProcess::Io io;
  io.closeStdin = true;
  io.startMs = nowMs();
  io.timeoutMs = std::max<std::int64_t>(1, deadlineMs - io.startMs);
  io.killGraceMs = 0;
  io.maxStderrBytes = 0;
  io.onStdout = discardStdout;
  ChildProcess::IoResult result;
  child.closeStdin();
  child.pump(io, result);
  int status = child.finish(io, result);
  if (result.stop == ChildProcess::Stop::kTimeout) {
    MESH_WARN("serve handler %s: pid %d did not exit within %lld ms of EOF on its stdin (%s): "
              "killed", handler.c_str(), static_cast<int>(child.pid()),
              static_cast<long long>(io.timeoutMs), why);
  } else {
    std::string end = WIFSIGNALED(status) ? signalName(WTERMSIG(status))
                                          : "exit code " + std::to_string(WEXITSTATUS(status));
    MESH_INFO("serve handler %s: pid %d stopped (%s) after %llu tasks, %s", handler.c_str(),
              static_cast<int>(child.pid()), why, static_cast<unsigned long long>(process.tasks),
              end.c_str());
  }
}

util::Result<ServeProcesses::Process*> ServeProcesses::processFor(
    const std::string& handler, const RunSpec& spec, const std::function<void()>& beforeBlocking) {
  ProgramFile file = ProgramFile::of(spec.argv.empty() ? std::string() : spec.argv[0]);
  // A process that may not take this task is replaced.
  if (auto it = processes_.find(handler); it != processes_.end()) {
    Process& p = *it->second;
    const char* why = nullptr;
    bool gently = true;
    if (!p.program.same(file)) {
      why = p.program.path == file.path ? "its program file was replaced" : "its program changed";
    } else if (p.child->exited()) {
      why = "it exited between tasks";
    } else if (!p.child->stdinOpen()) {
      why = "it closed its stdin";
      gently = false;
    } else if (p.child->stdoutHasData()) {
      why = "it wrote on stdout outside a reply";
      gently = false;
    }
    if (why == nullptr) return &p;
    beforeBlocking();
    if (gently) {
      stopGently(handler, p, nowMs() + options_.stopWaitMs, why);
    } else {
      MESH_WARN("serve handler %s: pid %d killed: %s", handler.c_str(),
                static_cast<int>(p.child->pid()), why);
    }
    processes_.erase(it);
  }
  beforeBlocking();
  RunSpec startSpec = spec;
  startSpec.stdinData = {};
  startSpec.limits.cpuSeconds = 0;  // cumulative per process: the timeout bounds a task
  auto child = ChildProcess::start(startSpec);
  if (!child) return child.error();
  MESH_INFO("serve handler %s: started pid %d (%s)", handler.c_str(),
            static_cast<int>((*child)->pid()), file.path.c_str());
  auto process = std::make_unique<Process>();
  process->child = std::move(*child);
  process->program = std::move(file);
  process->lastUsedMs = nowMs();
  Process* raw = process.get();
  processes_[handler] = std::move(process);
  return raw;
}

util::Result<RunOutcome> ServeProcesses::run(const std::string& handler, const RunSpec& spec,
                                             std::uint64_t taskId, unsigned attempt) {
  assertSigpipeIgnored();
  RunOutcome outcome;
  if (spec.cancel != nullptr && spec.cancel->load()) {
    outcome.kind = RunOutcome::Kind::kCancelled;
    outcome.reason = "cancelled before it started";
    return outcome;
  }
  const RunLimits& limits = spec.limits;
  const std::int64_t startUs = util::systemClock().monotonicUs();
  const std::string header = "TASK " + std::to_string(taskId) + " " + std::to_string(attempt) +
                             " " + std::to_string(spec.stdinData.size()) + "\n";
  // spec.onLong, at most once for this task: before a process is stopped or started, before a
  // broken one is reaped, and from the wait for the reply once the task has run for 1 ms.
  bool saidLong = spec.onLong == nullptr;
  const std::function<void()> sayLong = [&saidLong, &spec] {
    if (saidLong) return;
    saidLong = true;
    (*spec.onLong)();
  };

  // A process that exits between two tasks (a handler may recycle itself that way) can be seen
  // alive when the task is sent and gone right after. When it read nothing of the task, the
  // task goes to a fresh process, once.
  for (bool retried = false;; retried = true) {
    auto found = processFor(handler, spec, sayLong);
    if (!found) return found.error();
    Process& process = **found;
    ChildProcess& child = *process.child;
    child.dropStderr();  // what came between tasks belongs to no task

    ReplyReader reply(limits.maxStdoutBytes);
    ChildProcess::Io io;
    io.input = {header, spec.stdinData};
    io.startMs = startUs / 1000;
    io.timeoutMs = limits.timeoutMs;
    io.killGraceMs = limits.killGraceMs;
    io.cancel = spec.cancel;
    io.maxStderrBytes = limits.maxStderrBytes;
    io.onStdout = [&reply](int fd) { return reply.read(fd); };
    if (!saidLong) {
      io.onLong = &sayLong;
      io.onLongAtMs = (startUs + kLongTaskUs + 999) / 1000;  // 1 ms after the start, rounded up
    }
    ChildProcess::IoResult result;
    child.pump(io, result);

    bool keep = result.done && result.stop == ChildProcess::Stop::kNone;
    if (keep && !result.inputWritten) {
      // It answered before it read the whole payload: the rest would be taken for the next task.
      MESH_WARN("serve handler %s: pid %d replied before it read the whole payload of task "
                "%llu: replaced", handler.c_str(), static_cast<int>(child.pid()),
                static_cast<unsigned long long>(taskId));
      keep = false;
    }
    if (keep) {
      outcome.kind = reply.ok() ? RunOutcome::Kind::kReplied : RunOutcome::Kind::kRefused;
      (reply.ok() ? outcome.out : outcome.reason) = std::move(reply.body());
      process.lastUsedMs = nowMs();
      ++process.tasks;
    } else {
      bool untouched = !result.done && result.stop == ChildProcess::Stop::kNone &&
                       process.tasks > 0 && child.stdinUnread() == result.bytesWritten;
      sayLong();
      int status = child.finish(io, result);
      std::uint64_t tasks = process.tasks;
      processes_.erase(handler);
      if (untouched && !retried) {
        MESH_INFO("serve handler %s: the process exited after %llu tasks, before it read task "
                  "%llu; starting a fresh one for it", handler.c_str(),
                  static_cast<unsigned long long>(tasks), static_cast<unsigned long long>(taskId));
        continue;
      }
      describeEnd(result, status, reply, outcome);
    }
    if (keep) outcome.err = ChildProcess::keptStderr(result);
    outcome.durationUs = util::systemClock().monotonicUs() - startUs;
    return outcome;
  }
}

util::Result<RunOutcome> runServeTask(const std::string& handler, const RunSpec& spec,
                                      std::uint64_t taskId, unsigned attempt) {
  ServeProcesses once;
  return once.run(handler, spec, taskId, attempt);
}

}  // namespace mesh::exec
