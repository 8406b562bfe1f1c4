// Tests of the handler registry: built-ins, the handler directory scan, precedence between
// sources, snapshots, and program handlers run through the subprocess runner.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "mesh/bundle/manifest.h"
#include "mesh/exec/builtins.h"
#include "mesh/exec/registry.h"
#include "mesh/exec/serve.h"
#include "mesh/util/bytes.h"
#include "mesh/util/clock.h"
#include "tests/unit/exec_testing.h"

using namespace mesh::exec;
using mesh::exec::testing::nowMs;
using mesh::exec::testing::TestDir;
namespace fs = std::filesystem;

namespace {

const bool kSigpipeIgnored = (ignoreSigpipe(), true);


TaskInput input(std::string_view payload, std::int64_t timeoutMs = 0,
                const std::atomic<bool>* cancel = nullptr) {
  TaskInput in;
  in.taskId = 42;
  in.attempt = 2;
  in.payload = payload;
  in.timeoutMs = timeoutMs;
  in.cancel = cancel;
  return in;
}

}  // namespace

TEST_CASE("the sha256 built-in returns the lowercase hex digest of the payload") {
  HandlerRegistry registry;
  registerBuiltins(registry);
  auto table = registry.snapshot();
  ProgramSettings settings;
  auto abc = table->run("sha256", input("abc"), settings);
  CHECK(abc.outcome == Outcome::kOk);
  CHECK(abc.output == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto empty = table->run("sha256", input(""), settings);
  CHECK(empty.output == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_CASE("the echo built-in returns its payload byte for byte") {
  HandlerRegistry registry;
  registerBuiltins(registry);
  std::string payload("a\0b\xff", 4);
  auto out = registry.snapshot()->run("echo", input(payload), ProgramSettings{});
  CHECK(out.outcome == Outcome::kOk);
  CHECK(out.output == payload);
}

TEST_CASE("the sleep built-in sleeps, times out, refuses garbage and honours cancel") {
  HandlerRegistry registry;
  registerBuiltins(registry);
  auto table = registry.snapshot();
  ProgramSettings settings;

  std::int64_t start = nowMs();
  CHECK(table->run("sleep", input("30"), settings).outcome == Outcome::kOk);
  CHECK(nowMs() - start >= 30);

  start = nowMs();
  auto late = table->run("sleep", input("60000", 50), settings);
  CHECK(late.outcome == Outcome::kTimedOut);
  CHECK(late.error == "timed out after 50 ms");
  CHECK(nowMs() - start < 2000);

  settings.limits.timeoutMs = 50;  // the default applies when the task gives none
  start = nowMs();
  CHECK(table->run("sleep", input("60000"), settings).outcome == Outcome::kTimedOut);
  CHECK(nowMs() - start < 2000);
  settings.limits.timeoutMs = 0;

  for (std::string_view bad : {"abc", "", "-5", "12ms", "99999999999999999999", "86400001"}) {
    auto refused = table->run("sleep", input(bad), settings);
    CHECK(refused.outcome == Outcome::kFailed);
    CHECK(refused.error.find("decimal number of milliseconds") != std::string::npos);
  }

  std::atomic<bool> cancel{true};
  start = nowMs();
  CHECK(table->run("sleep", input("60000", 0, &cancel), settings).outcome == Outcome::kCancelled);
  CHECK(nowMs() - start < 1000);
}

TEST_CASE("the fail built-in fails with its payload as the error") {
  HandlerRegistry registry;
  registerBuiltins(registry);
  auto out = registry.snapshot()->run("fail", input("as requested"), ProgramSettings{});
  CHECK(out.outcome == Outcome::kFailed);
  CHECK(out.error == "as requested");
  CHECK(out.output.empty());
}

TEST_CASE("an unknown handler is reported as unknown, with its name") {
  HandlerRegistry registry;
  registerBuiltins(registry);
  auto table = registry.snapshot();
  CHECK_FALSE(table->has("wordcount"));
  CHECK(table->where("wordcount").empty());
  auto out = table->run("wordcount", input("x"), ProgramSettings{});
  CHECK(out.outcome == Outcome::kUnknownHandler);
  CHECK(out.error.find("'wordcount'") != std::string::npos);
}

TEST_CASE("handler names are limited to letters, digits, dot, underscore and dash") {
  CHECK(isValidHandlerName("word-count_v2.sh"));
  CHECK_FALSE(isValidHandlerName(""));
  CHECK_FALSE(isValidHandlerName(".hidden"));
  CHECK_FALSE(isValidHandlerName("a b"));
  CHECK_FALSE(isValidHandlerName("../x"));
  CHECK_FALSE(isValidHandlerName("caf\xc3\xa9"));
  CHECK_FALSE(isValidHandlerName(std::string(129, 'a')));
  CHECK(isValidHandlerName(std::string(128, 'a')));
}

TEST_CASE("the directory scan keeps executables and skips everything else") {
  TestDir dir;
  std::string good = dir.write(dir.handlers + "/good", "cat\n");
  dir.write(dir.handlers + "/noexec", "cat\n", 0644);
  dir.write(dir.handlers + "/bad name", "cat\n");
  dir.write(dir.handlers + "/.hidden", "cat\n");
  REQUIRE(mkdir((dir.handlers + "/subdir").c_str(), 0755) == 0);
  std::string outside = dir.write(dir.path + "/outside", "cat\n");
  REQUIRE(symlink(outside.c_str(), (dir.handlers + "/out-link").c_str()) == 0);
  REQUIRE(symlink("/bin/cat", (dir.handlers + "/system-link").c_str()) == 0);
  REQUIRE(symlink("good", (dir.handlers + "/in-link").c_str()) == 0);
  REQUIRE(symlink("nowhere", (dir.handlers + "/dangling").c_str()) == 0);

  auto scanned = scanHandlerDirectory(dir.handlers);
  REQUIRE(scanned.ok());
  std::map<std::string, std::string> want{{"good", good}, {"in-link", good}};
  CHECK(*scanned == want);

  CHECK_FALSE(scanHandlerDirectory(dir.path + "/missing").ok());
}

TEST_CASE("a program handler gets the payload on stdin and the task in its environment") {
  TestDir dir;
  std::string tool = dir.write(dir.handlers + "/tool",
                               "echo \"$MESH_TASK_ID $MESH_ATTEMPT $MESH_HANDLER $PATH\"\ncat\n");
  HandlerRegistry registry;
  registry.setPrograms(Source::kDirectory, {{"tool", tool}});
  auto out = registry.snapshot()->run("tool", input("payload"), dir.settings());
  CHECK(out.outcome == Outcome::kOk);
  CHECK(out.output == "42 2 tool /usr/bin:/bin\npayload");
  CHECK(fs::is_empty(dir.work));
}

TEST_CASE("program failures map to failed, crashed, timed out and cancelled") {
  TestDir dir;
  HandlerRegistry registry;
  registry.setPrograms(Source::kDirectory,
                       {{"exit3", dir.write(dir.handlers + "/exit3", "echo boom >&2\nexit 3\n")},
                        {"segv", dir.write(dir.handlers + "/segv", "kill -SEGV $$\n")},
                        {"hang", dir.write(dir.handlers + "/hang", "exec /usr/bin/sleep 1000\n")},
                        {"gone", dir.path + "/never-written"}});
  auto table = registry.snapshot();
  ProgramSettings settings = dir.settings();

  auto failed = table->run("exit3", input(""), settings);
  CHECK(failed.outcome == Outcome::kFailed);
  CHECK(failed.error == "boom");
  CHECK_FALSE(failed.programFault);  // bad input does that

  auto crashed = table->run("segv", input(""), settings);
  CHECK(crashed.outcome == Outcome::kCrashed);
  CHECK(crashed.error.find("SIGSEGV") != std::string::npos);
  CHECK(crashed.programFault);

  std::int64_t start = nowMs();
  auto late = table->run("hang", input("", 200), settings);
  CHECK(late.outcome == Outcome::kTimedOut);
  CHECK(late.error == "timed out after 200 ms");
  CHECK(nowMs() - start < 2000);
  CHECK_FALSE(late.programFault);

  std::atomic<bool> cancel{true};
  CHECK(table->run("hang", input("", 0, &cancel), settings).outcome == Outcome::kCancelled);

  auto missing = table->run("gone", input(""), settings);
  CHECK(missing.outcome == Outcome::kFailed);
  CHECK(missing.error.find("No such file or directory") != std::string::npos);
  CHECK(missing.programFault);
  CHECK(fs::is_empty(dir.work));
}

TEST_CASE("a program that cannot be executed or crashes is the program's fault; limits are not") {
  TestDir dir;
  const std::string interp = dir.handlers + "/interp";
  REQUIRE(mesh::util::writeFileAtomic(interp, "#!/nonexistent/python9\nprint(1)\n", 0755).ok());
  const std::string garbage = dir.handlers + "/garbage";
  REQUIRE(mesh::util::writeFileAtomic(garbage, "\x01\x02\x03 not a program\n", 0755).ok());
  HandlerRegistry registry;
  registry.setPrograms(
      Source::kDirectory,
      {{"interp", interp},
       {"garbage", garbage},
       {"noexec", dir.write(dir.handlers + "/noexec", "echo hi\n", 0644)},
       {"abort", dir.write(dir.handlers + "/abort", "kill -ABRT $$\n")},
       {"killed", dir.write(dir.handlers + "/killed", "kill -KILL $$\n")},
       {"cpu", dir.write(dir.handlers + "/cpu", "kill -XCPU $$\n")}});
  auto table = registry.snapshot();
  ProgramSettings settings = dir.settings();
  for (const char* name : {"interp", "garbage", "noexec"}) {
    CAPTURE(name);
    auto out = table->run(name, input(""), settings);
    CHECK(out.outcome == Outcome::kFailed);
    CHECK(out.error.find("cannot run") != std::string::npos);
    CHECK(out.programFault);
  }
  CHECK(table->run("abort", input(""), settings).programFault);
  for (const char* name : {"killed", "cpu"}) {
    CAPTURE(name);
    auto out = table->run(name, input(""), settings);
    CHECK(out.outcome == Outcome::kCrashed);
    CHECK_FALSE(out.programFault);
  }
  // A start that fails for want of a work directory is this machine's trouble, not the program's.
  settings.workParent = dir.path + "/no-such-dir";
  auto noWork = table->run("abort", input(""), settings);
  CHECK(noWork.outcome == Outcome::kFailed);
  CHECK_FALSE(noWork.programFault);
}

// A serve handler (serve.h) that answers each task with its PID, the task, and its environment.
const char* const kServeHandler = R"sh(while read -r verb id attempt n; do
  p=$(head -c "$n")
  case $p in
    err) printf 'ERR 6\nrefuse'; continue ;;
    junk) printf 'junk\n'; continue ;;
    crash) kill -SEGV $$ ;;
    quit) echo 'cannot take this input' >&2; exit 3 ;;
  esac
  out="$$ $id $attempt $MESH_HANDLER ${MESH_TASK_ID:-none} $p"
  printf 'OK %d\n%s' "${#out}" "$out"
