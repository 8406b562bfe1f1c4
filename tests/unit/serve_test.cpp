// Tests of serve handlers: one long-lived process per handler fed many tasks over the framed
// protocol (serve.h). The handlers are small /bin/sh scripts generated into a temporary
// directory; what a script does depends on the payload. Every wait has a deadline.
#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "mesh/exec/serve.h"
#include "mesh/util/bytes.h"
#include "mesh/util/clock.h"
#include "tests/unit/exec_testing.h"

using namespace mesh::exec;
using namespace mesh::exec::testing;
namespace fs = std::filesystem;

namespace {

const bool kSigpipeIgnored = (ignoreSigpipe(), true);

// A serve handler in sh: reads TASK headers with `read` (which reads a byte at a time from a
// pipe, so it never takes bytes of the next frame) and payloads with `head -c`; what it answers
// depends on the payload.
const char* const kHandler = R"sh(set -u
while read -r verb id attempt n; do
  [ "$verb" = TASK ] || { echo "bad header $verb" >&2; exit 9; }
  head -c "$n" > payload
  p=$(cat payload)
  case $p in
    exit) echo "giving up" >&2; exit 3 ;;
    crash) kill -SEGV $$ ;;
    sleep) sleep 30 ;;
    nap) sleep 1 ;;
    junk) printf 'hello\n'; continue ;;
    huge) printf 'OK 1000\n'; continue ;;
    long) printf 'OK 000000000000000000000000000000000000000001\n'; continue ;;
    nonumber) printf 'OK 12x\n'; continue ;;
    err) echo "details on stderr" >&2; out="it went wrong"
         printf 'ERR %d\n%s' "${#out}" "$out"; continue ;;
    flood) head -c 1000000 /dev/zero | tr '\0' x >&2 ;;
    flooderr) head -c 1000000 /dev/zero | tr '\0' y >&2; printf 'ERR 4\nfull'; continue ;;
    env) out="handler=$MESH_HANDLER task=${MESH_TASK_ID:-unset} home=$HOME pwd=$(pwd)"
         printf 'OK %d\n%s' "${#out}" "$out"; continue ;;
    stray) out="$HOME"; printf 'OK %d\n%s' "${#out}" "$out"; printf 'stray'
           touch "$HOME/stray-written"; continue ;;
    last) printf 'OK 4\nlast'; exit 0 ;;
  esac
  out="pid $$ task $id attempt $attempt: $p"
  printf 'OK %d\n%s' "${#out}" "$out"
done
)sh";

// Echoes the payload byte for byte (binary included).
const char* const kEcho = R"(while read -r verb id attempt n; do
  head -c "$n" > payload
  printf 'OK %d\n' "$n"
  cat payload
done
)";

// Answers an empty payload with "pong", with shell built-ins only (no process per task): a task
// takes well under a millisecond on an idle machine.
const char* const kPong = R"(while read -r verb id attempt n; do
  [ "$n" = 0 ] || { echo "a payload: $n bytes" >&2; exit 9; }
  printf 'OK 4\npong'
done
)";

RunSpec specFor(const std::string& program, const TestDir& dir, std::string_view payload) {
  RunSpec spec;
  spec.argv = {program};
  spec.env = {"PATH=/usr/bin:/bin", "MESH_HANDLER=h"};
  spec.workParent = dir.work;
  spec.stdinData = payload;
  spec.limits.timeoutMs = 20'000;  // a safety net: no test may hang
  spec.limits.killGraceMs = 500;
  return spec;
}

// The PID a kHandler reply names ("pid 123 task ...").
pid_t pidIn(const std::string& out) {
  if (out.rfind("pid ", 0) != 0) return 0;
  return static_cast<pid_t>(std::stol(out.substr(4)));
}

bool gone(pid_t pid) { return !fs::exists("/proc/" + std::to_string(pid)); }

// Runs one kHandler task that must be answered OK; returns the PID that answered it.
pid_t answeredBy(ServeProcesses& pool, const std::string& program, const TestDir& dir,
                 std::uint64_t task = 1) {
  auto run = pool.run("h", specFor(program, dir, "ping"), task, 1);
  REQUIRE(run.ok());
  REQUIRE_MESSAGE(run->kind == RunOutcome::Kind::kReplied, run->describe());
  CHECK(run->out.find("ping") != std::string::npos);
  return pidIn(run->out);
}

}  // namespace

