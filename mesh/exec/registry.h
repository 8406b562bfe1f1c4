// Handler registry: what a spore runs for a task's handler name. A handler is a built-in
// function (compiled in, run in the calling thread) or a program from one of two sources: the
// operator's handler directory (--handlers DIR) or an installed signed bundle. A program runs
// one process per task (runProgram), unless its file name ends in ".serve": then it is a serve
// handler (serve.h), one long-lived process fed many tasks, named without the suffix.
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

class ServeProcesses;

enum class Outcome { kOk, kFailed, kTimedOut, kCrashed, kUnknownHandler, kCancelled };
const char* outcomeName(Outcome outcome);  // "ok", "failed", "timed out", ...

struct TaskInput {
  std::uint64_t taskId = 0;
  unsigned attempt = 1;
  std::string_view payload;    // borrowed for the duration of the call
  std::int64_t timeoutMs = 0;  // 0: the default of ProgramSettings::limits
  const std::atomic<bool>* cancel = nullptr;  // optional, borrowed; true = stop promptly
  // Optional, borrowed: the calling thread's serve processes (serve.h), used for serve handlers.
  // Null: a serve handler runs the task in a temporary process that is stopped afterwards.
  ServeProcesses* serve = nullptr;
  // Optional, borrowed: a serve handler's RunSpec::onLong (subprocess.h): called at most once,
  // on the calling thread, when the task turns out long. Other handlers never call it.
  const std::function<void()>* onLong = nullptr;
};

struct TaskOutput {
  Outcome outcome = Outcome::kOk;
  std::string output;  // the result (kOk only)
  std::string error;   // one line for the user (everything but kOk)
  // True when the outcome shows that the program itself is broken, whatever its input: it could
  // not be executed (kCannotExecute: missing, not executable, bad interpreter), it was killed by
  // a signal nobody here sent (kCrashed; but not SIGKILL, SIGXCPU or SIGXFSZ, which the kernel
  // and the resource limits send when a run grows too big, as a timeout does), or a serve
  // handler broke its protocol. A plain failure (non-zero exit, an ERR reply, a serve handler
  // that exits before its reply), a timeout and too much output are never a fault: bad input
  // does that. The spore judges a new bundle version's trial by these (docs/bundles.md).
  bool programFault = false;
  // With programFault, for a map-reduce task: the handler of the step at fault (a combiner may
  // come from another bundle than the mapper). Empty: the task's own handler.
  std::string faultHandler = {};
};

// A built-in handler. Must honour input.cancel and input.timeoutMs if it can take long, and
// must be safe to call from several threads at once.
using BuiltinFn = std::function<TaskOutput(const TaskInput&)>;

// How program handlers are run on this spore.
struct ProgramSettings {
  RunLimits limits;        // limits.timeoutMs is the default when a task gives none
  std::string workParent;  // existing directory (absolute; a tmpfs is best) for the runs' work dirs
  // The program's base environment; MESH_TASK_ID, MESH_ATTEMPT, MESH_HANDLER, HOME and TMPDIR
  // are added per run (a serve handler gets MESH_HANDLER, HOME and TMPDIR; the task id and the
  // attempt are in each TASK header).
  std::vector<std::string> env = {"PATH=/usr/bin:/bin"};
};

enum class Source { kDirectory, kBundle };

// [A-Za-z0-9._-]{1,128}, not starting with '.'.
bool isValidHandlerName(std::string_view name);

// The suffix of a serve handler's file name.
inline constexpr std::string_view kServeSuffix = ".serve";

// The handler a program file provides, by its file name: "NAME.serve" is the serve handler NAME,
// any other name the one-shot handler of that name. The one rule for both sources (the handler
// directory and bundles, whose manifests list file names).
struct ProgramName {
  std::string handler;
  bool serve = false;
};
ProgramName programName(std::string_view fileName);

// An immutable name -> handler map. Safe to use from any number of threads.
class HandlerTable {
 public:
  bool has(std::string_view name) const;
  std::vector<std::string> names() const;  // sorted
  // "builtin", the program's absolute path, or "" when the name is unknown.
  std::string where(std::string_view name) const;
  // True for a serve handler (a program whose file name ends in ".serve").
  bool isServe(std::string_view name) const;
  // Runs one task in the calling thread and blocks until it is done. A non-zero
  // input.timeoutMs replaces settings.limits.timeoutMs. Never throws for anything the handler
  // or its program does: an unknown name is kUnknownHandler, a program that cannot start is
  // kFailed, a program killed by a signal it did not get from us is kCrashed, a program whose
  // stdout passes the cap is kFailed. A serve handler runs on input.serve (or a temporary
  // process); an ERR reply and a protocol error are kFailed, an exit before the reply is kFailed
  // (kCrashed for a signal). TaskOutput::programFault says which of these blame the program.
  TaskOutput run(std::string_view name, const TaskInput& input,
                 const ProgramSettings& settings) const;

 private:
  friend class HandlerRegistry;
  struct Handler {
    BuiltinFn builtin;    // set for a built-in
    std::string program;  // absolute path otherwise
    bool serve = false;   // the program is a serve handler
  };
  std::map<std::string, Handler, std::less<>> handlers_;
};

// The mutable side, owned by main() (no singleton) and updated from the main thread.
//
// Precedence on a name clash: a built-in is never shadowed; then a bundle wins over the
// directory. A bundle is signed, fleet-wide code that the operator asked the whole mesh to run;
// a stray local file must not silently replace it on one spore (the clash is logged, and the
// operator can give the local program another name). Within one source, "x.serve" wins over
// "x" (logged): the serve version is the one the author opted into, and a bundle may carry
// both so that spores without serve support run "x" while newer ones run "x.serve".
class HandlerRegistry {
 public:
  HandlerRegistry();

  // Registers a built-in. An invalid or duplicate name is a bug (throws std::logic_error).
  void addBuiltin(const std::string& name, BuiltinFn fn);
  // Replaces every program of `source` with `programs` (file name -> absolute path; the handler
  // name is programName(file name)). Entries with an invalid file name or a relative path are
  // skipped with a warning. The bundle module calls this
  // with the handlers of the installed bundles after each install or rollback; main() calls it
  // with scanHandlerDirectory(DIR).
  void setPrograms(Source source, std::map<std::string, std::string> programs);
  // The current table; never null. Cheap (a locked shared_ptr copy): take one per task.
  std::shared_ptr<const HandlerTable> snapshot() const;

 private:
  void publishLocked();  // rebuilds current_ from the sources; caller holds mu_

  mutable std::mutex mu_;
  struct Program {
    std::string path;
    bool serve = false;
  };
  std::map<std::string, BuiltinFn> builtins_;
  std::map<std::string, Program> directory_;  // by handler name
  std::map<std::string, Program> bundle_;
  std::shared_ptr<const HandlerTable> current_;
};

// Lists the handler programs in an operator's directory: file name -> absolute resolved path for
// every regular, executable file whose name is a valid handler name (for setPrograms). Skipped,
// each with a log line: dotfiles, bad names, non-executables, non-regular files, and symlinks
// that dangle or point outside the directory. Error when the directory cannot be read.
[[nodiscard]] util::Result<std::map<std::string, std::string>> scanHandlerDirectory(
    const std::string& dir);

}  // namespace mesh::exec