done
)sh";

TEST_CASE("a file named NAME.serve is the serve handler NAME; anything else runs once per task") {
  CHECK(programName("wc-map.serve").handler == "wc-map");
  CHECK(programName("wc-map.serve").serve);
  CHECK(programName("wc-map").handler == "wc-map");
  CHECK_FALSE(programName("wc-map").serve);
  CHECK(programName("a.serve.serve").handler == "a.serve");
  CHECK(programName("a.serve.serve").serve);
  CHECK_FALSE(programName("serve").serve);
  CHECK_FALSE(programName("x.served").serve);
  CHECK_FALSE(programName(".serve").serve);  // all suffix, no name: not a serve handler
  // The installer compares bundles' handlers by the same rule (bundle/ may not use exec/).
  for (const char* file : {"wc-map.serve", "wc-map", "a.serve.serve", "serve", "x.served", ".serve",
                           "s.serve"}) {
    CAPTURE(file);
    CHECK(mesh::bundle::providedHandler(file) == programName(file).handler);
  }

  TestDir dir;
  std::string program = dir.write(dir.handlers + "/count.serve", kServeHandler);
  auto scanned = scanHandlerDirectory(dir.handlers);
  REQUIRE(scanned.ok());
  HandlerRegistry registry;
  registry.setPrograms(Source::kDirectory, *scanned);
  auto table = registry.snapshot();
  CHECK(table->names() == std::vector<std::string>{"count"});
  CHECK(table->isServe("count"));
  CHECK(table->where("count") == program);
  CHECK_FALSE(table->has("count.serve"));
}

