// Tests of the stray sweep (strays.h) with real programs: this test process is made a child
// subreaper, as a spore is, and runs shell scripts that leave processes behind with setsid and
// double forks. Every wait has a deadline; every process a script leaves is killed by its pid
// at the end of the test whatever happened.
#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <future>
#include <sstream>
#include <string>
#include <vector>

#include "mesh/exec/strays.h"
#include "mesh/exec/subprocess.h"
#include "tests/unit/exec_testing.h"

using namespace mesh::exec;
using namespace mesh::exec::testing;

namespace {

const bool kSigpipeIgnored = (ignoreSigpipe(), true);

void enableOnce() {
  static const bool ok = strays::enable().ok();
  REQUIRE(ok);
  REQUIRE(strays::enabled());
}

RunSpec specFor(std::vector<std::string> argv, const TestDir& dir) {
  RunSpec spec;
  spec.argv = std::move(argv);
  spec.env = {"PATH=/usr/bin:/bin", "MESH_TASK_ID=77", "MESH_HANDLER=leaver"};
  spec.workParent = dir.work;
  spec.limits.timeoutMs = 20'000;  // a safety net: no test may hang
  return spec;
}

// The pid a script wrote into `file` (0 while it has not).
pid_t pidIn(const std::string& file) {
  std::ifstream in(file);
  long pid = 0;
  in >> pid;
  return static_cast<pid_t>(pid);
}

// Gone for good: killed and reaped. Sweeps meanwhile, since the reaping is theirs.
bool sweptAway(pid_t pid) {
  return within(3000, [pid] {
    strays::sweep();
    return access(("/proc/" + std::to_string(pid)).c_str(), F_OK) != 0;
  });
}

// Kills, by pid, what a test's scripts left, should a check have failed before the sweep did.
struct Leftovers {
  std::vector<pid_t> pids;
  ~Leftovers() {
    for (pid_t p : pids) {
      if (p > 0 && runnable(p)) kill(p, SIGKILL);
    }
    strays::sweep();  // reaps them
  }
};

}  // namespace

TEST_CASE("a process that left its run's group is killed when the run ends, and reaped") {
  enableOnce();
  TestDir dir;
  Leftovers left;
  // The stray keeps the run's stdout open: without the sweep the runner would wait for it. The
  // script waits until it has left the group (or the group kill would take it).
  std::string script = dir.script(
      "leaver", "setsid sh -c 'echo $$ > \"$1\"; exec sleep 30' sh \"$1\" &\n"
                "i=0\nwhile [ ! -s \"$1\" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done\n"
                "cat \"$1\"\n");
  auto before = strays::totals();
  auto outcome = runProgram(specFor({script, dir.path + "/stray"}, dir));
  REQUIRE(outcome.ok());
  CHECK(outcome->ok());
  pid_t stray = static_cast<pid_t>(std::stol(outcome->out));
  left.pids.push_back(stray);
  REQUIRE(stray > 0);
  CHECK(strays::totals().killed == before.killed + 1);  // by the sweep at the run's end
  CHECK(sweptAway(stray));
  auto after = strays::totals();
  CHECK(after.killed >= before.killed + 1);
  CHECK(after.reaped >= before.reaped + 1);
}

TEST_CASE("a stray's whole tree is killed, the processes it started included") {
  enableOnce();
  TestDir dir;
  Leftovers left;
  std::string kidFile = dir.path + "/kid";
  auto before = strays::totals();
  std::string tree = dir.script("tree", "sleep 30 &\necho $! > \"$1\"\nwait\n");
  std::string script = dir.script(
      "leaver", "setsid \"$1\" \"$2\" </dev/null >/dev/null 2>&1 &\necho $!\n"
                "i=0\nwhile [ ! -s \"$2\" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done\n");
  auto outcome = runProgram(specFor({script, tree, kidFile}, dir));
  REQUIRE(outcome.ok());
  pid_t root = static_cast<pid_t>(std::stol(outcome->out));
  pid_t kid = pidIn(kidFile);
  left.pids = {root, kid};
  REQUIRE(root > 0);
  REQUIRE(kid > 0);
  CHECK(strays::totals().killed >= before.killed + 2);  // both, stopped first, at the run's end
  CHECK(sweptAway(root));
  CHECK(sweptAway(kid));  // its parent died first: it came to this process, and was reaped
}

