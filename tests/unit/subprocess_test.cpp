// Tests of the subprocess runner with real programs (/bin/cat, /usr/bin/yes, ...) and small
// shell scripts generated into a temporary directory. Every wait has a deadline.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mesh/exec/subprocess.h"
#include "mesh/util/bytes.h"
#include "mesh/util/clock.h"
#include "tests/unit/exec_testing.h"

using namespace mesh::exec;
using namespace mesh::exec::testing;
namespace fs = std::filesystem;

namespace {

const bool kSigpipeIgnored = (ignoreSigpipe(), true);

RunSpec specFor(std::vector<std::string> argv, const TestDir& dir) {
  RunSpec spec;
  spec.argv = std::move(argv);
  spec.env = {"PATH=/usr/bin:/bin"};
  spec.workParent = dir.work;
  spec.limits.timeoutMs = 20'000;  // a safety net: no test may hang
  return spec;
}

std::string pseudoRandom(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (char& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

// The numbers of a /proc/PID/limits line, e.g. {"64", "64", "files"} for "Max open files".
std::vector<std::string> limitFields(const std::string& limits, const std::string& name) {
  for (const std::string& line : lines(limits)) {
    if (line.rfind(name, 0) != 0) continue;
    std::istringstream rest(line.substr(name.size()));
    std::vector<std::string> fields;
    for (std::string f; rest >> f;) fields.push_back(f);
    return fields;
  }
  return {};
}

}  // namespace

TEST_CASE("a program reads its payload on stdin and its stdout is the result") {
  TestDir dir;
  RunSpec spec = specFor({"/bin/cat"}, dir);
  spec.stdinData = "hello, mesh";
  auto run = runProgram(spec);
  REQUIRE(run.ok());
  CHECK(run->ok());
  CHECK(run->kind == RunOutcome::Kind::kExited);
  CHECK(run->out == "hello, mesh");
  CHECK(run->err.empty());
  CHECK(run->durationUs > 0);

  RunSpec shell = specFor({dir.script("greet", "read name\necho \"got $name\"\n")}, dir);
  shell.stdinData = "abc\n";
  auto greeted = runProgram(shell);
  REQUIRE(greeted.ok());
  CHECK(greeted->ok());
  CHECK(greeted->out == "got abc\n");
  CHECK(dir.workIsEmpty());
}

TEST_CASE("arguments reach the program as a vector, never through a shell") {
  TestDir dir;
  std::string tricky = "$(touch pwned); `id` 'quoted' \"double\" ; | & > x";
  auto run = runProgram(specFor({"/usr/bin/printf", "%s", tricky}, dir));
  REQUIRE(run.ok());
  CHECK(run->out == tricky);
}

TEST_CASE("several MiB of stdin go through cat and come back unchanged") {
  TestDir dir;
  std::string payload = pseudoRandom(8u << 20, 1);
  RunSpec spec = specFor({"/bin/cat"}, dir);
  spec.stdinData = payload;
  auto run = runProgram(spec);
  REQUIRE(run.ok());
  CHECK(run->ok());
  CHECK(run->out.size() == payload.size());
  CHECK(run->out == payload);
}

TEST_CASE("a non-zero exit is a failure whose error is stderr, truncated at the cap") {
  TestDir dir;
  RunSpec spec = specFor(
      {dir.script("noisy", "i=0\nwhile [ $i -lt 1000 ]; do echo \"error line $i\" >&2; "
                           "i=$((i+1)); done\nexit 3\n")},
      dir);
  spec.limits.maxStderrBytes = 100;
  auto run = runProgram(spec);
  REQUIRE(run.ok());
  CHECK_FALSE(run->ok());
  CHECK(run->kind == RunOutcome::Kind::kExited);
  CHECK(run->exitCode == 3);
  CHECK(run->err.rfind("error line 0\n", 0) == 0);
  CHECK(run->err.size() == 100 + std::string("... (truncated)").size());
  CHECK(run->err.substr(100) == "... (truncated)");
  CHECK(run->describe() == run->err);
}

TEST_CASE("a non-zero exit without stderr is described by its exit code") {
  TestDir dir;
  auto run = runProgram(specFor({dir.script("quiet", "exit 7\n")}, dir));
  REQUIRE(run.ok());
  CHECK(run->kind == RunOutcome::Kind::kExited);
  CHECK(run->exitCode == 7);
  CHECK(run->describe() == "exit code 7");
}

TEST_CASE("a program killed by a signal is reported as such, with the signal's name") {
  TestDir dir;
  auto run = runProgram(specFor({dir.script("segv", "kill -SEGV $$\n")}, dir));
  REQUIRE(run.ok());
  CHECK(run->kind == RunOutcome::Kind::kSignaled);
  CHECK(run->signal == SIGSEGV);
  CHECK(run->describe().find("SIGSEGV") != std::string::npos);
  CHECK(dir.workIsEmpty());  // and no core file was left anywhere in it
}

TEST_CASE("a program that runs past its timeout is terminated and reported as timed out") {
  TestDir dir;
  RunSpec spec = specFor({"/usr/bin/sleep", "1000"}, dir);
  spec.limits.timeoutMs = 300;
  spec.limits.killGraceMs = 2000;
  std::int64_t start = nowMs();
  auto run = runProgram(spec);
  std::int64_t elapsed = nowMs() - start;
  REQUIRE(run.ok());
  CHECK(run->kind == RunOutcome::Kind::kTimedOut);
  CHECK(run->describe() == "timed out after 300 ms");
  CHECK(run->out.empty());
  CHECK(elapsed >= 300);
  CHECK(elapsed < 300 + 1000);  // sleep dies of SIGTERM: no need to wait for the grace
}

TEST_CASE("a program that ignores SIGTERM is killed with SIGKILL after the grace period") {
  TestDir dir;
  // trap '' makes TERM ignored in the shell and, inherited through exec, in sleep too.
  RunSpec spec = specFor({dir.script("stubborn", "trap '' TERM\n/usr/bin/sleep 1000\n")}, dir);
  spec.limits.timeoutMs = 200;
  spec.limits.killGraceMs = 500;
  std::int64_t start = nowMs();
  auto run = runProgram(spec);
  std::int64_t elapsed = nowMs() - start;
  REQUIRE(run.ok());
  CHECK(run->kind == RunOutcome::Kind::kTimedOut);
  CHECK(elapsed >= 200 + 500);
  CHECK(elapsed < 200 + 500 + 1500);
  CHECK(dir.workIsEmpty());
}

TEST_CASE("a stdout flood is cut at the cap and reported as output too large") {
  TestDir dir;
  RunSpec spec = specFor({"/usr/bin/yes"}, dir);
  spec.limits.maxStdoutBytes = 1u << 20;
  std::int64_t start = nowMs();
  auto run = runProgram(spec);
  REQUIRE(run.ok());
  CHECK(run->kind == RunOutcome::Kind::kOutputTooLarge);
  CHECK(run->out.empty());
  CHECK(run->describe().find("stdout exceeded the limit of 1048576 bytes") != std::string::npos);
  CHECK(nowMs() - start < 3000);
}

TEST_CASE("a program that never reads its multi-MiB stdin does not hang the runner") {
  TestDir dir;
  std::string payload = pseudoRandom(16u << 20, 2);
  std::string ignoring = dir.script("ignore", "echo done\n");
  for (const std::string& program : {std::string("/bin/true"), ignoring}) {
    RunSpec spec = specFor({program}, dir);
    spec.stdinData = payload;
    auto run = runProgram(spec);
    REQUIRE(run.ok());
    CHECK(run->ok());
    CHECK(run->out == (program == "/bin/true" ? "" : "done\n"));
  }
}

TEST_CASE("a background child that would outlive the program is killed with its group") {
  TestDir dir;
  std::string spawner = dir.script("spawner", "/usr/bin/sleep 1000 &\necho $!\necho $$\n");
  auto run = runProgram(specFor({spawner}, dir));
  REQUIRE(run.ok());
  CHECK(run->ok());
  auto out = lines(run->out);
  REQUIRE(out.size() == 2);
  pid_t background = std::stoi(out[0]);
  pid_t group = std::stoi(out[1]);
  CHECK(within(2000, [&] { return !runnable(background); }));
  CHECK(within(2000, [&] { return runnableInGroup(group).empty(); }));
  CHECK(dir.workIsEmpty());
}

TEST_CASE("each run gets a fresh working directory, removed afterwards without following links") {
  TestDir dir;
  std::string victim = dir.path + "/victim";
  REQUIRE(mkdir(victim.c_str(), 0700) == 0);
  REQUIRE(mesh::util::writeFileAtomic(victim + "/keep", "precious", 0600).ok());
  std::string body =
      "pwd\necho \"$HOME\"\n"
      "mkdir -p a/b/c && echo x > a/b/c/f\n"
      "ln -s " + victim + " dirlink\nln -s " + victim + "/keep filelink\n"
      "mkdir locked && touch locked/inside && chmod 000 locked\n"
      "chmod 500 a/b\n";
  std::string program = dir.script("litter", body);
  auto first = runProgram(specFor({program}, dir));
  auto second = runProgram(specFor({program}, dir));
  REQUIRE(first.ok());
  REQUIRE(second.ok());
  CHECK(first->ok());
  auto a = lines(first->out);
  auto b = lines(second->out);
  REQUIRE(a.size() == 2);
  REQUIRE(b.size() == 2);
  CHECK(a[0].rfind(dir.work + "/run-", 0) == 0);
  CHECK(a[1] == a[0]);  // HOME is the work directory
  CHECK(a[0] != b[0]);
  CHECK(dir.workIsEmpty());
  CHECK(*mesh::util::readFile(victim + "/keep") == "precious");
}

TEST_CASE("the environment holds only what the spec gives, plus HOME, TMPDIR and MESH_RUN") {
  TestDir dir;
  REQUIRE(setenv("MESH_SHOULD_NOT_LEAK", "1", 1) == 0);
  RunSpec spec = specFor({"/usr/bin/env"}, dir);
  spec.env = {"PATH=/usr/bin:/bin", "MESH_TASK_ID=42", "HOME=/should/be/replaced"};
  auto run = runProgram(spec);
  unsetenv("MESH_SHOULD_NOT_LEAK");
  REQUIRE(run.ok());
  auto env = lines(run->out);
  std::sort(env.begin(), env.end());
  REQUIRE(env.size() == 5);
  CHECK(env[0].rfind("HOME=" + dir.work + "/run-", 0) == 0);
  CHECK(env[1].rfind("MESH_RUN=", 0) == 0);  // the run's id for the stray sweep (strays.h)
  CHECK(std::stoull(env[1].substr(9)) > 0);
  CHECK(env[2] == "MESH_TASK_ID=42");
  CHECK(env[3] == "PATH=/usr/bin:/bin");
  CHECK(env[4] == "TMPDIR=" + env[0].substr(5));
}

TEST_CASE("resource limits apply to the program") {
  TestDir dir;
  RunSpec spec = specFor({"/bin/cat", "/proc/self/limits"}, dir);
  spec.limits.openFiles = 64;
  spec.limits.addressSpaceBytes = 1ull << 30;
  spec.limits.cpuSeconds = 5;
  spec.limits.fileSizeBytes = 1u << 20;
  auto run = runProgram(spec);
  REQUIRE(run.ok());
  REQUIRE(run->ok());
  CHECK(limitFields(run->out, "Max open files") == std::vector<std::string>{"64", "64", "files"});
  CHECK(limitFields(run->out, "Max address space") ==
        std::vector<std::string>{"1073741824", "1073741824", "bytes"});
  CHECK(limitFields(run->out, "Max cpu time") == std::vector<std::string>{"5", "6", "seconds"});
  CHECK(limitFields(run->out, "Max file size") ==
        std::vector<std::string>{"1048576", "1048576", "bytes"});
  CHECK(limitFields(run->out, "Max core file size") == std::vector<std::string>{"0", "0", "bytes"});

  // And the shell sees the same (its `ulimit -n`), and the limit bites.
  std::string fdsScript = dir.script("fds", "ulimit -n\nexec 70</dev/null && echo opened\n");
  RunSpec shell = specFor({fdsScript}, dir);
  shell.limits.openFiles = 64;
  auto fds = runProgram(shell);
  REQUIRE(fds.ok());
  CHECK(lines(fds->out).front() == "64");
  CHECK(fds->out.find("opened") == std::string::npos);
}

TEST_CASE("the program inherits no descriptor but stdin, stdout and stderr") {
  TestDir dir;
  int leaked = open("/dev/null", O_RDONLY);  // deliberately without O_CLOEXEC
  REQUIRE(leaked >= 0);
  REQUIRE(dup2(leaked, 77) == 77);
  auto run = runProgram(specFor({"/bin/ls", "/proc/self/fd"}, dir));
  close(77);
  close(leaked);
  REQUIRE(run.ok());
  std::set<std::string> fds;
  for (const std::string& fd : lines(run->out)) fds.insert(fd);
  // ls itself holds one descriptor (3) on the directory it lists.
  CHECK(fds == std::set<std::string>{"0", "1", "2", "3"});
}

TEST_CASE("the program starts with default signal dispositions and an empty signal mask") {
  TestDir dir;
  sigset_t usr1, saved;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  REQUIRE(pthread_sigmask(SIG_BLOCK, &usr1, &saved) == 0);
  // SIGPIPE is ignored in this process and SIGUSR1 blocked in this thread: neither may leak.
  auto run = runProgram(specFor({"/bin/cat", "/proc/self/status"}, dir));
  pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  REQUIRE(run.ok());
  auto status = lines(run->out);
  CHECK(std::count(status.begin(), status.end(), "SigBlk:\t0000000000000000") == 1);
  CHECK(std::count(status.begin(), status.end(), "SigIgn:\t0000000000000000") == 1);
}

TEST_CASE("a program that cannot be started is an error, not an outcome") {
  TestDir dir;
  auto missing = runProgram(specFor({"/nonexistent/handler"}, dir));
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message == "cannot run /nonexistent/handler: No such file or directory");

  std::string plain = dir.path + "/plain";
  REQUIRE(mesh::util::writeFileAtomic(plain, "#!/bin/sh\n", 0644).ok());
  auto notExecutable = runProgram(specFor({plain}, dir));
  REQUIRE_FALSE(notExecutable.ok());
  CHECK(notExecutable.error().message.find("Permission denied") != std::string::npos);

  auto relative = runProgram(specFor({"cat"}, dir));
  REQUIRE_FALSE(relative.ok());
  CHECK(relative.error().message.find("absolute path") != std::string::npos);

  auto noArgv = runProgram(specFor({}, dir));
  CHECK_FALSE(noArgv.ok());

  RunSpec noParent = specFor({"/bin/cat"}, dir);
  noParent.workParent = dir.path + "/does-not-exist";
  auto parentMissing = runProgram(noParent);
  REQUIRE_FALSE(parentMissing.ok());
  CHECK(parentMissing.error().message.find("work directory") != std::string::npos);
  noParent.workParent = "relative/dir";
  CHECK_FALSE(runProgram(noParent).ok());
  CHECK(dir.workIsEmpty());
}

TEST_CASE("setting cancel stops a running program promptly") {
  TestDir dir;
  std::string started = dir.path + "/started";
  std::string waiter = dir.script("wait", "touch " + started + "\nexec /usr/bin/sleep 1000\n");
  RunSpec spec = specFor({waiter}, dir);
  std::atomic<bool> cancel{false};
  spec.cancel = &cancel;
  auto pending = std::async(std::launch::async, [&spec] { return runProgram(spec); });
  bool running = within(5000, [&] { return fs::exists(started); });
  CHECK(running);
  std::int64_t cancelledAt = nowMs();
  cancel = true;
  REQUIRE(pending.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK(nowMs() - cancelledAt < 1000);
  auto run = pending.get();
  REQUIRE(run.ok());
  CHECK(run->kind == RunOutcome::Kind::kCancelled);
  CHECK(dir.workIsEmpty());

  auto before = runProgram(spec);  // cancel is already set: nothing starts
  REQUIRE(before.ok());
  CHECK(before->kind == RunOutcome::Kind::kCancelled);
}

TEST_CASE("runs from four threads at once each get their own result") {
  TestDir dir;
  std::string upper = dir.script("upper", "/usr/bin/tr a-z A-Z\n");
  constexpr int kThreads = 4;
  constexpr int kRuns = 8;
  std::vector<std::future<int>> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.push_back(std::async(std::launch::async, [&, t] {
      int good = 0;
      for (int i = 0; i < kRuns; ++i) {
        std::string payload = "thread " + std::to_string(t) + " run " + std::to_string(i) + " " +
                              mesh::util::toHex(pseudoRandom(64u << 10, t * 100 + i));
        bool viaShell = i % 2 == 1;
        RunSpec spec = specFor({viaShell ? upper : std::string("/bin/cat")}, dir);
        spec.stdinData = payload;
        auto run = runProgram(spec);
        if (!run.ok() || !run->ok()) continue;
        std::string want = payload;
        if (viaShell) std::transform(want.begin(), want.end(), want.begin(), ::toupper);
        if (run->out == want) ++good;
      }
      return good;
    }));
  }
  for (auto& worker : workers) {
    REQUIRE(worker.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    CHECK(worker.get() == kRuns);
  }
  CHECK(dir.workIsEmpty());
}

TEST_CASE("runs leave no descriptor of the runner open behind them") {
  TestDir dir;
  auto openFds = [] {
    return std::distance(fs::directory_iterator("/proc/self/fd"), fs::directory_iterator());
  };
  auto before = openFds();
  std::string payload = pseudoRandom(1u << 20, 3);
  for (int i = 0; i < 5; ++i) {
    RunSpec ok = specFor({"/bin/cat"}, dir);
    ok.stdinData = payload;
    CHECK(runProgram(ok).ok());
    RunSpec flood = specFor({"/usr/bin/yes"}, dir);
    flood.limits.maxStdoutBytes = 4096;
    CHECK(runProgram(flood).ok());
    CHECK_FALSE(runProgram(specFor({"/nonexistent"}, dir)).ok());
  }
  CHECK(openFds() == before);
}