TEST_CASE("serve handlers run on the worker's processes: one process for many tasks") {
  TestDir dir;
  HandlerRegistry registry;
  registry.setPrograms(Source::kBundle,
                       {{"count.serve", dir.write(dir.path + "/count.serve", kServeHandler)}});
  auto table = registry.snapshot();
  ServeProcesses pool;
  TaskInput in = input("a");
  in.serve = &pool;
  auto first = table->run("count", in, dir.settings());
  REQUIRE(first.outcome == Outcome::kOk);
  std::string pid = first.output.substr(0, first.output.find(' '));
  CHECK(first.output == pid + " 42 2 count none a");  // the task is in the header, not the env
  in.taskId = 43;
  in.payload = "b";
  CHECK(table->run("count", in, dir.settings()).output == pid + " 43 2 count none b");
  CHECK(pool.pidOf("count") == std::stoi(pid));

  // Without a pool: a temporary process, stopped afterwards.
  auto alone = table->run("count", input("c"), dir.settings());
  REQUIRE(alone.outcome == Outcome::kOk);
  CHECK(alone.output.substr(0, alone.output.find(' ')) != pid);
  CHECK(alone.output.ends_with(" 42 2 count none c"));
}

TEST_CASE("serve handler failures map to failed and crashed") {
  TestDir dir;
  HandlerRegistry registry;
  registry.setPrograms(Source::kDirectory,
                       {{"s.serve", dir.write(dir.handlers + "/s.serve", kServeHandler)}});
  auto table = registry.snapshot();
  ServeProcesses pool;
  auto run = [&](std::string_view payload) {
    TaskInput in = input(payload);
    in.serve = &pool;
    return table->run("s", in, dir.settings());
  };
  auto refused = run("err");
  CHECK(refused.outcome == Outcome::kFailed);
  CHECK(refused.error == "refuse");
  CHECK_FALSE(refused.programFault);  // ERR is how a serve handler says "bad input"
  auto broken = run("junk");
  CHECK(broken.outcome == Outcome::kFailed);
  CHECK(broken.error.rfind("serve protocol error: bad reply header 'junk'", 0) == 0);
  CHECK(broken.programFault);
  auto crashed = run("crash");
  CHECK(crashed.outcome == Outcome::kCrashed);
  CHECK(crashed.error.find("SIGSEGV") != std::string::npos);
  CHECK(crashed.programFault);
  // Exiting before the reply (an uncaught exception on bad input) is the input's doing, as a
  // one-shot handler's non-zero exit is: not a fault of the release.
  auto quit = run("quit");
  CHECK(quit.outcome == Outcome::kFailed);
  CHECK(quit.error.find("exited with code 3 before it replied") != std::string::npos);
  CHECK_FALSE(quit.programFault);
  CHECK(run("fine").outcome == Outcome::kOk);
}