TEST_CASE("a stray of a run still going is spared until that run ends") {
  enableOnce();
  TestDir dir;
  Leftovers left;
  std::string setsidFile = dir.path + "/setsid", groupFile = dir.path + "/group";
  std::string release = dir.path + "/release";
  // Two processes whose parent (a subshell) exits at once, so both come to this process while
  // the run goes on: one in a new session (spared by its MESH_RUN), one still in the run's group
  // (spared by the group, and ended by the run's own group kill).
  std::string script = dir.script(
      "keeper",
      "(setsid sleep 30 </dev/null >/dev/null 2>&1 & echo $! > \"$1\")\n"
      "(sleep 30 </dev/null >/dev/null 2>&1 & echo $! > \"$2\")\n"
      "i=0\nwhile [ ! -e \"$3\" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i + 1)); done\n");
  auto running = std::async(std::launch::async, [&] {
    return runProgram(specFor({script, setsidFile, groupFile, release}, dir));
  });
  pid_t inSession = 0, inGroup = 0;
  REQUIRE(within(5000, [&] {
    inSession = pidIn(setsidFile);
    inGroup = pidIn(groupFile);
    return inSession > 0 && inGroup > 0;
  }));
  left.pids = {inSession, inGroup};
  // Both re-parented here (their subshells exited).
  auto parentIsUs = [](pid_t p) {
    std::ifstream stat("/proc/" + std::to_string(p) + "/stat");
    std::string line;
    std::getline(stat, line);
    auto close = line.rfind(')');
    if (close == std::string::npos) return false;
    std::istringstream rest(line.substr(close + 2));
    char state;
    long ppid;
    return static_cast<bool>(rest >> state >> ppid) && ppid == getpid();
  };
  REQUIRE(within(5000, [&] { return parentIsUs(inSession) && parentIsUs(inGroup); }));

  // Another run ends (it sweeps), and a sweep on its own: neither touches the live run's strays.
  std::string quick = dir.script("quick", "exit 0\n");
  auto other = runProgram(specFor({quick}, dir));
  REQUIRE(other.ok());
  CHECK(strays::sweep().killed == 0);
  CHECK(runnable(inSession));
  CHECK(runnable(inGroup));

  std::ofstream(release).put('x');
  auto outcome = running.get();
  REQUIRE(outcome.ok());
  CHECK(outcome->ok());
  CHECK(sweptAway(inSession));
  CHECK(sweptAway(inGroup));
}

TEST_CASE("a run that times out takes its strays with it") {
  enableOnce();
  TestDir dir;
  Leftovers left;
  std::string pidFile = dir.path + "/stray";
  // `setsid sleep` as a foreground job: the shell waits for it, and it is outside the group
  // that the timeout signals.
  std::string script = dir.script("hang", "setsid sh -c 'echo $$ > \"$1\"; exec sleep 30' sh \"$1\"\n");
  auto spec = specFor({script, pidFile}, dir);
  auto before = strays::totals();
  spec.limits.timeoutMs = 300;
  spec.limits.killGraceMs = 100;
  auto outcome = runProgram(spec);
  REQUIRE(outcome.ok());
  CHECK(outcome->kind == RunOutcome::Kind::kTimedOut);
  pid_t stray = pidIn(pidFile);
  left.pids.push_back(stray);
  REQUIRE(stray > 0);
  CHECK(strays::totals().killed == before.killed + 1);
  CHECK(sweptAway(stray));
}

TEST_CASE("processes that cannot stop do not hold a sweep up, and what they started is caught later") {
  enableOnce();
  Leftovers left;
  // Twenty children of this process, each waiting in vfork() for a child that never execs: a
  // vfork parent sleeps in the kernel ('D'), where SIGSTOP does not reach it (SIGKILL does). They
  // carry no MESH_RUN, so each is a stray. Without the sweep's budget for waiting on stops
  // (100 ms), the sweep would wait 50 ms for each: a second in all.
  constexpr int kStuck = 20;
  std::vector<pid_t> stuck;
  for (int i = 0; i < kStuck; ++i) {
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      if (vfork() == 0) {
        pause();  // the vfork child: async-signal-safe calls only
        _exit(0);
      }
      _exit(0);
    }
    stuck.push_back(child);
    left.pids.push_back(child);
  }
  REQUIRE(within(5000, [&] {
    for (pid_t p : stuck) {
      if (procState(p) != 'D') return false;
    }
    return true;
  }));
  std::vector<pid_t> vforked;  // the children that each stuck process waits for
  for (pid_t p : stuck) {
    std::ifstream kids("/proc/" + std::to_string(p) + "/task/" + std::to_string(p) + "/children");
    long kid = 0;
    if (kids >> kid) vforked.push_back(static_cast<pid_t>(kid));
  }
  left.pids.insert(left.pids.end(), vforked.begin(), vforked.end());
  REQUIRE(vforked.size() == stuck.size());

  auto t0 = std::chrono::steady_clock::now();
  auto swept = strays::sweep();
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(swept.killed == kStuck);  // each one SIGKILLed, none of them walked
  CHECK(took < std::chrono::milliseconds(600));
  // Each died of its SIGKILL; its vfork child came to this process and a later sweep kills it.
  for (pid_t p : stuck) CHECK(sweptAway(p));
  for (pid_t p : vforked) CHECK(sweptAway(p));
}
