// Strays: the processes a handler run left behind. A run's program is the leader of its own
// process group, and the runner ends a run by signalling that group; a descendant that leaves
// the group (setsid, setpgid, a daemonising double fork) escapes that kill. Once this process
// is a child subreaper (enable()), such a descendant is re-parented to it, not to init, when its
// parent exits, and sweep() finds it among this process's children and kills it with all it
// started.
//
// Telling a stray from a run still going: every run gets MESH_RUN=<token> in its environment
// (ChildProcess::start), which its descendants inherit. A child of this process that is not a
// live run's program is spared while its MESH_RUN names a live run, or while its process group
// is a live run's group (a background job that never left the group: its run's own end kills
// it). Every other one is killed: SIGSTOP down its tree first, each process confirmed stopped
// before its children are listed (a stopped process can neither fork nor reap, so the pids
// listed stay its own; one that does not stop within 50 ms, or once the sweep has waited 100 ms in
// all, is killed without its children being listed: they come to this process when it dies, and
// a later sweep takes them), then SIGKILL to all of them. A process that both left its group and
// dropped MESH_RUN from its environment is killed as soon as its parent exits, even while its
// run goes on: the price of not needing a cgroup per run.
//
// Zombies: a killed stray is a child of this process; a later sweep reaps it, by its pid, never
// with waitpid(-1) (which would take the runs' own exits from the threads that wait for them).
//
// Which children: the kernel gives a re-parented process to the subreaper's main thread (the
// first live thread of the group), while a run's program is the child of the thread that
// started it. So a sweep reads the main thread's children only, and never sees the programs of
// runs started on other threads, registered or not.
//
// Thread rule: every function is safe from any thread; sweeps run one at a time. A run started
// on the main thread could be seen between its spawn and its registration: a sweep that
// overlaps such a spawn kills nothing and reaps nothing (the next one will). The same goes for
// every spawn where the kernel has no children files (/proc/PID/task/TID/children), since the
// sweep then scans all of /proc for this process's children. Before enable() nothing is swept
// (tokens are still handed out).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "mesh/util/result.h"

namespace mesh::exec::strays {

// Makes this process a child subreaper (PR_SET_CHILD_SUBREAPER) and turns sweeping on. Call once
// from main() before the first run. Error: the prctl failed; strays then go to init, as before.
util::Status enable();
bool enabled();

// A run being started: made by ChildProcess::start before the spawn, on the thread that
// spawns; the run is registered by started(), or dropped with the Spawning when the spawn failed.
class Spawning {
 public:
  Spawning();
  Spawning(const Spawning&) = delete;
  Spawning& operator=(const Spawning&) = delete;
  ~Spawning();

  std::uint64_t token() const { return token_; }
  // "MESH_RUN=<token>", for the program's environment.
  std::string envEntry() const;
  // The program is running as `pid`: the run is live until ended(token()).
  void started(pid_t pid);

 private:
  void settle();
  std::uint64_t token_;
  bool watched_;  // a spawn a sweep could see before it is registered (see the thread rule)
  bool settled_ = false;
};

// The run's program has been reaped: its strays are no longer spared.
void ended(std::uint64_t token);

struct SweepResult {
  int killed = 0;  // processes sent SIGKILL (strays and their descendants)
  int reaped = 0;  // dead strays reaped
};

// Kills every stray not spared (above) and reaps the dead ones; logs one WARN line per stray
// killed, naming the task and handler its environment names. A no-op before enable().
SweepResult sweep();

struct Totals {
  std::uint64_t killed = 0;
  std::uint64_t reaped = 0;
};
Totals totals();

}  // namespace mesh::exec::strays