TEST_CASE("many tasks go through one serve process, answered in order") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  ServeProcesses pool;
  pid_t first = 0;
  for (unsigned i = 1; i <= 30; ++i) {
    std::string payload = "word-" + std::to_string(i);
    auto run = pool.run("h", specFor(program, dir, payload), 1000 + i, i % 3 + 1);
    REQUIRE(run.ok());
    REQUIRE(run->kind == RunOutcome::Kind::kReplied);
    CHECK(run->ok());
    pid_t pid = pidIn(run->out);
    if (first == 0) first = pid;
    CHECK(pid == first);
    CHECK(run->out == "pid " + std::to_string(pid) + " task " + std::to_string(1000 + i) +
                          " attempt " + std::to_string(i % 3 + 1) + ": " + payload);
  }
  CHECK(first > 0);
  CHECK(pool.size() == 1);
  CHECK(pool.pidOf("h") == first);
}

TEST_CASE("payloads and replies are bytes: binary, empty and several MiB come back unchanged") {
  TestDir dir;
  std::string program = dir.script("echo.serve", kEcho);
  ServeProcesses pool;
  std::string binary;
  for (int i = 0; i < 3 * 1024 * 1024; ++i)
    binary.push_back(static_cast<char>((i * 7 + i / 13) & 0xff));
  for (std::string payload : {std::string("a\0b\n\xff\n", 6), std::string(), binary,
                              std::string("TASK 1 1 3\nabc")}) {
    auto run = pool.run("echo", specFor(program, dir, payload), 7, 1);
    REQUIRE(run.ok());
    REQUIRE(run->kind == RunOutcome::Kind::kReplied);
    CHECK(run->out == payload);
  }
  CHECK(pool.size() == 1);
}

TEST_CASE("an ERR reply fails the task with the handler's message and keeps the process") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  ServeProcesses pool;
  pid_t before = answeredBy(pool, program, dir);
  auto run = pool.run("h", specFor(program, dir, "err"), 2, 1);
  REQUIRE(run.ok());
  CHECK(run->kind == RunOutcome::Kind::kRefused);
  CHECK_FALSE(run->ok());
  CHECK(run->reason == "it went wrong");
  CHECK(run->describe() == "it went wrong; stderr: details on stderr");
  CHECK(answeredBy(pool, program, dir) == before);
}

TEST_CASE("a handler that exits or crashes mid-task fails it; the next task gets a new process") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  ServeProcesses pool;
  pid_t first = answeredBy(pool, program, dir);

  auto exited = pool.run("h", specFor(program, dir, "exit"), 2, 1);
  REQUIRE(exited.ok());
  CHECK(exited->kind == RunOutcome::Kind::kBroken);
  CHECK(exited->describe() ==
        "the serve handler exited with code 3 before it replied; stderr: giving up");
  CHECK(gone(first));
  CHECK(pool.size() == 0);
  pid_t second = answeredBy(pool, program, dir);
  CHECK(second != first);

  auto crashed = pool.run("h", specFor(program, dir, "crash"), 3, 1);
  REQUIRE(crashed.ok());
  CHECK(crashed->kind == RunOutcome::Kind::kSignaled);
  CHECK(crashed->signal == SIGSEGV);
  CHECK(gone(second));
  pid_t third = answeredBy(pool, program, dir);
  CHECK(third != second);
}

TEST_CASE("a reply written just before the handler exits is taken; the next task gets a new one") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  ServeProcesses pool;
  pid_t first = answeredBy(pool, program, dir);
  auto last = pool.run("h", specFor(program, dir, "last"), 2, 1);
  REQUIRE(last.ok());
  REQUIRE(last->kind == RunOutcome::Kind::kReplied);
  CHECK(last->out == "last");
  pid_t next = answeredBy(pool, program, dir);  // whether or not the exit was seen already
  CHECK(next != first);
}

