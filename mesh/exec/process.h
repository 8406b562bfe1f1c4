// A started handler program and the I/O loop around it: the spawn machinery shared by
// runProgram (one process per task, subprocess.h) and ServeProcesses (one process for many
// tasks, serve.h). Internal to mesh/exec; the public contracts are in those two headers.
//
// A ChildProcess is the program (leader of its own process group, clean environment, resource
// limits, every descriptor but 0..2 closed, PR_SET_PDEATHSIG(SIGKILL)), its work directory
// (HOME and TMPDIR; removed when the ChildProcess is destroyed) and the runner's ends of its
// stdin, stdout and stderr pipes (non-blocking). Destroying it kills what is left of the group,
// reaps the program, sweeps the strays (strays.h: the processes that left the group, when this
// process is a child subreaper) and removes the work directory: nothing outlives it.
//
// Thread rule: a ChildProcess belongs to the thread that started it and is used by that thread
// only. The program gets SIGKILL when that thread ends (PR_SET_PDEATHSIG follows the thread
// that cloned it, not the process), so a pool of serve processes cannot outlive its worker
// thread. Only the own child is reaped (never waitpid(-1)).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mesh/exec/subprocess.h"
#include "mesh/util/result.h"
#include "mesh/util/unique_fd.h"

namespace mesh::exec {

class ChildProcess {
  class WorkDir;
  struct Key {  // only start() makes a ChildProcess
    explicit Key() = default;
  };

 public:
  // What the stdout callback of pump() tells the loop after it has read.
  enum class StdoutStep {
    kMore,  // keep going
    kDone,  // the caller has what it waited for: pump() returns (the program keeps running)
    kEof,   // the read saw end of file: stdout is closed
    kKill,  // the output is unacceptable: SIGKILL to the group, stdout closed (Stop::kKilled)
  };
  // Why the runner stopped the program, if it did.
  enum class Stop { kNone, kTimeout, kCancel, kKilled };

  // One round of I/O with the program.
  struct Io {
    std::vector<std::string_view> input;  // written to stdin in order; borrowed
    bool closeStdin = false;              // close stdin once `input` is written (EOF)
    std::int64_t startMs = 0;             // monotonic ms the timeout counts from
    std::int64_t timeoutMs = 0;           // 0: none. At the timeout SIGTERM to the group,
    std::int64_t killGraceMs = 2000;      // ... and SIGKILL this much later (also on cancel)
    const std::atomic<bool>* cancel = nullptr;  // optional, borrowed; looked at every 25 ms
    std::uint64_t maxStderrBytes = 4096;  // stderr kept in IoResult::err; the rest is dropped
    // Called when stdout is readable, with the (non-blocking) descriptor; reads what it wants.
    std::function<StdoutStep(int fd)> onStdout;
    // Optional, borrowed: called once, from the loop, when the monotonic clock reaches
    // onLongAtMs and the round has not ended.
    const std::function<void()>* onLong = nullptr;
    std::int64_t onLongAtMs = 0;
  };

  struct IoResult {
    bool done = false;          // onStdout said kDone
    bool inputWritten = false;  // every byte of Io::input reached the pipe
    std::uint64_t bytesWritten = 0;  // of Io::input, into the pipe
    Stop stop = Stop::kNone;
    std::string reason;         // for kTimeout and kCancel (kKilled: the callback's business)
    std::string err;            // stderr seen during this round, at most maxStderrBytes
    bool errTruncated = false;  // more stderr came than was kept
  };

  // Starts spec.argv[0] with spec.env, a fresh work directory under spec.workParent and the
  // resource limits of spec.limits (cpuSeconds, addressSpaceBytes, openFiles, fileSizeBytes;
  // RLIMIT_CORE is always 0). spec.stdinData, spec.cancel and limits.timeoutMs are not used
  // here. Error (one line naming the program): a bad argv or environment, no work directory,
  // a program that cannot be executed, out of descriptors.
  [[nodiscard]] static util::Result<std::unique_ptr<ChildProcess>> start(const RunSpec& spec);

  ChildProcess(Key, std::unique_ptr<WorkDir> workDir, pid_t pid, std::uint64_t runToken,
               std::int64_t startUs, util::UniqueFd toStdin, util::UniqueFd fromStdout,
               util::UniqueFd fromStderr);
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  std::int64_t startUs() const { return startUs_; }  // monotonic, just before the spawn
  const std::string& workDir() const;

  // Runs the poll loop (feed stdin, read stdout through io.onStdout, keep stderr, enforce the
  // timeout, cancel and SIGKILL after the grace) until io.onStdout returns kDone or the
  // program's main process has exited. An exited program is a zombie until finish(). Its
  // timeout is the next deadline; a flood on stdout or stderr cannot starve the deadlines.
  void pump(const Io& io, IoResult& result);

  // Kills whatever is left of the group, reaps the main process, then reads what is still in
  // stdout (through io.onStdout) and stderr (into result) until end of file or 200 ms have
  // passed (a setsid() escapee holding the pipes must not keep us). Returns the wait status.
  int finish(const Io& io, IoResult& result);

  // result.err, followed by "... (truncated)" when more came than was kept.
  static std::string keptStderr(const IoResult& result);
  // Fills outcome.kind (and reason, signal, exitCode, err) for a program that finish() reaped:
  // kTimedOut or kCancelled for those stops, kSignaled or kExited from the wait status when the
  // runner did not stop it. For Stop::kKilled the kind is left to the caller, who knows why.
  static void settle(const IoResult& result, int status, RunOutcome& outcome);

  // True once the main process has exited (without reaping it). Never blocks.
  bool exited() const;
  bool stdinOpen() const { return toStdin_.valid(); }
  // Bytes written to stdin that the program has not read yet (0 when stdin is closed).
  std::uint64_t stdinUnread() const;
  void closeStdin() { toStdin_.reset(); }
  // Reads and drops whatever waits in stderr now; true when stdout has a byte waiting (which
  // it consumes). Never blocks. For the gap between two tasks of a serve process.
  void dropStderr();
  bool stdoutHasData();

 private:
  void killGroup(int sig) const;
  int reap();
  void readStderr(IoResult& result, std::uint64_t cap);
  void readStdout(const Io& io, IoResult& result);

  std::unique_ptr<WorkDir> workDir_;  // removed after the program is reaped (see ~ChildProcess)
  pid_t pid_;
  std::uint64_t runToken_;  // its MESH_RUN (strays.h)
  bool reaped_ = false;
  std::int64_t startUs_;
  util::UniqueFd toStdin_, fromStdout_, fromStderr_;
  util::UniqueFd pidFd_;  // readable at exit; invalid when pidfd_open is unavailable
};

}  // namespace mesh::exec
