// Serve handlers: a long-lived handler process fed many tasks, one at a time, over its stdin and
// stdout, instead of one process per task (starting a process costs 2.5-4.5 ms on the VMs we
// measured, more than many tasks take). A program is a serve handler when its file name ends in
// ".serve" (registry.h decides that); it is started like any program handler (process.h: own
// process group, clean environment plus MESH_HANDLER, HOME and TMPDIR = a work directory that
// lives as long as the process, resource limits but RLIMIT_CPU, all descriptors closed).
//
// The framed protocol (docs/protocol.md section 8 is the reference):
//   spore -> handler, per task:  "TASK <task-id> <attempt> <payload-bytes>\n" + the payload
//   handler -> spore, per task:  "OK <bytes>\n" + the output, or "ERR <bytes>\n" + a message
// Numbers are decimal ASCII (no sign, no leading spaces). EOF on stdin means: exit. Anything
// else on stdout is a protocol error: a header that is not one of the two above or is longer
// than kMaxReplyHeader bytes, or a length over the output cap (limits.maxStdoutBytes, which caps
// ERR messages too); the task fails, the process is killed and the next task gets a fresh one.
// Bytes on stdout between tasks (after a reply, before the next TASK) do not fail the task that
// was answered; the process is replaced before the next task and a warning is logged. A handler
// may exit between tasks (to recycle itself, say): a task it exits on without having read a
// byte of it goes to a fresh process, once, without failing.
//
// Per task: limits.timeoutMs and the cancel flag bound the task (SIGTERM to the group, SIGKILL
// after limits.killGraceMs), stderr is drained all the time and what came during the task is
// kept up to limits.maxStderrBytes for the error text. RLIMIT_CPU is never set: it counts the
// whole life of a process, so a serve handler's only per-task limit is the wall-clock timeout.
//
// Lifetime: a ServeProcesses owns its processes, one per handler name. A process is started for
// the first task of its handler and reused until
//   - it breaks: exits, crashes, breaks the protocol, times out or is cancelled (it is killed and
//     reaped at once; the task gets the outcome a one-shot program would get),
//   - its program changes: another path (a new bundle version) or another file at the same path
//     (checked with stat() before every task: device, inode, size, mtime, ctime),
//   - it has been idle for ServeOptions::idleMs (stopIdle(), which the owner's loop calls),
//   - the ServeProcesses is destroyed.
// A process stopped for the last three reasons gets EOF on stdin, then ServeOptions::stopWaitMs
// to exit, then SIGKILL to its group; it is always reaped, and its work directory removed.
//
// Thread rule: a ServeProcesses belongs to the one thread that creates, uses and destroys it (a
// spore has one per worker thread); it has no locks and must not be shared. Its processes get
// SIGKILL from the kernel if that thread ends without destroying it (PR_SET_PDEATHSIG).
// Process rule: as for runProgram (subprocess.h): SIGPIPE ignored, SIGCHLD not SIG_IGN.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "mesh/exec/subprocess.h"
#include "mesh/util/result.h"

namespace mesh::exec {

// A reply header longer than this (its '\n' included) is a protocol error.
inline constexpr std::size_t kMaxReplyHeader = 32;

struct ServeOptions {
  std::int64_t idleMs = 30'000;     // an unused process is stopped after this long
  std::int64_t stopWaitMs = 1'000;  // EOF on stdin -> SIGKILL to the group, when stopping one
};

class ServeProcesses {
 public:
  explicit ServeProcesses(ServeOptions options = {});
  ServeProcesses(const ServeProcesses&) = delete;
  ServeProcesses& operator=(const ServeProcesses&) = delete;
  // Stops every process (EOF on stdin to all of them, then at most stopWaitMs in all before
  // SIGKILL) and reaps them: nothing is left running.
  ~ServeProcesses();

  // Runs one task on the process of `handler`, starting one first when there is none (or the one
  // there may not be used, see above). spec.argv[0] is the program; spec.env, spec.workParent and
  // the rlimits of spec.limits are used when a process is started (cpuSeconds never is);
  // spec.stdinData is the payload; spec.limits.timeoutMs (0: none), killGraceMs,
  // maxStdoutBytes, maxStderrBytes and spec.cancel apply to this task, the timeout counting from
  // the call (a start included). spec.onLong, if set, is called once if the task turns out long:
  // before a process is stopped or started for it, before a broken one is reaped, or 1 to 2 ms
  // into the wait for its reply; never for a task answered within 1 ms by a running process.
  // Error only when no process could be started (as runProgram).
  // An answered task is kReplied or kRefused; otherwise the outcome is kSignaled, kBroken (a
  // protocol error, or an exit before the reply), kOutputTooLarge, kTimedOut or kCancelled.
  [[nodiscard]] util::Result<RunOutcome> run(const std::string& handler, const RunSpec& spec,
                                             std::uint64_t taskId, unsigned attempt);

  // Stops the processes that have been idle for options.idleMs or longer.
  void stopIdle();
  // Milliseconds until the next process becomes due for stopIdle() (0: one is due now), or -1
  // when none runs: the timeout of the owner's wait for work.
  std::int64_t msUntilIdle() const;

  std::size_t size() const { return processes_.size(); }
  // The PID of the process serving `handler`, or 0 when there is none.
  pid_t pidOf(const std::string& handler) const;

 private:
  struct Process;
  // The process for `handler`, started when there is none or the one there may not be used;
  // beforeBlocking is called first when one is stopped or started.
  util::Result<Process*> processFor(const std::string& handler, const RunSpec& spec,
                                    const std::function<void()>& beforeBlocking);
  // Stops a process that is fine but no longer wanted: EOF, at most until deadlineMs, SIGKILL.
  void stopGently(const std::string& handler, Process& process, std::int64_t deadlineMs,
                  const char* why);

  ServeOptions options_;
  std::map<std::string, std::unique_ptr<Process>> processes_;  // by handler name
};

// One task on a temporary process that is stopped (EOF, then SIGKILL after stopWaitMs) before
// this returns: for callers without a ServeProcesses. Arguments and outcome as for run().
[[nodiscard]] util::Result<RunOutcome> runServeTask(const std::string& handler,
                                                    const RunSpec& spec, std::uint64_t taskId,
                                                    unsigned attempt);

}  // namespace mesh::exec
