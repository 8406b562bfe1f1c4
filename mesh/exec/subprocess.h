// Subprocess runner: one task = one run of a program. The payload goes to the program's stdin,
// its stdout is the result, exit 0 is success, its stderr (truncated) explains a failure. Each
// run gets a fresh working directory, its own process group, a clean environment, resource
// limits, a timeout (SIGTERM to the group, SIGKILL after a grace period) and an output cap.
// Nothing the run started is left running when runProgram returns: the group gets SIGKILL,
// and in a child subreaper (strays::enable) what left the group is swept (strays.h).
//
// Thread rule: runProgram is safe to call from many threads at once; it keeps no shared state,
// reaps only its own child (never waitpid(-1)) and blocks no signal for longer than the spawn.
// Process rule: the process must not die of SIGPIPE when a program exits without reading its
// stdin: main() calls ignoreSigpipe() once before the first run (runProgram asserts it), and
// must not set SIGCHLD to SIG_IGN (the kernel would then reap children behind our back).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "mesh/util/result.h"

namespace mesh::exec {

// Every limit is per run. 0 means "no limit", except for the two output caps, which are the
// number of bytes allowed (0 allows none).
struct RunLimits {
  std::int64_t timeoutMs = 0;            // wall-clock time from spawn to SIGTERM of the group
  std::int64_t killGraceMs = 2000;       // SIGTERM -> SIGKILL delay on timeout and on cancel
  std::uint64_t maxStdoutBytes = 64ull << 20;  // more stdout: the group is killed (kOutputTooLarge)
  std::uint64_t maxStderrBytes = 4096;   // kept; the rest is read and dropped (0 keeps none)
  std::uint64_t cpuSeconds = 0;          // RLIMIT_CPU (SIGXCPU at the limit, SIGKILL 1 s later)
  std::uint64_t addressSpaceBytes = 0;   // RLIMIT_AS
  std::uint64_t openFiles = 256;         // RLIMIT_NOFILE (clamped to the runner's hard limit)
  std::uint64_t fileSizeBytes = 0;       // RLIMIT_FSIZE (SIGXFSZ at the limit)
};

struct RunSpec {
  // argv[0] is the absolute path of the program, executed directly: never a shell command line.
  std::vector<std::string> argv;
  // Written to the program's stdin, then stdin is closed. Borrowed: must outlive the call.
  std::string_view stdinData;
  // The program's whole environment, "NAME=value" each, plus HOME and TMPDIR set to the work
  // directory (replacing any given here). Nothing is inherited from the runner.
  std::vector<std::string> env;
  // An existing directory, by absolute path. The run's working directory is created in it
  // (mode 0700) and removed, with everything the program left in it, before runProgram returns.
  // Put it on a tmpfs: on this machine's ext4 a mkdir + rmdir alone costs 1-2 ms.
  std::string workParent;
  RunLimits limits;
  // Optional, borrowed. When it becomes true the group gets SIGTERM (SIGKILL after the grace
  // period) within 50 ms and the outcome is kCancelled. Already true: nothing is started.
  const std::atomic<bool>* cancel = nullptr;
  // Optional, borrowed; used by serve handlers only (ServeProcesses::run), never by runProgram.
  // Called on the calling thread, at most once per task, as soon as the task turns out long:
  // once it has run for 1 ms (checked to the ms, so within 2 ms), or before a process is started
  // or stopped for it. A spore's worker hands over the results it holds then, instead of before
  // every task. It may not throw.
  const std::function<void()>* onLong = nullptr;
};

struct RunOutcome {
  enum class Kind {
    kExited,          // exited by itself; exitCode is valid (0 = success)
    kSignaled,        // killed by a signal nobody here sent (a crash); signal is valid
    kTimedOut,        // the runner killed it at limits.timeoutMs
    kOutputTooLarge,  // the runner killed it: stdout passed limits.maxStdoutBytes (out is empty)
    kCancelled,       // the runner killed it because *cancel became true
    // Serve handlers only (serve.h): the task ended with the process still running, or broke it.
    kReplied,         // replied "OK"; out is the result
    kRefused,         // replied "ERR"; reason is the handler's message
    kBroken,          // broke the framed protocol, or exited before it replied; reason says how
  };
  Kind kind = Kind::kExited;
  int exitCode = 0;          // kExited only
  int signal = 0;            // kSignaled only
  std::string out;           // stdout; empty when the runner killed the program
  std::string err;           // stderr, at most maxStderrBytes + "... (truncated)"
  std::string reason;        // why the runner killed it (kTimedOut, kOutputTooLarge, kCancelled),
                             // the handler's message (kRefused), what broke (kBroken)
  std::int64_t durationUs = 0;  // spawn to exit of the main process (serve: task start to reply)
  // kBroken only: it broke the framed protocol (a bad reply header), as opposed to exiting
  // before it replied (which a handler does on input it cannot take, like a non-zero exit).
  bool brokeProtocol = false;

  bool ok() const { return (kind == Kind::kExited && exitCode == 0) || kind == Kind::kReplied; }
  // One line that says what happened, fit to be a task's error text: for a non-zero exit the
  // stderr text (or "exit code N" when there is none), "killed by signal SIGSEGV", "timed out
  // after 500 ms", ... and "exit code 0" on success. For kRefused and kBroken the reason,
  // followed by the stderr of the task when there is some.
  std::string describe() const;
};

// Runs one program to completion. Returns an Error only when the run could not start (argv
// empty or not absolute, work directory not creatable, program missing or not executable, out
// of descriptors): one line naming the program and the reason. Everything the program itself
// does is a RunOutcome.
//
// A descendant that calls setsid() or setpgid() leaves the process group and escapes the group
// kill; in a process that called strays::enable() it is killed by the sweep at the run's end
// (strays.h: told apart from other runs' processes by the MESH_RUN in its environment).
[[nodiscard]] util::Result<RunOutcome> runProgram(const RunSpec& spec);

// The Error::code of runProgram (and ServeProcesses::run) when execve refused the program file
// itself: missing, not executable, a bad interpreter line, a format the kernel cannot run. The
// program is broken, not this machine; every other start error (no work directory, out of
// descriptors or memory) has code 0.
inline constexpr int kCannotExecute = 126;

// Sets SIGPIPE to SIG_IGN for the whole process (so a write to a closed pipe is EPIPE, not
// death). Call once from main() before starting threads. Children get SIGPIPE back at default.
void ignoreSigpipe();

// Throws std::logic_error (a bug) unless SIGPIPE is ignored; runProgram and ServeProcesses call it.
void assertSigpipeIgnored();

// "SIGSEGV", or "signal 77" for a number without a name.
std::string signalName(int signal);

}  // namespace mesh::exec
