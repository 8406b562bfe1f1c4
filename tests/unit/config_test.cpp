#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>

#include "mesh/config/config.h"

using namespace mesh::config;

namespace {
template <typename F>
auto parse(F fn, std::vector<const char*> args) {
  return fn(static_cast<int>(args.size()), args.data());
}
}  // namespace

TEST_CASE("the nexus needs a data dir and says how to get help") {
  auto r = parse(parseNexus, {"nexus"});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == 2);
  CHECK(r.error().message.find("--help") != std::string::npos);
}

TEST_CASE("nexus --help returns help text, not an error") {
  auto r = parse(parseNexus, {"nexus", "--help"});
  REQUIRE(r.ok());
  CHECK_FALSE(r->config.has_value());
  CHECK(r->help.find("--data-dir") != std::string::npos);
}

TEST_CASE("nexus options parse durations, sizes and weights") {
  auto r = parse(parseNexus, {"nexus", "--data-dir", "/tmp/x", "--heartbeat", "250ms", "--max-payload", "1M",
                              "--weights", "0.5,0.25,0.25", "--default-attempts", "5"});
  REQUIRE(r.ok());
  REQUIRE(r->config.has_value());
  CHECK(r->config->heartbeatMs == 250);
  CHECK(r->config->maxPayloadBytes == 1u << 20);
  CHECK(r->config->scheduler.weights.cpu == doctest::Approx(0.5));
  CHECK(r->config->scheduler.defaultMaxAttempts == 5);
  CHECK_FALSE(parse(parseNexus, {"nexus", "--data-dir", "d", "--weights", "1,2"}).ok());
  CHECK_FALSE(parse(parseNexus, {"nexus", "--data-dir", "d", "--heartbeat", "soon"}).ok());
  CHECK_FALSE(parse(parseNexus, {"nexus", "--data-dir", "d", "--bogus"}).ok());
}

TEST_CASE("the nexus has two I/O threads unless told otherwise, 1 to 16") {
  auto r = parse(parseNexus, {"nexus", "--data-dir", "d"});
  REQUIRE(r.ok());
  CHECK(r->config->ioThreads == 2);
  auto one = parse(parseNexus, {"nexus", "--data-dir", "d", "--io-threads", "1"});
  REQUIRE(one.ok());
  CHECK(one->config->ioThreads == 1);
  CHECK_FALSE(parse(parseNexus, {"nexus", "--data-dir", "d", "--io-threads", "0"}).ok());
  CHECK_FALSE(parse(parseNexus, {"nexus", "--data-dir", "d", "--io-threads", "17"}).ok());
}

TEST_CASE("a config file sets options and the command line wins") {
  const char* path = "/tmp/mesh-config-test.conf";
  {
    std::ofstream f(path);
    f << "data-dir = /srv/mesh\nname = from-file\nmissed-beats = 7\n";
  }
  auto r = parse(parseNexus, {"nexus", "--config", path, "--name", "from-args"});
  std::remove(path);
  REQUIRE(r.ok());
  REQUIRE(r->config.has_value());
  CHECK(r->config->dataDir == "/srv/mesh");
  CHECK(r->config->name == "from-args");
  CHECK(r->config->missedBeats == 7);
}

TEST_CASE("spore tags accept commas and repeats, and slots default to the CPU count") {
  auto r = parse(parseSpore, {"spore", "--data-dir", "/tmp/s", "--nexus-key", "k", "--tags", "gpu,ssd", "--tags", "big"});
  REQUIRE(r.ok());
  REQUIRE(r->config.has_value());
  CHECK(r->config->tags == std::vector<std::string>{"gpu", "ssd", "big"});
  CHECK(r->config->slots >= 1);
  CHECK(r->config->keyFile == "/tmp/s/spore.key");
}