TEST_CASE("a bad reply header is a protocol error; the process is killed and replaced") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  struct Case {
    const char* payload;
    const char* error;
  };
  for (Case c : {Case{"junk", "serve protocol error: bad reply header 'hello' (expected 'OK "
                              "<bytes>' or 'ERR <bytes>')"},
                 Case{"nonumber", "serve protocol error: bad length in reply header 'OK 12x'"},
                 Case{"long", "serve protocol error: reply header longer than 31 bytes: "
                              "'OK 00000000000000000000000000000...'"}}) {
    CAPTURE(c.payload);
    ServeProcesses pool;
    pid_t before = answeredBy(pool, program, dir);
    auto run = pool.run("h", specFor(program, dir, c.payload), 2, 1);
    REQUIRE(run.ok());
    CHECK(run->kind == RunOutcome::Kind::kBroken);
    CHECK(run->describe() == c.error);
    CHECK(gone(before));
    CHECK(answeredBy(pool, program, dir) != before);
  }
}

TEST_CASE("a reply longer than the output cap is refused before it is read") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  ServeProcesses pool;
  pid_t before = answeredBy(pool, program, dir);
  RunSpec spec = specFor(program, dir, "huge");
  spec.limits.maxStdoutBytes = 999;
  auto run = pool.run("h", spec, 2, 1);
  REQUIRE(run.ok());
  CHECK(run->kind == RunOutcome::Kind::kOutputTooLarge);
  CHECK(run->describe() ==
        "reply of 1000 bytes exceeds the limit of 999 bytes; the serve process was killed");
  CHECK(gone(before));
  CHECK(answeredBy(pool, program, dir) != before);
}

TEST_CASE("bytes on stdout between tasks replace the process before the next task") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  ServeProcesses pool;
  pid_t before = answeredBy(pool, program, dir);
  auto run = pool.run("h", specFor(program, dir, "stray"), 2, 1);
  REQUIRE(run.ok());
  REQUIRE(run->kind == RunOutcome::Kind::kReplied);  // the reply itself was fine
  std::string home = run->out;
  REQUIRE(within(5000, [&] { return fs::exists(home + "/stray-written"); }));
  pid_t after = answeredBy(pool, program, dir);
  CHECK(after != before);
  CHECK(gone(before));
}

TEST_CASE("a task past its timeout is timed out; the process is killed and replaced") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  ServeProcesses pool;
  pid_t before = answeredBy(pool, program, dir);
  RunSpec spec = specFor(program, dir, "sleep");
  spec.limits.timeoutMs = 300;
  std::int64_t start = nowMs();
  auto run = pool.run("h", spec, 2, 1);
  REQUIRE(run.ok());
  CHECK(run->kind == RunOutcome::Kind::kTimedOut);
  CHECK(run->describe() == "timed out after 300 ms");
  CHECK(nowMs() - start < 5000);
  CHECK(gone(before));
  CHECK(runnableInGroup(before).empty());  // the sleep child went with it
  CHECK(answeredBy(pool, program, dir) != before);
}

TEST_CASE("setting cancel stops the task promptly; the next task gets a new process") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  ServeProcesses pool;
  pid_t before = answeredBy(pool, program, dir);
  std::atomic<bool> cancel{false};
  RunSpec spec = specFor(program, dir, "sleep");
  spec.cancel = &cancel;
  auto setter = std::async(std::launch::async, [&cancel] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    cancel = true;
  });
  std::int64_t start = nowMs();
  auto run = pool.run("h", spec, 2, 1);
  setter.get();
  REQUIRE(run.ok());
  CHECK(run->kind == RunOutcome::Kind::kCancelled);
  CHECK(run->describe() == "cancelled");
  CHECK(nowMs() - start < 5000);
  CHECK(gone(before));

  auto early = pool.run("h", spec, 3, 1);  // already cancelled: nothing is started
  REQUIRE(early.ok());
  CHECK(early->kind == RunOutcome::Kind::kCancelled);
  CHECK(pool.size() == 0);
  CHECK(answeredBy(pool, program, dir) != before);
}

