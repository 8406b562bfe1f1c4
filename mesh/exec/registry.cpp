#include "mesh/exec/registry.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>

#include "mesh/exec/serve.h"
#include "mesh/util/log.h"

namespace mesh::exec {
namespace {

constexpr std::size_t kMaxHandlerName = 128;

// The signals a run gets from the kernel or its resource limits when it grows too big (the
// OOM killer, RLIMIT_CPU, RLIMIT_FSIZE): like a timeout, input can bring them on.
bool limitSignal(int signal) { return signal == SIGKILL || signal == SIGXCPU || signal == SIGXFSZ; }

TaskOutput fromRun(std::string_view name, const util::Result<RunOutcome>& run) {
  if (!run) return {Outcome::kFailed, {}, run.error().message, run.error().code == kCannotExecute};
  const RunOutcome& r = run.value();
  switch (r.kind) {
    case RunOutcome::Kind::kExited:
      if (r.exitCode == 0) return {Outcome::kOk, r.out, {}};
      return {Outcome::kFailed, {}, r.describe()};
    case RunOutcome::Kind::kSignaled:
      return {Outcome::kCrashed, {}, r.describe(), !limitSignal(r.signal)};
    case RunOutcome::Kind::kTimedOut: return {Outcome::kTimedOut, {}, r.describe()};
    case RunOutcome::Kind::kOutputTooLarge: return {Outcome::kFailed, {}, r.describe()};
    case RunOutcome::Kind::kCancelled: return {Outcome::kCancelled, {}, r.describe()};
    case RunOutcome::Kind::kReplied: return {Outcome::kOk, r.out, {}};
    case RunOutcome::Kind::kRefused: return {Outcome::kFailed, {}, r.describe()};
    // The program's fault only when it broke the protocol: exiting before the reply is what a
    // serve handler does on input it cannot take (an uncaught exception), like a non-zero exit.
    case RunOutcome::Kind::kBroken: return {Outcome::kFailed, {}, r.describe(), r.brokeProtocol};
  }
  return {Outcome::kFailed, {}, "handler " + std::string(name) + ": unknown run outcome"};
}

}  // namespace

const char* outcomeName(Outcome outcome) {
  switch (outcome) {
    case Outcome::kOk: return "ok";
    case Outcome::kFailed: return "failed";
    case Outcome::kTimedOut: return "timed out";
    case Outcome::kCrashed: return "crashed";
    case Outcome::kUnknownHandler: return "unknown handler";
    case Outcome::kCancelled: return "cancelled";
  }
  return "?";
}

bool isValidHandlerName(std::string_view name) {
  if (name.empty() || name.size() > kMaxHandlerName || name.front() == '.') return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

ProgramName programName(std::string_view fileName) {
  if (fileName.size() > kServeSuffix.size() && fileName.ends_with(kServeSuffix))
    return {std::string(fileName.substr(0, fileName.size() - kServeSuffix.size())), true};
  return {std::string(fileName), false};
}

bool HandlerTable::has(std::string_view name) const {
  return handlers_.find(name) != handlers_.end();
}

std::vector<std::string> HandlerTable::names() const {
  std::vector<std::string> out;
  out.reserve(handlers_.size());
  for (const auto& [name, handler] : handlers_) out.push_back(name);  // std::map: sorted
  return out;
}

std::string HandlerTable::where(std::string_view name) const {
  auto it = handlers_.find(name);
  if (it == handlers_.end()) return {};
  return it->second.builtin ? "builtin" : it->second.program;
}

bool HandlerTable::isServe(std::string_view name) const {
  auto it = handlers_.find(name);
  return it != handlers_.end() && it->second.serve;
}

TaskOutput HandlerTable::run(std::string_view name, const TaskInput& input,
                             const ProgramSettings& settings) const {
  auto it = handlers_.find(name);
  if (it == handlers_.end())
    return {Outcome::kUnknownHandler, {},
            "unknown handler '" + std::string(name) + "' on this spore"};
  const Handler& handler = it->second;
  TaskInput effective = input;
  if (effective.timeoutMs <= 0) effective.timeoutMs = settings.limits.timeoutMs;

  // A handler that throws is a bug; it fails this task, not the worker thread.
  try {
    if (handler.builtin) return handler.builtin(effective);

    RunSpec spec;
    spec.argv = {handler.program};
    spec.stdinData = effective.payload;
    spec.env = settings.env;
    if (!handler.serve) {  // a serve handler finds these in each TASK header
      spec.env.push_back("MESH_TASK_ID=" + std::to_string(effective.taskId));
      spec.env.push_back("MESH_ATTEMPT=" + std::to_string(effective.attempt));
    }
    spec.env.push_back("MESH_HANDLER=" + std::string(name));
    spec.workParent = settings.workParent;
    spec.limits = settings.limits;
    spec.limits.timeoutMs = effective.timeoutMs;
    spec.cancel = effective.cancel;
    if (!handler.serve) return fromRun(name, runProgram(spec));
    spec.onLong = effective.onLong;
    const std::string handlerName(name);
    if (effective.serve != nullptr)
      return fromRun(name, effective.serve->run(handlerName, spec, effective.taskId,
                                                effective.attempt));
    return fromRun(name, runServeTask(handlerName, spec, effective.taskId, effective.attempt));
  } catch (const std::exception& e) {
    MESH_ERROR("handler %.*s, task %llu: internal error: %s", static_cast<int>(name.size()),
               name.data(), static_cast<unsigned long long>(input.taskId), e.what());
    return {Outcome::kFailed, {},
            "internal error in handler " + std::string(name) + ": " + e.what()};
  }
}

HandlerRegistry::HandlerRegistry() : current_(std::make_shared<const HandlerTable>()) {}

void HandlerRegistry::addBuiltin(const std::string& name, BuiltinFn fn) {
  MESH_ASSERT(isValidHandlerName(name), "built-in handler name '" + name + "'");
  MESH_ASSERT(fn != nullptr, "built-in handler '" + name + "' has no function");
  std::lock_guard<std::mutex> lock(mu_);
  MESH_ASSERT(builtins_.count(name) == 0, "built-in handler '" + name + "' registered twice");
  builtins_.emplace(name, std::move(fn));
  publishLocked();
}

void HandlerRegistry::setPrograms(Source source, std::map<std::string, std::string> programs) {
  const char* sourceName = source == Source::kBundle ? "bundle" : "directory";
  std::map<std::string, Program> byHandler;
  for (auto& [file, path] : programs) {
    if (!isValidHandlerName(file) || path.empty() || path.front() != '/') {
      MESH_WARN("%s handler '%s' -> '%s' ignored: bad name or not an absolute path", sourceName,
                file.c_str(), path.c_str());
      continue;
    }
    ProgramName name = programName(file);
    auto [it, inserted] = byHandler.try_emplace(name.handler, Program{path, name.serve});
    if (inserted) continue;
    // "x" and "x.serve": the serve handler wins, whichever of the two came first.
    const std::string& serve = name.serve ? path : it->second.path;
    const std::string& oneShot = name.serve ? it->second.path : path;
    MESH_WARN("%s handler %s: both %s and %s exist; using the serve handler %s", sourceName,
              name.handler.c_str(), oneShot.c_str(), serve.c_str(), serve.c_str());
    if (name.serve) it->second = Program{path, true};
  }
  std::lock_guard<std::mutex> lock(mu_);
  (source == Source::kBundle ? bundle_ : directory_) = std::move(byHandler);
  publishLocked();
}

std::shared_ptr<const HandlerTable> HandlerRegistry::snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

void HandlerRegistry::publishLocked() {
  auto table = std::make_shared<HandlerTable>();
  for (const auto& [name, fn] : builtins_) table->handlers_[name] = {fn, {}, false};
  for (const auto& [name, program] : directory_) {
    if (builtins_.count(name) != 0) {
      MESH_WARN("directory handler %s (%s) ignored: a built-in cannot be shadowed", name.c_str(),
                program.path.c_str());
    } else if (bundle_.count(name) != 0) {
      MESH_WARN("directory handler %s (%s) ignored: the bundle handler of that name wins",
                name.c_str(), program.path.c_str());
    } else {
      table->handlers_[name] = {{}, program.path, program.serve};
    }
  }
  for (const auto& [name, program] : bundle_) {
    if (builtins_.count(name) != 0) {
      MESH_WARN("bundle handler %s (%s) ignored: a built-in cannot be shadowed", name.c_str(),
                program.path.c_str());
    } else {
      table->handlers_[name] = {{}, program.path, program.serve};
    }
  }
  current_ = std::move(table);
}

util::Result<std::map<std::string, std::string>> scanHandlerDirectory(const std::string& dir) {
  std::unique_ptr<char, decltype(&std::free)> resolved(::realpath(dir.c_str(), nullptr),
                                                       &std::free);
  if (!resolved)
    return util::err("cannot read the handler directory " + dir + ": " + std::strerror(errno));
  const std::string root = resolved.get();
  struct CloseDir {
    void operator()(DIR* d) const { ::closedir(d); }
  };
  std::unique_ptr<DIR, CloseDir> listing(::opendir(root.c_str()));
  if (!listing)
    return util::err("cannot read the handler directory " + dir + ": " + std::strerror(errno));

  std::map<std::string, std::string> programs;
  // Files that are plainly not programs (a README, sources, sub-directories) are expected in a
  // directory like examples/wordcount: one INFO line names them; odd entries get a warning each.
  std::vector<std::string> notPrograms;
  auto skip = [&dir](const std::string& name, const char* why) {
    MESH_WARN("handler directory %s: skipping '%s': %s", dir.c_str(), name.c_str(), why);
  };
  errno = 0;
  while (dirent* entry = ::readdir(listing.get())) {
    std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    if (name.front() == '.') {
      MESH_INFO("handler directory %s: skipping dotfile '%s'", dir.c_str(), name.c_str());
      continue;
    }
    if (!isValidHandlerName(name)) {
      skip(name, "a handler name uses only [A-Za-z0-9._-] (at most 128)");
      continue;
    }
    std::string path = root + "/" + name;
    struct stat st{};
    if (::lstat(path.c_str(), &st) != 0) continue;  // vanished meanwhile
    if (S_ISLNK(st.st_mode)) {
      std::unique_ptr<char, decltype(&std::free)> target(::realpath(path.c_str(), nullptr),
                                                         &std::free);
      if (!target) {
        skip(name, "the symlink dangles");
        continue;
      }
      std::string targetPath = target.get();
      if (targetPath.rfind(root + "/", 0) != 0) {
        skip(name, "the symlink points outside the directory");
        continue;
      }
      path = targetPath;
      if (::stat(path.c_str(), &st) != 0) continue;
    }
    if (S_ISDIR(st.st_mode)) {
      notPrograms.push_back(name + "/");
      continue;
    }
    if (!S_ISREG(st.st_mode)) {
      skip(name, "not a regular file");
      continue;
    }
    if (::access(path.c_str(), X_OK) != 0) {
      notPrograms.push_back(name);
      continue;
    }
    programs.emplace(name, path);
  }
  if (!notPrograms.empty()) {
    std::sort(notPrograms.begin(), notPrograms.end());
    std::string names;
    for (std::size_t i = 0; i < notPrograms.size() && i < 8; ++i) names += (i ? ", " : "") + notPrograms[i];
    if (notPrograms.size() > 8) names += ", ... (" + std::to_string(notPrograms.size() - 8) + " more)";
    MESH_INFO("handler directory %s: %zu entries are not executable files, so not handlers: %s", dir.c_str(),
              notPrograms.size(), names.c_str());
  }
  return programs;
}

}  // namespace mesh::exec
