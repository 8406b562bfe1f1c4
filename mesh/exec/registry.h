// Handler registry: what a spore runs for a task's handler name. A handler is a built-in
// function (compiled in, run in the calling thread) or a program (run by runProgram, one
// process per task) from one of two sources: the operator's handler directory (--handlers DIR)
// or an installed signed bundle.
//
// Thread rule: the spore's main thread updates the HandlerRegistry (rarely); each update
// publishes a new immutable HandlerTable. Worker threads take snapshot() once per task and run
// the task against it, concurrently and without locks, so a task that has started finishes on
// the table it started with even if the registry changes meanwhile.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "mesh/exec/subprocess.h"
#include "mesh/util/result.h"

namespace mesh::exec {

enum class Outcome { kOk, kFailed, kTimedOut, kCrashed, kUnknownHandler, kCancelled };
const char* outcomeName(Outcome outcome);  // "ok", "failed", "timed out", ...

struct TaskInput {
  std::uint64_t taskId = 0;
  unsigned attempt = 1;
  std::string_view payload;    // borrowed for the duration of the call
  std::int64_t timeoutMs = 0;  // 0: the default of ProgramSettings::limits
  const std::atomic<bool>* cancel = nullptr;  // optional, borrowed; true = stop promptly
};

struct TaskOutput {
  Outcome outcome = Outcome::kOk;
  std::string output;  // the result (kOk only)
  std::string error;   // one line for the user (everything but kOk)
};

// A built-in handler. Must honour input.cancel and input.timeoutMs if it can take long, and
// must be safe to call from several threads at once.
using BuiltinFn = std::function<TaskOutput(const TaskInput&)>;

// How program handlers are run on this spore.
struct ProgramSettings {
  RunLimits limits;        // limits.timeoutMs is the default when a task gives none
  std::string workParent;  // existing directory (absolute; a tmpfs is best) for the runs' work dirs
  // The program's base environment; MESH_TASK_ID, MESH_ATTEMPT, MESH_HANDLER, HOME and TMPDIR
  // are added per run.
  std::vector<std::string> env = {"PATH=/usr/bin:/bin"};
};

enum class Source { kDirectory, kBundle };

// [A-Za-z0-9._-]{1,128}, not starting with '.'.
bool isValidHandlerName(std::string_view name);

// An immutable name -> handler map. Safe to use from any number of threads.
class HandlerTable {
 public:
  bool has(std::string_view name) const;
  std::vector<std::string> names() const;  // sorted
  // "builtin", the program's absolute path, or "" when the name is unknown.
  std::string where(std::string_view name) const;
  // Runs one task in the calling thread and blocks until it is done. A non-zero
  // input.timeoutMs replaces settings.limits.timeoutMs. Never throws for anything the handler
  // or its program does: an unknown name is kUnknownHandler, a program that cannot start is
  // kFailed, a program killed by a signal it did not get from us is kCrashed, a program whose
  // stdout passes the cap is kFailed.
  TaskOutput run(std::string_view name, const TaskInput& input,
                 const ProgramSettings& settings) const;

 private:
  friend class HandlerRegistry;
  struct Handler {
    BuiltinFn builtin;    // set for a built-in
    std::string program;  // absolute path otherwise
  };
  std::map<std::string, Handler, std::less<>> handlers_;
};

// The mutable side, owned by main() (no singleton) and updated from the main thread.
//
// Precedence on a name clash: a built-in is never shadowed; then a bundle wins over the
// directory. A bundle is signed, fleet-wide code that the operator asked the whole mesh to run;
// a stray local file must not silently replace it on one spore (the clash is logged, and the
// operator can give the local program another name).
class HandlerRegistry {
 public:
  HandlerRegistry();

  // Registers a built-in. An invalid or duplicate name is a bug (throws std::logic_error).
  void addBuiltin(const std::string& name, BuiltinFn fn);
  // Replaces every program of `source` with `programs` (name -> absolute path). Entries with
  // an invalid name or a relative path are skipped with a warning. The bundle module calls this
  // with the handlers of the installed bundles after each install or rollback; main() calls it
  // with scanHandlerDirectory(DIR).
  void setPrograms(Source source, std::map<std::string, std::string> programs);
  // The current table; never null. Cheap (a locked shared_ptr copy): take one per task.
  std::shared_ptr<const HandlerTable> snapshot() const;

 private:
  void publishLocked();  // rebuilds current_ from the sources; caller holds mu_

  mutable std::mutex mu_;
  std::map<std::string, BuiltinFn> builtins_;
  std::map<std::string, std::string> directory_;
  std::map<std::string, std::string> bundle_;
  std::shared_ptr<const HandlerTable> current_;
};

// Lists the handler programs in an operator's directory: name -> absolute resolved path for
// every regular, executable file whose name is a valid handler name. Skipped, each with a log
// line: dotfiles, bad names, non-executables, non-regular files, and symlinks that dangle or
// point outside the directory. Error when the directory cannot be read.
[[nodiscard]] util::Result<std::map<std::string, std::string>> scanHandlerDirectory(
    const std::string& dir);

}  // namespace mesh::exec