TEST_CASE("a handler that floods stderr does not block, and the task keeps its stderr capped") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  ServeProcesses pool;
  pid_t before = answeredBy(pool, program, dir);
  RunSpec spec = specFor(program, dir, "flood");
  spec.limits.timeoutMs = 10'000;
  auto flood = pool.run("h", spec, 2, 1);
  REQUIRE(flood.ok());
  CHECK(flood->kind == RunOutcome::Kind::kReplied);
  CHECK(pidIn(flood->out) == before);

  spec.stdinData = "flooderr";
  spec.limits.maxStderrBytes = 10;
  auto refused = pool.run("h", spec, 3, 1);
  REQUIRE(refused.ok());
  CHECK(refused->kind == RunOutcome::Kind::kRefused);
  CHECK(refused->describe() == "full; stderr: yyyyyyyyyy... (truncated)");
  CHECK(answeredBy(pool, program, dir) == before);
}

TEST_CASE("a serve handler's environment: MESH_HANDLER, and HOME as its work directory") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  std::string home;
  {
    ServeProcesses pool;
    auto run = pool.run("h", specFor(program, dir, "env"), 2, 1);
    REQUIRE(run.ok());
    REQUIRE(run->kind == RunOutcome::Kind::kReplied);
    std::string prefix = "handler=h task=unset home=" + dir.work + "/run-";
    REQUIRE(run->out.rfind(prefix, 0) == 0);
    home = run->out.substr(run->out.find("home=") + 5);
    home = home.substr(0, home.find(' '));
    CHECK(run->out == "handler=h task=unset home=" + home + " pwd=" + home);
    CHECK(fs::exists(home + "/payload"));  // the work directory lives as long as the process
  }
  CHECK_FALSE(fs::exists(home));
  CHECK(dir.workIsEmpty());
}

TEST_CASE("a new program path or a replaced program file gets a new process") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  ServeProcesses pool;
  pid_t first = answeredBy(pool, program, dir);
  CHECK(answeredBy(pool, program, dir) == first);
  dir.script("h.serve", std::string(kHandler) + "\n");  // a rebuilt program: a new file
  pid_t second = answeredBy(pool, program, dir);
  CHECK(second != first);
  CHECK(gone(first));
  std::string v2 = dir.script("h-v2.serve", kHandler);  // a new bundle version: a new path
  pid_t third = answeredBy(pool, v2, dir);
  CHECK(third != second);
  CHECK(gone(second));
  CHECK(pool.size() == 1);
}

TEST_CASE("idle processes are stopped by stopIdle once their idle time has passed") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  ServeProcesses pool(ServeOptions{200, 1000});
  CHECK(pool.msUntilIdle() == -1);
  pid_t pid = answeredBy(pool, program, dir);
  std::int64_t wait = pool.msUntilIdle();
  CHECK(wait > 0);
  CHECK(wait <= 200);
  pool.stopIdle();  // not idle long enough yet
  CHECK(pool.size() == 1);
  REQUIRE(within(5000, [&] { return pool.msUntilIdle() == 0; }));
  pool.stopIdle();
  CHECK(pool.size() == 0);
  CHECK(gone(pid));
  CHECK(dir.workIsEmpty());
}

TEST_CASE("destroying the pool leaves no process behind, even one that ignores EOF and SIGTERM") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  std::string stubborn = dir.script("stubborn.serve", R"(trap '' TERM
read -r verb id attempt n; head -c "$n" > /dev/null; printf 'OK 4\npid='; printf '%s' $$ > pid
while :; do sleep 0.1; done
)");
  pid_t polite = 0, rude = 0;
  std::int64_t start = 0;
  {
    ServeProcesses pool(ServeOptions{30'000, 300});
    polite = answeredBy(pool, program, dir);
    auto run = pool.run("stubborn", specFor(stubborn, dir, "x"), 1, 1);
    REQUIRE(run.ok());
    REQUIRE(run->kind == RunOutcome::Kind::kReplied);
    rude = pool.pidOf("stubborn");
    CHECK(runnable(polite));
    CHECK(runnable(rude));
    start = nowMs();
  }
  CHECK(nowMs() - start < 3000);
  CHECK(gone(polite));
  CHECK(gone(rude));
  CHECK(within(2000, [&] { return runnableInGroup(rude).empty(); }));
  CHECK(dir.workIsEmpty());
}

TEST_CASE("the processes of a pool die with the thread that started them") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  std::unique_ptr<ServeProcesses> pool;
  bool replied = false;
  pid_t pid = 0;
  std::thread worker([&] {
    pool = std::make_unique<ServeProcesses>();
    auto run = pool->run("h", specFor(program, dir, "ping"), 1, 1);
    replied = run.ok() && run->kind == RunOutcome::Kind::kReplied;
    pid = pool->pidOf("h");
  });
  worker.join();
  REQUIRE(replied);
  REQUIRE(pid > 0);
  CHECK(within(5000, [&] { return !runnable(pid); }));  // PR_SET_PDEATHSIG
  pool.reset();                                          // reaps the zombie
  CHECK(gone(pid));
}

