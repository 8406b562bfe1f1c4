#include "mesh/exec/subprocess.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "mesh/exec/process.h"
#include "mesh/util/clock.h"

namespace mesh::exec {
namespace {

constexpr std::size_t kReadChunk = 64 * 1024;
constexpr int kReadsPerWakeup = 16;  // so a flood cannot starve the deadline checks

// text without its trailing newlines and spaces.
std::string trimmed(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

}  // namespace

void ignoreSigpipe() {
  struct sigaction ignore{};
  ignore.sa_handler = SIG_IGN;
  ::sigemptyset(&ignore.sa_mask);
  ::sigaction(SIGPIPE, &ignore, nullptr);
}

void assertSigpipeIgnored() {
  struct sigaction current{};
  ::sigaction(SIGPIPE, nullptr, &current);
  MESH_ASSERT(current.sa_handler != SIG_DFL, "call ignoreSigpipe() before running programs");
}

std::string signalName(int signal) {
  const char* abbrev = ::sigabbrev_np(signal);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(signal);
}

std::string RunOutcome::describe() const {
  switch (kind) {
    case Kind::kExited: {
      std::string text = trimmed(err);
      if (exitCode == 0 || text.empty()) return "exit code " + std::to_string(exitCode);
      return text;
    }
    case Kind::kSignaled: {
      std::string text = "killed by signal " + signalName(signal);
      if (!err.empty()) text += ": " + err;
      while (text.back() == '\n') text.pop_back();
      return text;
    }
    case Kind::kTimedOut:
    case Kind::kOutputTooLarge:
    case Kind::kCancelled:
      return reason;
    case Kind::kReplied:
      return "replied OK";
    case Kind::kRefused:
    case Kind::kBroken: {
      std::string text = trimmed(reason);
      std::string stderrText = trimmed(err);
      if (!stderrText.empty()) text += (text.empty() ? "" : "; stderr: ") + stderrText;
      return text;
    }
  }
  return "unknown outcome";
}

util::Result<RunOutcome> runProgram(const RunSpec& spec) {
  assertSigpipeIgnored();
  const RunLimits& limits = spec.limits;
  if (spec.cancel != nullptr && spec.cancel->load()) {
    RunOutcome cancelled;
    cancelled.kind = RunOutcome::Kind::kCancelled;
    cancelled.reason = "cancelled before it started";
    return cancelled;
  }
  auto child = ChildProcess::start(spec);
  if (!child) return child.error();

  RunOutcome result;
  ChildProcess::Io io;
  io.input = {spec.stdinData};
  io.closeStdin = true;
  io.startMs = (*child)->startUs() / 1000;
  io.timeoutMs = limits.timeoutMs;
  io.killGraceMs = limits.killGraceMs;
  io.cancel = spec.cancel;
  io.maxStderrBytes = limits.maxStderrBytes;
  io.onStdout = [&result, &limits](int fd) {
    for (int i = 0; i < kReadsPerWakeup; ++i) {
      std::size_t old = result.out.size();
      result.out.resize(old + kReadChunk);
      ssize_t n = ::read(fd, result.out.data() + old, kReadChunk);
      result.out.resize(old + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return ChildProcess::StdoutStep::kMore;
      if (n <= 0) return ChildProcess::StdoutStep::kEof;
      if (result.out.size() > limits.maxStdoutBytes) {
        if (result.reason.empty())
          result.reason = "stdout exceeded the limit of " +
                          std::to_string(limits.maxStdoutBytes) + " bytes; the program was killed";
        result.out.clear();
        result.out.shrink_to_fit();
        return ChildProcess::StdoutStep::kKill;
      }
    }
    return ChildProcess::StdoutStep::kMore;
  };

  ChildProcess::IoResult ioResult;
  (*child)->pump(io, ioResult);
  result.durationUs = util::systemClock().monotonicUs() - (*child)->startUs();
  int status = (*child)->finish(io, ioResult);
  ChildProcess::settle(ioResult, status, result);
  if (ioResult.stop == ChildProcess::Stop::kKilled) result.kind = RunOutcome::Kind::kOutputTooLarge;
  if (ioResult.stop != ChildProcess::Stop::kNone) result.out.clear();  // no result when killed
  return result;
}

}  // namespace mesh::exec