TEST_CASE("the CLI splits command words from arguments") {
  auto r = parse(parseCli, {"mesh", "keys", "accept", "ab12:cd34", "--role", "node"});
  REQUIRE(r.ok());
  REQUIRE(r->config.has_value());
  CHECK(r->config->words == std::vector<std::string>{"keys", "accept"});
  CHECK(r->config->args == std::vector<std::string>{"ab12:cd34"});
  CHECK(r->config->role == "node");
  auto s = parse(parseCli, {"mesh", "submit", "--handler", "sha256", "--lines", "-", "--requires", "gpu", "--priority", "9"});
  REQUIRE(s.ok());
  CHECK(s->config->submit.handler == "sha256");
  CHECK(s->config->submit.requiredTags == std::vector<std::string>{"gpu"});
  CHECK(s->config->submit.priority == 9);
  auto bad = parse(parseCli, {"mesh", "submit", "--priority", "300"});
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == 2);
  auto none = parse(parseCli, {"mesh"});
  REQUIRE_FALSE(none.ok());
  CHECK(none.error().code == 2);
  auto help = parse(parseCli, {"mesh", "--help"});
  REQUIRE(help.ok());
  CHECK(help->help.find("Exit codes") != std::string::npos);
}

TEST_CASE("every help text is laid out without runs of blank lines, and bundle sign names -o") {
  std::vector<std::vector<const char*>> commands = {{"mesh", "--help"}, {"mesh", "submit", "--help"},
                                                    {"mesh", "bundle", "sign", "--help"}, {"mesh", "keys", "gen", "--help"},
                                                    {"mesh", "wait", "--help"}};
  for (const auto& argv : commands) {
    auto help = parse(parseCli, argv);
    REQUIRE(help.ok());
    CHECK_MESSAGE(help->help.find("\n\n\n") == std::string::npos, argv[1]);
  }
  auto sign = parse(parseCli, {"mesh", "bundle", "sign", "--help"});
  REQUIRE(sign.ok());
  CHECK(sign->help.find("-o FILE") != std::string::npos);
  auto nexus = parse(parseNexus, {"nexus", "--help"});
  REQUIRE(nexus.ok());
  CHECK(nexus->help.find("\n\n\n") == std::string::npos);
  auto spore = parse(parseSpore, {"spore", "--help"});
  REQUIRE(spore.ok());
  CHECK(spore->help.find("\n\n\n") == std::string::npos);
}

TEST_CASE("a negative number for an unsigned option is refused, not wrapped to its largest value") {
  auto r = parse(parseCli, {"mesh", "results", "1", "--limit", "-1"});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == 2);
  CHECK(r.error().message.find("--limit takes a whole number of 0 or more, not -1") != std::string::npos);
  CHECK_FALSE(parse(parseSpore, {"spore", "--data-dir", "/tmp/x", "--nexus-key", "k", "--slots", "-2"}).ok());
  // Free text that starts with '-' is still text.
  CHECK(parse(parseCli, {"mesh", "submit", "--handler", "echo", "--lines", "-", "--label", "-5"}).ok());
  const char* path = "/tmp/mesh-config-negative.conf";
  {
    std::ofstream f(path);
    f << "data-dir = /srv/mesh\nmax-queued = -1\n";
  }
  auto fromFile = parse(parseNexus, {"nexus", "--config", path});
  std::remove(path);
  REQUIRE_FALSE(fromFile.ok());
  CHECK(fromFile.error().message.find("--max-queued takes a whole number") != std::string::npos);
}

TEST_CASE("nexus limits that cannot work are refused instead of clamped or accepted") {
  CHECK_FALSE(parse(parseNexus, {"nexus", "--data-dir", "/tmp/x", "--default-attempts", "0"}).ok());
  CHECK_FALSE(parse(parseNexus, {"nexus", "--data-dir", "/tmp/x", "--quarantine-after", "256"}).ok());
  CHECK_FALSE(parse(parseNexus, {"nexus", "--data-dir", "/tmp/x", "--default-timeout", "0"}).ok());
  auto r = parse(parseNexus, {"nexus", "--data-dir", "/tmp/x", "--max-payload", "100M", "--max-frame", "1M"});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("--max-payload must be at most half of --max-frame") != std::string::npos);
}

TEST_CASE("a config file that is a directory is refused, not read as empty") {
  auto r = parse(parseNexus, {"nexus", "--data-dir", "/tmp/x", "--config", "/tmp"});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("is not a regular file") != std::string::npos);
}

