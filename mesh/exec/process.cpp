#include "mesh/exec/process.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "mesh/exec/strays.h"
#include "mesh/util/clock.h"
#include "mesh/util/log.h"

namespace mesh::exec {
namespace {

using util::UniqueFd;

constexpr std::int64_t kCancelCheckMs = 25;      // *cancel is looked at least this often
constexpr std::int64_t kWaitidPollMs = 10;       // exit polling when pidfd_open is unavailable
constexpr std::int64_t kDrainAfterExitMs = 200;  // how long to wait for EOF once all is killed
constexpr std::size_t kReadChunk = 64 * 1024;
constexpr int kReadsPerWakeup = 16;              // so a flood cannot starve the deadline checks
constexpr std::size_t kWriteChunk = 1 << 20;
constexpr std::size_t kChildStackBytes = 64 * 1024;
constexpr int kMaxRemoveDepth = 256;

std::int64_t nowMs() { return util::systemClock().monotonicMs(); }

std::string errnoText(int e) { return std::strerror(e); }

// Moves fd to a number >= 3, so that the child's dup2 onto 0, 1 and 2 never clobbers another
// pipe end (possible when the runner itself was started with 0..2 closed).
util::Status raiseFd(UniqueFd& fd) {
  if (fd.get() >= 3) return {};
  int moved = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 3);
  if (moved < 0) return util::err("fcntl(F_DUPFD_CLOEXEC): " + errnoText(errno));
  fd.reset(moved);
  return {};
}

// A pipe with both ends close-on-exec and numbered >= 3. The end the runner keeps is made
// non-blocking; the child's end stays blocking (programs expect that).
util::Status makePipe(UniqueFd& childEnd, UniqueFd& runnerEnd, bool childReads) {
  int ends[2];
  if (::pipe2(ends, O_CLOEXEC) != 0) return util::err("pipe: " + errnoText(errno));
  UniqueFd readEnd(ends[0]), writeEnd(ends[1]);
  if (auto s = raiseFd(readEnd); !s) return s;
  if (auto s = raiseFd(writeEnd); !s) return s;
  childEnd = childReads ? std::move(readEnd) : std::move(writeEnd);
  runnerEnd = childReads ? std::move(writeEnd) : std::move(readEnd);
  int flags = ::fcntl(runnerEnd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(runnerEnd.get(), F_SETFL, flags | O_NONBLOCK) != 0)
    return util::err("fcntl(O_NONBLOCK): " + errnoText(errno));
  return {};
}

// Removes `name` (an entry of the directory dirFd) and everything under it, never following a
// symbolic link: each directory is opened relative to its parent with O_NOFOLLOW, so a link the
// program left behind is unlinked, not entered. Directories the program made unreadable or
// unwritable get mode 0700 back first (through an O_PATH descriptor, so a link swapped in
// meanwhile cannot redirect the chmod). Depth is bounded: each level holds one descriptor.
// Returns false when something could not be removed.
bool removeTree(int dirFd, const char* name, int depth) {
  struct stat st{};
  if (::fstatat(dirFd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return errno == ENOENT;
  if (!S_ISDIR(st.st_mode)) return ::unlinkat(dirFd, name, 0) == 0 || errno == ENOENT;
  if (depth > kMaxRemoveDepth) return false;

  constexpr int kDirFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  UniqueFd fd(::openat(dirFd, name, kDirFlags));
  if (!fd.valid() && errno == EACCES) {
    UniqueFd path(::openat(dirFd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (path.valid()) {
      std::string proc = "/proc/self/fd/" + std::to_string(path.get());
      if (::chmod(proc.c_str(), 0700) == 0) fd.reset(::openat(dirFd, name, kDirFlags));
    }
  }
  if (!fd.valid()) return false;
  if ((st.st_mode & 0700) != 0700) ::fchmod(fd.get(), 0700);

  // Read all names first: unlinking while readdir() walks the same directory is unspecified.
  std::vector<std::string> names;
  {
    int listFd = ::dup(fd.get());
    if (listFd < 0) return false;
    DIR* dir = ::fdopendir(listFd);
    if (dir == nullptr) {
      ::close(listFd);
      return false;
    }
    while (dirent* entry = ::readdir(dir)) {  // per-DIR state only: safe across threads
      if (std::strcmp(entry->d_name, ".") != 0 && std::strcmp(entry->d_name, "..") != 0)
        names.emplace_back(entry->d_name);
    }
    ::closedir(dir);
  }
  bool ok = true;
  for (const std::string& child : names) ok = removeTree(fd.get(), child.c_str(), depth + 1) && ok;
  fd.reset();
  return (::unlinkat(dirFd, name, AT_REMOVEDIR) == 0 || errno == ENOENT) && ok;
}

// What the child does between clone() and execve(). Everything is prepared by the parent; the
// child only makes system calls (async-signal-safe), because it shares the parent's memory.
enum ChildStep {
  kStepNone = 0, kStepPgid, kStepDeathSig, kStepChdir, kStepDup, kStepRlimit, kStepMask, kStepExec
};

struct ChildArgs {
  const char* path = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* workDir = nullptr;
  int stdinFd = -1, stdoutFd = -1, stderrFd = -1;
  int maxFd = 1024;  // for the close() loop when close_range is unavailable
  struct Limit {
    int resource;
    rlimit value;
  } limits[5] = {};
  int limitCount = 0;
  struct sigaction dflAction{};
  sigset_t emptyMask{};
  // Written by the child when a step fails, read by the parent after clone() returns (with
  // CLONE_VFORK that is after the child's execve or _exit, so there is no race).
  int failedStep = kStepNone;
  int failedErrno = 0;
};

[[noreturn]] void childFail(ChildArgs* a, int step) {
  a->failedStep = step;
  a->failedErrno = errno;
  ::_exit(127);
}

int childMain(void* arg) {
  auto* a = static_cast<ChildArgs*>(arg);
  // Every signal back to its default: an inherited SIG_IGN (SIGPIPE!) would survive execve,
  // and a handler of the parent must never run here, on the parent's memory. Failures (SIGKILL,
  // SIGSTOP, glibc's two internal signals) are expected and harmless.
  for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &a->dflAction, nullptr);
  if (::setpgid(0, 0) != 0) childFail(a, kStepPgid);
  // SIGKILL when the thread that cloned us ends. It cannot have ended already: CLONE_VFORK
  // keeps it suspended until execve.
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) childFail(a, kStepDeathSig);
  if (::chdir(a->workDir) != 0) childFail(a, kStepChdir);
  if (::dup2(a->stdinFd, 0) < 0 || ::dup2(a->stdoutFd, 1) < 0 || ::dup2(a->stderrFd, 2) < 0)
    childFail(a, kStepDup);
  // Every descriptor but 0..2 closed, including ones another thread opened without O_CLOEXEC.
  if (::close_range(3, ~0U, 0) != 0) {
    for (int fd = 3; fd < a->maxFd; ++fd) ::close(fd);
  }
  // Limits last, so that a small RLIMIT_NOFILE cannot make the dup2 calls above fail.
  for (int i = 0; i < a->limitCount; ++i) {
    if (::setrlimit(a->limits[i].resource, &a->limits[i].value) != 0) childFail(a, kStepRlimit);
  }
  if (::sigprocmask(SIG_SETMASK, &a->emptyMask, nullptr) != 0) childFail(a, kStepMask);
  ::execve(a->path, a->argv, a->envp);
  childFail(a, kStepExec);
}

// An execve error that is the program file's fault (subprocess.h kCannotExecute), not a lack of
// memory or descriptors on this machine.
bool programRefused(int error) {
  switch (error) {
    case ENOENT:        // missing, or its #! interpreter is
    case EACCES:        // not executable, or a directory
    case ENOEXEC:       // not a format the kernel runs
    case ENOTDIR:
    case ELOOP:
    case ENAMETOOLONG:
    case EISDIR:        // the interpreter is a directory
    case ELIBBAD:
    case EPERM:
      return true;
    default:
      return false;
  }
}

const char* stepText(int step) {
  switch (step) {
    case kStepPgid: return "setpgid";
    case kStepDeathSig: return "prctl(PR_SET_PDEATHSIG)";
    case kStepRlimit: return "setrlimit";
    case kStepChdir: return "chdir into the work directory";
    case kStepDup: return "dup2";
    case kStepMask: return "sigprocmask";
    default: return "execve";
  }
}

// Sets resource to soft `soft` and hard `hard`, both clamped to the runner's own hard limit
// (an unprivileged process cannot raise it). Lowering the hard limit too keeps the program from
// raising its soft limit back.
void addLimit(ChildArgs& a, int resource, std::uint64_t soft, std::uint64_t hard) {
  rlimit current{};
  if (::getrlimit(resource, &current) != 0) return;
  a.limits[a.limitCount++] = {resource, rlimit{std::min<rlim_t>(soft, current.rlim_max),
                                               std::min<rlim_t>(hard, current.rlim_max)}};
}

// Spawns the program with clone(CLONE_VM | CLONE_VFORK), the way glibc's posix_spawn does
// internally, rather than posix_spawn itself: posix_spawn can set the process group, signal
// defaults and mask, dup2, chdir and closefrom, but not resource limits or the parent-death
// signal, and prlimit() after the spawn races with the program (it may open files or map memory
// before the limit lands). Plain fork() is out: it copies the page tables of a large,
// multi-threaded spore (over 20 ms for a 1 GiB heap, see DESIGN.md section 12). CLONE_VM shares
// memory with no copy; CLONE_VFORK suspends this thread until the child has exec'd, so the child
// can use the arguments in place. All signals are blocked around clone() so that no handler of
// ours runs in the child.
util::Result<pid_t> spawn(ChildArgs& args) {
  void* stack = ::mmap(nullptr, kChildStackBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED)
    return util::err("cannot map a stack for the child: " + errnoText(errno));
  sigset_t all, saved;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &saved);
  pid_t pid = ::clone(childMain, static_cast<char*>(stack) + kChildStackBytes,
                      CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
  int cloneErrno = errno;
  ::pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  ::munmap(stack, kChildStackBytes);
  if (pid < 0) return util::err("clone: " + errnoText(cloneErrno));
  return pid;
}

// Reaps `pid`, retrying on EINTR.
int waitFor(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

}  // namespace

// The program's working directory: created by mkdtemp (mode 0700) under the parent, removed with
// all its contents on destruction.
class ChildProcess::WorkDir {
 public:
  static util::Result<std::unique_ptr<WorkDir>> create(const std::string& parent) {
    std::string path = parent + "/run-XXXXXX";
    if (::mkdtemp(path.data()) == nullptr)
      return util::err("cannot create a work directory in " + parent + ": " + errnoText(errno));
    return std::make_unique<WorkDir>(std::move(path));
  }
  explicit WorkDir(std::string path) : path_(std::move(path)) {}
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;
  ~WorkDir() {
    std::size_t slash = path_.rfind('/');
    std::string parent = slash == 0 ? "/" : path_.substr(0, slash);
    UniqueFd parentFd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!parentFd.valid() || !removeTree(parentFd.get(), path_.c_str() + slash + 1, 0))
      MESH_WARN("could not remove all of the work directory %s", path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

util::Result<std::unique_ptr<ChildProcess>> ChildProcess::start(const RunSpec& spec) {
  if (spec.argv.empty() || spec.argv[0].empty() || spec.argv[0][0] != '/')
    return util::err("cannot run '" + (spec.argv.empty() ? std::string() : spec.argv[0]) +
                     "': the program must be given by its absolute path");
  const std::string& program = spec.argv[0];
  for (const std::string& a : spec.argv) {
    if (a.find('\0') != std::string::npos)
      return util::err("cannot run " + program + ": an argument contains a NUL byte");
  }
  for (const std::string& e : spec.env) {
    if (e.find('=') == std::string::npos || e.find('\0') != std::string::npos)
      return util::err("cannot run " + program + ": bad environment entry '" + e + "'");
  }
  if (spec.workParent.empty() || spec.workParent[0] != '/')
    return util::err("cannot run " + program +
                     ": the parent of its work directory must be an absolute path");
  auto workDir = WorkDir::create(spec.workParent);
  if (!workDir) return util::err("cannot run " + program + ": " + workDir.error().message);
  const std::string& workPath = (*workDir)->path();

  // argv and envp as the C arrays execve wants, pointing into strings that outlive the spawn.
  std::vector<char*> argv;
  for (const std::string& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> envStore;
  for (const std::string& e : spec.env) {
    if (e.rfind("HOME=", 0) != 0 && e.rfind("TMPDIR=", 0) != 0) envStore.push_back(e);
  }
  envStore.push_back("HOME=" + workPath);
  envStore.push_back("TMPDIR=" + workPath);
  // From here until the run is registered, no sweep looks at this process's children.
  strays::Spawning spawning;
  envStore.push_back(spawning.envEntry());
  std::vector<char*> envp;
  for (const std::string& e : envStore) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  UniqueFd childIn, childOut, childErr, toStdin, fromStdout, fromStderr;
  for (auto s : {makePipe(childIn, toStdin, true), makePipe(childOut, fromStdout, false),
                 makePipe(childErr, fromStderr, false)}) {
    if (!s) return util::err("cannot run " + program + ": " + s.error().message);
  }

  const RunLimits& limits = spec.limits;
  ChildArgs args;
  args.path = program.c_str();
  args.argv = argv.data();
  args.envp = envp.data();
  args.workDir = workPath.c_str();
  args.stdinFd = childIn.get();
  args.stdoutFd = childOut.get();
  args.stderrFd = childErr.get();
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY)
    args.maxFd = static_cast<int>(std::min<rlim_t>(nofile.rlim_cur, 1 << 20));
  addLimit(args, RLIMIT_CORE, 0, 0);  // a crashing handler never writes a core dump
  if (limits.cpuSeconds > 0)  // SIGXCPU at the soft limit, SIGKILL at the hard one a second later
    addLimit(args, RLIMIT_CPU, limits.cpuSeconds, limits.cpuSeconds + 1);
  if (limits.addressSpaceBytes > 0)
    addLimit(args, RLIMIT_AS, limits.addressSpaceBytes, limits.addressSpaceBytes);
  if (limits.openFiles > 0) addLimit(args, RLIMIT_NOFILE, limits.openFiles, limits.openFiles);
  if (limits.fileSizeBytes > 0)
    addLimit(args, RLIMIT_FSIZE, limits.fileSizeBytes, limits.fileSizeBytes);
  args.dflAction.sa_handler = SIG_DFL;
  ::sigemptyset(&args.dflAction.sa_mask);
  ::sigemptyset(&args.emptyMask);

  std::int64_t startUs = util::systemClock().monotonicUs();
  auto spawned = spawn(args);
  if (!spawned) return util::err("cannot run " + program + ": " + spawned.error().message);
  spawning.started(*spawned);
  if (args.failedStep != kStepNone) {
    waitFor(*spawned);
    strays::ended(spawning.token());
    std::string what = args.failedStep == kStepExec
                           ? errnoText(args.failedErrno)
                           : std::string(stepText(args.failedStep)) + " failed: " +
                                 errnoText(args.failedErrno);
    return util::err("cannot run " + program + ": " + what,
                     args.failedStep == kStepExec && programRefused(args.failedErrno)
                         ? kCannotExecute
                         : 0);
  }
  return std::make_unique<ChildProcess>(Key(), std::move(*workDir), *spawned, spawning.token(),
                                        startUs, std::move(toStdin), std::move(fromStdout),
                                        std::move(fromStderr));
}

ChildProcess::ChildProcess(Key, std::unique_ptr<WorkDir> workDir, pid_t pid, std::uint64_t runToken,
                           std::int64_t startUs, UniqueFd toStdin, UniqueFd fromStdout,
                           UniqueFd fromStderr)
    : workDir_(std::move(workDir)),
      pid_(pid),
      runToken_(runToken),
      startUs_(startUs),
      toStdin_(std::move(toStdin)),
      fromStdout_(std::move(fromStdout)),
      fromStderr_(std::move(fromStderr)),
      // A pidfd lets the exit wake the same poll as the pipes. Without one (old kernel,
      // seccomp) exit is checked with waitid(WNOWAIT) every kWaitidPollMs. (The raw system
      // call: glibc 2.36's <sys/pidfd.h> lacks extern "C" and cannot link from C++.)
      pidFd_(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))) {}

ChildProcess::~ChildProcess() {
  if (!reaped_) {
    killGroup(SIGKILL);
    reap();
  }
  // workDir_ goes last (members are destroyed after this body): the program is gone by then.
}

const std::string& ChildProcess::workDir() const { return workDir_->path(); }

// The child is the leader of its own group (setpgid(0, 0) before execve), so -pid is the group.
// Valid until the child is reaped: a zombie leader keeps the group id reserved.
void ChildProcess::killGroup(int sig) const {
  if (!reaped_) ::kill(-pid_, sig);
}

// After the program, whatever it left outside its group (strays.h): its run has ended now.
int ChildProcess::reap() {
  int status = waitFor(pid_);
  reaped_ = true;
  pidFd_.reset();
  strays::ended(runToken_);
  strays::sweep();
  return status;
}

bool ChildProcess::exited() const {
  if (reaped_) return true;
  if (pidFd_.valid()) {
    pollfd p{pidFd_.get(), POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
  }
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
         info.si_pid == pid_;
}

void ChildProcess::readStderr(IoResult& result, std::uint64_t cap) {
  char buf[kReadChunk];
  for (int i = 0; i < kReadsPerWakeup && fromStderr_.valid(); ++i) {
    ssize_t n = ::read(fromStderr_.get(), buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
      fromStderr_.reset();
      return;
    }
    // Kept up to the cap; the rest is read (so the program never blocks on it) and dropped.
    std::size_t room =
        result.err.size() < cap ? static_cast<std::size_t>(cap - result.err.size()) : 0;
    result.err.append(buf, std::min(static_cast<std::size_t>(n), room));
    if (static_cast<std::size_t>(n) > room) result.errTruncated = true;
  }
}

void ChildProcess::readStdout(const Io& io, IoResult& result) {
  switch (io.onStdout(fromStdout_.get())) {
    case StdoutStep::kMore: break;
    case StdoutStep::kDone: result.done = true; break;
    case StdoutStep::kEof: fromStdout_.reset(); break;
    case StdoutStep::kKill:
      if (result.stop == Stop::kNone) result.stop = Stop::kKilled;
      killGroup(SIGKILL);
      fromStdout_.reset();
      break;
  }
}

std::uint64_t ChildProcess::stdinUnread() const {
  int unread = 0;
  if (!toStdin_.valid() || ::ioctl(toStdin_.get(), FIONREAD, &unread) != 0) return 0;
  return static_cast<std::uint64_t>(std::max(unread, 0));
}

void ChildProcess::dropStderr() {
  IoResult ignored;
  readStderr(ignored, 0);
}

bool ChildProcess::stdoutHasData() {
  if (!fromStdout_.valid()) return false;
  char c;
  return ::read(fromStdout_.get(), &c, 1) == 1;
}

void ChildProcess::pump(const Io& io, IoResult& result) {
  // The next byte of io.input to write: part `part`, offset `offset`.
  std::size_t part = 0, offset = 0;
  auto skipWritten = [&] {
    while (part < io.input.size() && offset == io.input[part].size()) {
      ++part;
      offset = 0;
    }
    if (part == io.input.size() && !result.inputWritten) {
      result.inputWritten = true;
      if (io.closeStdin) toStdin_.reset();  // EOF for the program
    }
  };
  skipWritten();
  auto writeStdin = [&] {
    std::string_view rest = io.input[part].substr(offset);
    ssize_t written = ::write(toStdin_.get(), rest.data(), std::min(kWriteChunk, rest.size()));
    if (written < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      toStdin_.reset();  // EPIPE: the program stopped reading, which is its right
      return;
    }
    offset += static_cast<std::size_t>(written);
    result.bytesWritten += static_cast<std::uint64_t>(written);
    skipWritten();
  };

  std::int64_t sigkillAtMs = -1;  // pending SIGKILL after a SIGTERM
  auto terminate = [&](Stop why, std::string reason, std::int64_t now) {
    result.stop = why;
    result.reason = std::move(reason);
    killGroup(SIGTERM);
    sigkillAtMs = now + std::max<std::int64_t>(io.killGraceMs, 0);
  };

  // The poll loop: feed stdin, drain stdout and stderr, watch for exit; its timeout is the next
  // deadline (the timeout, the SIGKILL after the grace, the next look at *cancel, io.onLong).
  bool exitedNow = reaped_;
  bool onLongDue = io.onLong != nullptr;
  while (!exitedNow && !result.done) {
    std::int64_t now = nowMs();
    if (onLongDue && now >= io.onLongAtMs) {
      onLongDue = false;
      (*io.onLong)();
    }
    if (result.stop == Stop::kNone && io.cancel != nullptr && io.cancel->load()) {
      terminate(Stop::kCancel, "cancelled", now);
    } else if (result.stop == Stop::kNone && io.timeoutMs > 0 &&
               now >= io.startMs + io.timeoutMs) {
      terminate(Stop::kTimeout, "timed out after " + std::to_string(io.timeoutMs) + " ms", now);
    }
    if (sigkillAtMs >= 0 && now >= sigkillAtMs) {
      killGroup(SIGKILL);
      sigkillAtMs = -1;
    }

    std::int64_t waitMs = -1;
    auto atMost = [&waitMs](std::int64_t ms) {
      ms = std::max<std::int64_t>(ms, 0);
      waitMs = waitMs < 0 ? ms : std::min(waitMs, ms);
    };
    if (result.stop == Stop::kNone && io.timeoutMs > 0) atMost(io.startMs + io.timeoutMs - now);
    if (result.stop == Stop::kNone && io.cancel != nullptr) atMost(kCancelCheckMs);
    if (sigkillAtMs >= 0) atMost(sigkillAtMs - now);
    if (onLongDue) atMost(io.onLongAtMs - now);
    if (!pidFd_.valid()) atMost(kWaitidPollMs);

    pollfd fds[4];
    int count = 0;
    int inIdx = -1, outIdx = -1, errIdx = -1, pidIdx = -1;
    if (toStdin_.valid() && !result.inputWritten)
      fds[inIdx = count++] = {toStdin_.get(), POLLOUT, 0};
    if (fromStdout_.valid()) fds[outIdx = count++] = {fromStdout_.get(), POLLIN, 0};
    if (fromStderr_.valid()) fds[errIdx = count++] = {fromStderr_.get(), POLLIN, 0};
    if (pidFd_.valid()) fds[pidIdx = count++] = {pidFd_.get(), POLLIN, 0};
    int ready = ::poll(fds, static_cast<nfds_t>(count), static_cast<int>(waitMs));
    if (ready < 0) {
      MESH_ASSERT(errno == EINTR, "poll failed: " + errnoText(errno));
      continue;
    }
    if (inIdx >= 0 && fds[inIdx].revents != 0) writeStdin();
    if (outIdx >= 0 && fds[outIdx].revents != 0) readStdout(io, result);
    if (errIdx >= 0 && fds[errIdx].revents != 0) readStderr(result, io.maxStderrBytes);
    exitedNow = pidIdx >= 0 ? fds[pidIdx].revents != 0 : exited();
  }
  // What the program wrote on stderr before its answer is in the pipe by now: take it.
  if (result.done) readStderr(result, io.maxStderrBytes);
}

std::string ChildProcess::keptStderr(const IoResult& result) {
  return result.errTruncated ? result.err + "... (truncated)" : result.err;
}

void ChildProcess::settle(const IoResult& result, int status, RunOutcome& outcome) {
  outcome.err = keptStderr(result);
  switch (result.stop) {
    case Stop::kTimeout:
      outcome.kind = RunOutcome::Kind::kTimedOut;
      outcome.reason = result.reason;
      break;
    case Stop::kCancel:
      outcome.kind = RunOutcome::Kind::kCancelled;
      outcome.reason = result.reason;
      break;
    case Stop::kKilled: break;
    case Stop::kNone:
      if (WIFSIGNALED(status)) {
        outcome.kind = RunOutcome::Kind::kSignaled;
        outcome.signal = WTERMSIG(status);
      } else {
        outcome.kind = RunOutcome::Kind::kExited;
        outcome.exitCode = WEXITSTATUS(status);
      }
      break;
  }
}

int ChildProcess::finish(const Io& io, IoResult& result) {
  // Stop feeding stdin (a program that exits unread is fine), kill whatever is left in the
  // group, then reap the main process.
  toStdin_.reset();
  killGroup(SIGKILL);
  int status = reap();

  // Take what is still in the pipes. EOF comes once every killed holder has closed them; a
  // setsid() escapee holding them (in a process that is no child subreaper, strays.h) must not
  // keep us here, hence the short deadline.
  std::int64_t drainUntil = nowMs() + kDrainAfterExitMs;
  while (fromStdout_.valid() || fromStderr_.valid()) {
    std::int64_t left = drainUntil - nowMs();
    if (left <= 0) break;
    pollfd fds[2];
    int count = 0;
    int outIdx = -1, errIdx = -1;
    if (fromStdout_.valid()) fds[outIdx = count++] = {fromStdout_.get(), POLLIN, 0};
    if (fromStderr_.valid()) fds[errIdx = count++] = {fromStderr_.get(), POLLIN, 0};
    if (::poll(fds, static_cast<nfds_t>(count), static_cast<int>(left)) < 0) continue;
    if (outIdx >= 0 && fds[outIdx].revents != 0) {
      readStdout(io, result);
      if (result.done) fromStdout_.reset();  // the answer is complete: nothing more is wanted
    }
    if (errIdx >= 0 && fds[errIdx].revents != 0) readStderr(result, io.maxStderrBytes);
  }
  return status;
}

}  // namespace mesh::exec
