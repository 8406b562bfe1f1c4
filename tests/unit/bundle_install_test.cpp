// Install, rollback, the version state and the audit log.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mesh/bundle/installer.h"
#include "mesh/bundle/ledger.h"
#include "mesh/bundle/testing.h"

using namespace mesh::bundle;
using mesh::bundle::testing::BundleLab;
using mesh::bundle::testing::craftBundle;
using mesh::bundle::testing::readAll;
using mesh::bundle::testing::TempDir;
using mesh::bundle::testing::writeFile;

namespace {

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace

TEST_CASE("installing keeps the previous version and deletes older ones") {
  BundleLab lab;
  REQUIRE(lab.deliver(lab.sign(1)).ok());
  REQUIRE(lab.deliver(lab.sign(2)).ok());
  REQUIRE(lab.deliver(lab.sign(3)).ok());
  const std::string dir = lab.installer.root() + "/tool";
  CHECK(lab.currentVersion() == 3);
  CHECK(exists(dir + "/3"));
  CHECK(exists(dir + "/2"));
  CHECK_FALSE(exists(dir + "/1"));
  auto list = lab.installer.list();
  REQUIRE(list.ok());
  REQUIRE(list->size() == 1);
  CHECK((*list)[0].current == 3);
  REQUIRE((*list)[0].previous.has_value());
  CHECK(*(*list)[0].previous == 2);
  CHECK((*list)[0].handlers == std::vector<std::string>{"wc-map"});
  CHECK((*list)[0].keyFingerprint == lab.key.publicKey().fingerprint());
  REQUIRE((*list)[0].seen.has_value());
  CHECK((*list)[0].seen->version == 3);
  CHECK((*list)[0].seen->installed);
}

TEST_CASE("rollback restores the previous version and marks the bad one, never installed again") {
  BundleLab lab;
  REQUIRE(lab.deliver(lab.sign(1)).ok());
  std::string two = lab.sign(2);
  REQUIRE(lab.deliver(two).ok());
  REQUIRE(lab.installer.rollback("tool", "trial-failed").ok());
  CHECK(lab.currentVersion() == 1);
  auto handlers = lab.installer.installedHandlers();
  REQUIRE(handlers.ok());
  CHECK(handlers->at("wc-map") == lab.installer.root() + "/tool/1/files/wc-map");
  auto seen = lab.installer.seen("tool");
  REQUIRE(seen.ok());
  REQUIRE(seen->has_value());
  CHECK((*seen)->bad == std::vector<std::uint64_t>{2});
  auto lines = lab.auditLines();
  CHECK(lines.back().find("\"event\":\"rolled-back\"") != std::string::npos);
  CHECK(lines.back().find("\"version\":2") != std::string::npos);
  CHECK(lines.back().find("\"reason\":\"trial-failed\"") != std::string::npos);

  // A second rollback has nowhere to go.
  CHECK_FALSE(lab.installer.rollback("tool", "again").ok());
  // The bad version is refused as bad, even replayed with its own valid signature.
  auto again = lab.deliver(two);
  REQUIRE_FALSE(again.ok());
  CHECK(again.refused().reason == Refusal::kBadVersion);
  CHECK(lab.currentVersion() == 1);
  // The fix ships as a higher version; the bad one is then deleted.
  auto three = lab.deliver(lab.sign(3));
  REQUIRE(three.ok());
  CHECK(*three->previous == 1);
  CHECK_FALSE(exists(lab.installer.root() + "/tool/2"));
  CHECK(lab.installer.rollback("tool", "operator").ok());
  CHECK(lab.currentVersion() == 1);
}

TEST_CASE("rollback of a bundle that is not installed is an error") {
  BundleLab lab;
  CHECK_FALSE(lab.installer.rollback("tool", "x").ok());
  CHECK_FALSE(lab.installer.rollback("../etc", "x").ok());
  REQUIRE(lab.deliver(lab.sign(1)).ok());
  auto r = lab.installer.rollback("tool", "x");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("no previous version") != std::string::npos);
}

TEST_CASE("the highest seen version is persisted before the install and survives a restart") {
  BundleLab lab;
  REQUIRE(lab.deliver(lab.sign(4)).ok());
  std::string state = readAll(lab.installer.root() + "/.state/tool");
  CHECK(state.find("version 4\n") != std::string::npos);
  CHECK(state.find("installed 1\n") != std::string::npos);
  // A restarted spore remembers: an older version is still refused.
  std::string root = lab.installer.root();
  lab.installer = Installer::open(root + "/../bundles-other", lab.clock).value();  // drop the lock
  auto reopened = Installer::open(root, lab.clock);
  REQUIRE(reopened.ok());
  lab.installer = std::move(*reopened);
  auto r = lab.deliver(lab.sign(3));
  REQUIRE_FALSE(r.ok());
  CHECK(r.refused().reason == Refusal::kOlderVersion);
}