TEST_CASE("onLong is said before a process starts or a broken one is reaped, and once a task has "
          "run 1 ms, never for a task answered sooner") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  std::string pong = dir.script("pong.serve", kPong);
  ServeProcesses pool;
  const auto& clock = mesh::util::systemClock();
  int calls = 0;
  std::int64_t saidUs = 0;
  const std::function<void()> onLong = [&] {
    ++calls;
    saidUs = clock.monotonicUs();
  };
  std::int64_t startUs = 0, endUs = 0;
  auto task = [&](std::string_view payload, std::uint64_t id, const std::string& handler = "h") {
    calls = 0;
    RunSpec spec = specFor(handler == "h" ? program : pong, dir, payload);
    spec.onLong = &onLong;
    startUs = clock.monotonicUs();
    auto run = pool.run(handler, spec, id, 1);
    endUs = clock.monotonicUs();
    REQUIRE(run.ok());
    return *run;
  };
  RunOutcome first = task("ping", 1);  // starts the process
  CHECK(first.kind == RunOutcome::Kind::kReplied);
  CHECK(calls == 1);
  CHECK(saidUs - startUs < first.durationUs);
  CHECK(task("", 2, "pong").out == "pong");  // starts that one's process
  CHECK(calls == 1);
  unsigned quick = 0;
  for (std::uint64_t id = 3; id < 23; ++id) {
    RunOutcome run = task("", id, "pong");
    CHECK(run.out == "pong");
    CHECK(calls <= 1);
    if (endUs - startUs < 1000) {  // (a loaded machine may make one slower)
      CHECK(calls == 0);
      ++quick;
    }
  }
  MESSAGE(quick << " of 20 tasks were answered within 1 ms");
  CHECK(quick > 0);
  RunOutcome nap = task("nap", 30);  // sleeps 1 s
  CHECK(nap.kind == RunOutcome::Kind::kReplied);
  CHECK(calls == 1);
  CHECK(saidUs - startUs >= 1000);
  CHECK(saidUs - startUs < 500'000);  // well before the reply
  CHECK(endUs - startUs >= 1'000'000);
  RunOutcome broken = task("exit", 31);  // exits before it replies
  CHECK(broken.kind == RunOutcome::Kind::kBroken);
  CHECK(calls == 1);
  RunOutcome again = task("ping", 32);  // a new process
  CHECK(again.kind == RunOutcome::Kind::kReplied);
  CHECK(calls == 1);
}

TEST_CASE("without a pool, a serve task runs in a temporary process that is stopped") {
  TestDir dir;
  std::string program = dir.script("h.serve", kHandler);
  auto run = runServeTask("h", specFor(program, dir, "ping"), 5, 2);
  REQUIRE(run.ok());
  REQUIRE(run->kind == RunOutcome::Kind::kReplied);
  pid_t pid = pidIn(run->out);
  CHECK(run->out == "pid " + std::to_string(pid) + " task 5 attempt 2: ping");
  CHECK(gone(pid));
  CHECK(dir.workIsEmpty());
}

TEST_CASE("a serve program that cannot be started is an error, and nothing is kept") {
  TestDir dir;
  ServeProcesses pool;
  auto missing = pool.run("h", specFor(dir.path + "/missing.serve", dir, "x"), 1, 1);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("missing.serve") != std::string::npos);
  CHECK(pool.size() == 0);
  CHECK(dir.workIsEmpty());
}