TEST_CASE("mesh COMMAND --help shows that command and the options it reads; mesh --help shows all") {
  auto sub = parse(parseCli, {"mesh", "submit", "--help"});
  REQUIRE(sub.ok());
  REQUIRE_FALSE(sub->help.empty());
  CHECK(sub->help.find("submit --handler H") != std::string::npos);
  CHECK(sub->help.find("--requires") != std::string::npos);
  CHECK(sub->help.find("--mapper") == std::string::npos);
  CHECK(sub->help.find("keys gen") == std::string::npos);
  auto keys = parse(parseCli, {"mesh", "keys", "accept", "--help"});
  REQUIRE(keys.ok());
  CHECK(keys->help.find("keys accept FP") != std::string::npos);
  CHECK(keys->help.find("--role") != std::string::npos);
  CHECK(keys->help.find("keys revoke") == std::string::npos);
  auto all = parse(parseCli, {"mesh", "--help"});
  REQUIRE(all.ok());
  CHECK(all->help.find("--mapper") != std::string::npos);
  CHECK(all->help.find("keys revoke") != std::string::npos);
}

TEST_CASE("mesh results --help gives the exit code of removed results that the exit-code list gives: 6") {
  auto help = parse(parseCli, {"mesh", "results", "--help"});
  REQUIRE(help.ok());
  CHECK(help->help.find("exit 6 if\n                             they were removed") != std::string::npos);
  CHECK(help->help.find("6 `results`,\n`task` or `retry` of a batch whose tasks and results the nexus removed") !=
        std::string::npos);
  CHECK(help->help.find("exit 5 if") == std::string::npos);
  // A wait gives up after max(--timeout, 60 s) of silence (docs/protocol.md): the help says so.
  auto wait = parse(parseCli, {"mesh", "wait", "--help"});
  REQUIRE(wait.ok());
  CHECK(wait->help.find("60s") != std::string::npos);
}

TEST_CASE("nexus --weights takes three numbers of 0 or more, not a number with a typo after it") {
  CHECK(parse(parseNexus, {"nexus", "--data-dir", "d", "--weights", "1,0,0.5"}).ok());
  for (const char* bad : {"1,2,3x", "-1,0.3,0.3", "0.4,nan,0.3", "0.4,inf,0.3"}) {
    auto r = parse(parseNexus, {"nexus", "--data-dir", "d", "--weights", bad});
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == 2);
  }
}

TEST_CASE("spore --nexus must be tcp://HOST:PORT: a malformed seed is refused at start, not retried for good") {
  for (const char* good : {"tcp://10.0.0.1:7700", "tcp://nexus.example.net:7700", "tcp://[fd00::1]:7700"}) {
    CHECK(parse(parseSpore, {"spore", "--data-dir", "d", "--nexus-key", "k", "--nexus", good}).ok());
  }
  for (const char* bad : {"garbage", "10.0.0.1:7700", "tcp://10.0.0.1", "tcp://:7700", "tcp://host:0",
                          "tcp://host:70000", "tcp://host:77x", "udp://host:7700", "tcp://[fd00::1:7700"}) {
    auto r = parse(parseSpore, {"spore", "--data-dir", "d", "--nexus-key", "k", "--nexus", bad});
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == 2);
    CHECK(r.error().message.find("tcp://HOST:PORT") != std::string::npos);
  }
}

TEST_CASE("mesh --timeout must be more than 0") {
  CHECK(parse(parseCli, {"mesh", "status", "--timeout", "500ms"}).ok());
  auto zero = parse(parseCli, {"mesh", "status", "--timeout", "0"});
  REQUIRE_FALSE(zero.ok());
  CHECK(zero.error().code == 2);
  CHECK_FALSE(parse(parseCli, {"mesh", "status", "--timeout", "-1s"}).ok());
}

TEST_CASE("an error in a config file names the file and the line of the option") {
  std::string path = "/tmp/mesh-config-test-" + std::to_string(::getpid()) + ".conf";
  {
    std::ofstream f(path);
    f << "data-dir = /srv/mesh\n# a comment\nmissed-beat = 7\n";
  }
  auto r = parse(parseNexus, {"nexus", "--config", path.c_str()});
  std::remove(path.c_str());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("config file " + path + ", line 3: unrecognised option 'missed-beat'") !=
        std::string::npos);
}