TEST_CASE("NAME.serve wins over NAME in one source, and a bundle still wins over the directory") {
  TestDir dir;
  std::string once = dir.write(dir.handlers + "/x", "echo once\n");
  std::string serve = dir.write(dir.handlers + "/x.serve", kServeHandler);
  HandlerRegistry registry;
  auto scanned = scanHandlerDirectory(dir.handlers);
  REQUIRE(scanned.ok());
  registry.setPrograms(Source::kDirectory, *scanned);
  CHECK(registry.snapshot()->names() == std::vector<std::string>{"x"});
  CHECK(registry.snapshot()->where("x") == serve);
  CHECK(registry.snapshot()->isServe("x"));

  // The same rule for a bundle's handlers (its manifest lists file names).
  std::string bundleOnce = dir.write(dir.path + "/y", "echo once\n");
  std::string bundleServe = dir.write(dir.path + "/y.serve", kServeHandler);
  registry.setPrograms(Source::kBundle, {{"y", bundleOnce}, {"y.serve", bundleServe}});
  CHECK(registry.snapshot()->where("y") == bundleServe);
  CHECK(registry.snapshot()->isServe("y"));

  // Across sources the name decides: the bundle's one-shot x beats the directory's x.serve.
  std::string bundleX = dir.write(dir.path + "/bundle-x", "echo bundle\n");
  registry.setPrograms(Source::kBundle, {{"x", bundleX}});
  CHECK(registry.snapshot()->where("x") == bundleX);
  CHECK_FALSE(registry.snapshot()->isServe("x"));
  CHECK(registry.snapshot()->run("x", input(""), dir.settings()).output == "bundle\n");
}

TEST_CASE("a built-in cannot be shadowed by a directory or a bundle program") {
  TestDir dir;
  std::string impostor = dir.write(dir.handlers + "/echo", "echo impostor\n");
  HandlerRegistry registry;
  registerBuiltins(registry);
  registry.setPrograms(Source::kDirectory, {{"echo", impostor}});
  registry.setPrograms(Source::kBundle, {{"echo", impostor}});
  auto table = registry.snapshot();
  CHECK(table->where("echo") == "builtin");
  auto out = table->run("echo", input("real"), dir.settings());
  CHECK(out.output == "real");
}