TEST_CASE(
    "an install interrupted after its version was recorded can be completed by the same bundle") {
  BundleLab lab;
  REQUIRE(lab.deliver(lab.sign(1)).ok());
  std::string two = lab.sign(2);
  // Simulate a crash after the state was recorded (installed 0) and the unpack had begun.
  ManifestInfo m2;
  {
    // Recover the manifest bytes from the bundle: header says their length.
    std::uint32_t len = 0;
    for (int i = 3; i >= 0; --i) len = len << 8 | static_cast<unsigned char>(two[12 + i]);
    std::string manifestBytes = two.substr(kBundleHeaderBytes, len);
    m2 = decodeManifest(manifestBytes).value();
    auto ledger = FileVersionLedger::open(lab.installer.root() + "/.state").value();
    SeenVersion pending{2, mesh::util::toHex(sha256(manifestBytes)), false, {}};
    REQUIRE(ledger.record("tool", pending).ok());
  }
  writeFile(lab.installer.root() + "/tool/2.tmp/files/half", "partial");
  std::string root = lab.installer.root();
  lab.installer = Installer::open(lab.tmp / "elsewhere", lab.clock).value();  // drop the lock
  lab.installer = Installer::open(root, lab.clock).value();  // recovery removes 2.tmp
  CHECK_FALSE(exists(root + "/tool/2.tmp"));
  CHECK(lab.currentVersion() == 1);
  auto done = lab.deliver(two);
  REQUIRE(done.ok());
  CHECK(lab.currentVersion() == 2);
  // Once installed, the same bytes are a replay.
  auto replay = lab.deliver(two);
  REQUIRE_FALSE(replay.ok());
  CHECK(replay.refused().reason == Refusal::kReplayedVersion);
  // A different bundle claiming the pending version is not let through by the pending rule.
  SeenVersion pending{7, std::string(64, 'a'), false, {}};
  ManifestInfo other = m2;
  other.version = 7;
  auto verdict = checkVersion(other, std::string(64, 'b'), pending);
  REQUIRE(verdict.has_value());
  CHECK(verdict->reason == Refusal::kReplayedVersion);
  CHECK_FALSE(checkVersion(other, std::string(64, 'a'), pending).has_value());
}

TEST_CASE("a corrupt version state refuses installs instead of forgetting what was seen") {
  BundleLab lab;
  REQUIRE(lab.deliver(lab.sign(1)).ok());
  writeFile(lab.installer.root() + "/.state/tool", "garbage\n", 0600);
  auto r = lab.deliver(lab.sign(2));
  REQUIRE_FALSE(r.ok());
  CHECK(r.refused().reason == Refusal::kLocalError);
  CHECK(r.refused().message.find("corrupt") != std::string::npos);
  CHECK(lab.currentVersion() == 1);
}

TEST_CASE("a second installer on the same directory is refused") {
  BundleLab lab;
  auto second = Installer::open(lab.installer.root(), lab.clock);
  REQUIRE_FALSE(second.ok());
  CHECK(second.error().message.find("another process") != std::string::npos);
}

TEST_CASE("each audit line is one JSON object with time, name, version, event, reason and key") {
  BundleLab lab;
  REQUIRE(lab.deliver(lab.sign(1)).ok());
  REQUIRE_FALSE(lab.deliver(lab.sign(1)).ok());
  auto lines = lab.auditLines();
  REQUIRE(lines.size() == 2);
  for (const std::string& line : lines) {
    CHECK(line.front() == '{');
    CHECK(line.back() == '}');
    for (const char* key : {"\"time\":", "\"time_ms\":", "\"event\":", "\"name\":\"tool\"",
                            "\"version\":1", "\"reason\":", "\"message\":", "\"key\":"}) {
      CHECK(line.find(key) != std::string::npos);
    }
  }
  CHECK(lines[1].find("\"reason\":\"replayed-version\"") != std::string::npos);
  // Untrusted text is escaped, never breaks the line.
  std::string line = auditLine({"refused", "", 0, "x", "bad \"path\"\n\xff", ""}, 0);
  CHECK(line.find('\n') == line.size() - 1);
  CHECK(mesh::util::isUtf8(line));
}

TEST_CASE("installedHandlers maps every bundle's handlers to their current executables") {
  BundleLab lab;
  REQUIRE(lab.deliver(lab.sign(1)).ok());
  lab.name = "second";
  ManifestInfo m = lab.manifest(1);
  m.handlers = {"reduce"};
  std::string payload =
      mesh::bundle::testing::RawArchive().file("reduce", "#!/bin/sh\n", 0755).end();
  REQUIRE(lab.deliver(craftBundle(m, payload, lab.key)).ok());
  auto handlers = lab.installer.installedHandlers();
  REQUIRE(handlers.ok());
  CHECK(handlers->size() == 2);
  CHECK(handlers->at("wc-map") == lab.installer.root() + "/tool/1/files/wc-map");
  CHECK(handlers->at("reduce") == lab.installer.root() + "/second/1/files/reduce");
}