TEST_CASE("a bundle program wins over a directory program of the same name") {
  TestDir dir;
  std::string local = dir.write(dir.handlers + "/tool", "echo directory\n");
  std::string signed_ = dir.write(dir.path + "/bundle-tool", "echo bundle\n");
  HandlerRegistry registry;
  registerBuiltins(registry);
  registry.setPrograms(Source::kDirectory, {{"tool", local}});
  registry.setPrograms(Source::kBundle, {{"tool", signed_}});
  CHECK(registry.snapshot()->where("tool") == signed_);
  CHECK(registry.snapshot()->run("tool", input(""), dir.settings()).output == "bundle\n");

  registry.setPrograms(Source::kBundle, {});  // the bundle is gone: the local program shows
  CHECK(registry.snapshot()->run("tool", input(""), dir.settings()).output == "directory\n");
}

TEST_CASE("a snapshot keeps resolving the programs it was taken with") {
  TestDir dir;
  std::string v1 = dir.write(dir.path + "/v1", "echo v1\n");
  std::string v2 = dir.write(dir.path + "/v2", "echo v2\n");
  HandlerRegistry registry;
  registerBuiltins(registry);
  registry.setPrograms(Source::kBundle, {{"tool", v1}});
  auto before = registry.snapshot();
  registry.setPrograms(Source::kBundle, {{"tool", v2}, {"extra", v2}});
  auto after = registry.snapshot();

  CHECK(before->where("tool") == v1);
  CHECK(before->run("tool", input(""), dir.settings()).output == "v1\n");
  CHECK_FALSE(before->has("extra"));
  CHECK(after->run("tool", input(""), dir.settings()).output == "v2\n");
  CHECK(after->names() ==
        std::vector<std::string>{"echo", "extra", "fail", "sha256", "sleep", "tool"});
}

TEST_CASE("programs with a bad name or a relative path are not registered") {
  HandlerRegistry registry;
  registry.setPrograms(Source::kBundle,
                       {{"fine", "/bin/cat"}, {"bad name", "/bin/cat"}, {"relative", "bin/cat"}});
  CHECK(registry.snapshot()->names() == std::vector<std::string>{"fine"});
}

TEST_CASE("registering a built-in twice is a bug") {
  HandlerRegistry registry;
  registerBuiltins(registry);
  CHECK_THROWS_AS(registerBuiltins(registry), std::logic_error);
  CHECK_THROWS_AS(registry.addBuiltin("no spaces", [](const TaskInput&) { return TaskOutput{}; }),
                  std::logic_error);
}

TEST_CASE("workers can run tasks from snapshots while the main thread updates the registry") {
  HandlerRegistry registry;
  registerBuiltins(registry);
  registry.setPrograms(Source::kBundle, {{"tool", "/bin/cat"}});  // every table has 5 names
  std::atomic<bool> stop{false};
  std::atomic<int> good{0}, bad{0};
  std::vector<std::future<void>> workers;
  for (int t = 0; t < 2; ++t) {
    workers.push_back(std::async(std::launch::async, [&] {
      while (!stop.load()) {
        auto table = registry.snapshot();
        TaskOutput out = table->run("echo", input("ping"), ProgramSettings{});
        bool fine = out.outcome == Outcome::kOk && out.output == "ping" && table->has("sha256") &&
                    table->names().size() == 5;
        ++(fine ? good : bad);
      }
    }));
  }
  // Update until the workers have run plenty of tasks meanwhile (bounded in time).
  std::int64_t deadline = nowMs() + 10'000;
  int updates = 0;
  while ((updates < 200 || good.load() < 2000) && nowMs() < deadline) {
    registry.setPrograms(Source::kBundle, {{"tool" + std::to_string(updates % 7), "/bin/cat"}});
    ++updates;
  }
  stop = true;
  for (auto& worker : workers)
    REQUIRE(worker.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  CHECK(good.load() >= 2000);
  CHECK(bad.load() == 0);
  auto last = registry.snapshot();
  CHECK(last->where("tool" + std::to_string((updates - 1) % 7)) == "/bin/cat");
  CHECK(last->names().size() == 5);
}
