// Install, rollback, the version state and the audit log.
#include <doctest/doctest.h>
#include <atomic>
#include <fcntl.h>
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

TEST_CASE("an install stopped by its stop flag keeps the spool, audits nothing and resumes later") {
  BundleLab lab;
  REQUIRE(lab.deliver(lab.sign(1)).ok());
  std::string two = lab.sign(2);
  const std::string scratch = lab.installer.incomingDir("tool-2");
  {
    auto rx = BundleReceiver::open(scratch, {}, lab.trusted, lab.clock).value();
    REQUIRE(rx.feed(two));
    REQUIRE(rx.complete());
    std::atomic<bool> stop{true};
    std::size_t auditBefore = lab.auditLines().size();
    auto r = lab.installer.install(rx, &stop);
    REQUIRE_FALSE(r.ok());
    CHECK(r.refused().reason == Refusal::kLocalError);
    CHECK(r.refused().message.find("interrupted") != std::string::npos);
    CHECK(lab.auditLines().size() == auditBefore);  // not a refusal
  }
  const std::string root = lab.installer.root();
  CHECK(lab.currentVersion() == 1);
  CHECK_FALSE(exists(root + "/tool/2.tmp"));
  CHECK_FALSE(exists(root + "/tool/2"));
  CHECK(exists(scratch + "/bundle.part"));
  auto seen = lab.installer.seen("tool").value();
  REQUIRE(seen.has_value());
  CHECK(seen->version == 2);
  CHECK_FALSE(seen->installed);
  // The next start: the spool replays complete, and the same bundle installs.
  lab.installer = Installer::open(lab.tmp / "elsewhere", lab.clock).value();  // drop the lock
  lab.installer = Installer::open(root, lab.clock).value();
  auto rx = BundleReceiver::open(scratch, {}, lab.trusted, lab.clock).value();
  REQUIRE(rx.complete());
  auto done = lab.installer.install(rx);
  REQUIRE(done.ok());
  CHECK(lab.currentVersion() == 2);
  CHECK(*done->previous == 1);
  CHECK_FALSE(exists(scratch));
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

TEST_CASE("a 64-character bundle name with a 20-digit version has a spool and installs") {
  BundleLab lab;
  lab.name = "a" + std::string(63, '0');
  const std::uint64_t version = 10000000000000000000ull;  // 20 digits
  const std::string id = Installer::spoolId(lab.name, version);
  CHECK(id.size() == kMaxSpoolId);
  auto rx = BundleReceiver::open(lab.installer.incomingDir(id), {}, lab.trusted, lab.clock);
  REQUIRE(rx.ok());
  REQUIRE(rx->feed(lab.sign(version)));
  REQUIRE(rx->complete());
  REQUIRE(lab.installer.install(*rx).ok());
  CHECK(lab.currentVersion() == version);
  CHECK_FALSE(exists(lab.installer.incomingDir(id)));
  // Anything else is a bug of the caller, never a path outside .incoming.
  CHECK_THROWS(lab.installer.incomingDir(id + "0"));
  CHECK_THROWS(lab.installer.incomingDir("../state"));
  CHECK_THROWS(lab.installer.incomingDir(""));
  CHECK_THROWS(Installer::spoolId("../x", 1));
}

TEST_CASE("pruneSpools deletes the spools nobody wants, then the oldest beyond the bound") {
  BundleLab lab;
  const std::string incoming = lab.installer.root() + "/.incoming";
  // Written oldest first: zz-2, other-1, tool-8; tool-7 is superseded, junk is not a spool.
  std::int64_t second = 1'700'000'000;
  for (const char* id : {"zz-2", "other-1", "tool-8", "tool-7"}) {
    const std::string part = incoming + "/" + id + "/bundle.part";
    writeFile(part, "partial", 0600);
    timespec times[2] = {{second, 0}, {second, 0}};
    REQUIRE(::utimensat(AT_FDCWD, part.c_str(), times, 0) == 0);
    second += 10;
  }
  writeFile(incoming + "/junk", "x", 0600);
  auto removed = lab.installer.pruneSpools({"tool-8", "other-1", "zz-2", "absent-1"}, 2);
  REQUIRE(removed.ok());
  CHECK(*removed == 3);
  CHECK(exists(incoming + "/tool-8/bundle.part"));
  CHECK(exists(incoming + "/other-1/bundle.part"));
  CHECK_FALSE(exists(incoming + "/zz-2"));  // wanted, but the oldest of three
  CHECK_FALSE(exists(incoming + "/tool-7"));
  CHECK_FALSE(exists(incoming + "/junk"));
  // Nothing wanted: nothing left.
  removed = lab.installer.pruneSpools({}, 2);
  REQUIRE(removed.ok());
  CHECK(*removed == 2);
  CHECK_FALSE(exists(incoming + "/tool-8"));
  CHECK(exists(incoming));
}

TEST_CASE("a handler another bundle provides is refused, NAME.serve and NAME being one handler") {
  BundleLab lab;
  auto bundleOf = [&](const std::string& name, const std::string& file) {
    lab.name = name;
    ManifestInfo m = lab.manifest(1);
    m.handlers = {file};
    return craftBundle(m, mesh::bundle::testing::RawArchive().file(file, "#!/bin/sh\n", 0755).end(),
                       lab.key);
  };
  REQUIRE(lab.deliver(bundleOf("alpha", "wc.serve")).ok());
  auto beta = lab.deliver(bundleOf("beta", "wc"));
  REQUIRE_FALSE(beta.ok());
  CHECK(beta.refused().reason == Refusal::kHandlerClash);
  CHECK(beta.refused().message ==
        "handler wc (file wc) is already provided by bundle alpha version 1 (file wc.serve): "
        "rename it in one of the bundles");
  REQUIRE(lab.deliver(bundleOf("gamma", "count")).ok());
  auto delta = lab.deliver(bundleOf("delta", "count.serve"));
  REQUIRE_FALSE(delta.ok());
  CHECK(delta.refused().reason == Refusal::kHandlerClash);
  // One bundle may carry both (its serve handler wins on spores that run serve handlers), and
  // its next version may still provide what it provided.
  lab.name = "alpha";
  ManifestInfo both = lab.manifest(2);
  both.handlers = {"wc", "wc.serve"};
  REQUIRE(lab.deliver(craftBundle(both,
                                  mesh::bundle::testing::RawArchive()
                                      .file("wc", "#!/bin/sh\n", 0755)
                                      .file("wc.serve", "#!/bin/sh\n", 0755)
                                      .end(),
                                  lab.key))
              .ok());
}

TEST_CASE("open finishes a rollback cut short between marking the version bad and the switch") {
  BundleLab lab;
  REQUIRE(lab.deliver(lab.sign(1)).ok());
  REQUIRE(lab.deliver(lab.sign(2)).ok());
  const std::string root = lab.installer.root();
  // What rollback() leaves when the spore dies right after recording the bad version.
  {
    auto ledger = FileVersionLedger::open(root + "/.state").value();
    SeenVersion state = ledger.seen("tool").value().value();
    state.bad.push_back(2);
    REQUIRE(ledger.record("tool", state).ok());
  }
  CHECK(lab.currentVersion() == 2);
  lab.installer = Installer::open(lab.tmp / "elsewhere", lab.clock).value();  // drop the lock
  lab.installer = Installer::open(root, lab.clock).value();
  CHECK(lab.currentVersion() == 1);
  CHECK_FALSE(exists(root + "/tool/previous"));
  auto handlers = lab.installer.installedHandlers();
  REQUIRE(handlers.ok());
  CHECK(handlers->at("wc-map") == root + "/tool/1/files/wc-map");
  auto lines = lab.auditLines();
  CHECK(lines.back().find("\"event\":\"rolled-back\"") != std::string::npos);
  CHECK(lines.back().find("\"version\":2") != std::string::npos);
  CHECK(lines.back().find("\"reason\":\"interrupted-rollback\"") != std::string::npos);
  // Opening again changes nothing more.
  lab.installer = Installer::open(lab.tmp / "elsewhere", lab.clock).value();
  lab.installer = Installer::open(root, lab.clock).value();
  CHECK(lab.currentVersion() == 1);
  CHECK(lab.auditLines().size() == lines.size());
  // The bad version stays refused; the fix installs over version 1.
  auto three = lab.deliver(lab.sign(3));
  REQUIRE(three.ok());
  CHECK(*three->previous == 1);
}

TEST_CASE("open drops a previous link that names current, left by a rollback cut short later") {
  BundleLab lab;
  REQUIRE(lab.deliver(lab.sign(1)).ok());
  REQUIRE(lab.deliver(lab.sign(2)).ok());
  const std::string root = lab.installer.root();
  REQUIRE(::unlink((root + "/tool/current").c_str()) == 0);
  REQUIRE(::symlink("1", (root + "/tool/current").c_str()) == 0);  // previous -> 1 as well
  lab.installer = Installer::open(lab.tmp / "elsewhere", lab.clock).value();
  lab.installer = Installer::open(root, lab.clock).value();
  CHECK(lab.currentVersion() == 1);
  CHECK_FALSE(exists(root + "/tool/previous"));
  // So a rollback has nowhere to go, instead of marking version 1 bad and staying on it.
  CHECK_FALSE(lab.installer.rollback("tool", "x").ok());
}

TEST_CASE("a bad current version without a previous one (a withdrawal cut short) is removed at open") {
  BundleLab lab;
  REQUIRE(lab.deliver(lab.sign(1)).ok());
  const std::string root = lab.installer.root();
  {
    auto ledger = FileVersionLedger::open(root + "/.state").value();
    SeenVersion state = ledger.seen("tool").value().value();
    state.bad.push_back(1);
    REQUIRE(ledger.record("tool", state).ok());
  }
  lab.installer = Installer::open(lab.tmp / "elsewhere", lab.clock).value();
  auto reopened = Installer::open(root, lab.clock);
  REQUIRE(reopened.ok());
  lab.installer = std::move(*reopened);
  CHECK_FALSE(exists(root + "/tool/current"));
  auto handlers = lab.installer.installedHandlers();
  REQUIRE(handlers.ok());
  CHECK(handlers->count("wc-map") == 0);
  CHECK(lab.auditLines().back().find("\"reason\":\"interrupted-rollback\"") != std::string::npos);
}

TEST_CASE("withdraw removes a first install that failed its trial; it is never installed again, a higher version is") {
  BundleLab lab;
  REQUIRE(lab.deliver(lab.sign(1)).ok());
  std::string two = lab.sign(2);
  REQUIRE(lab.deliver(two).ok());
  CHECK_FALSE(lab.installer.withdraw("tool", "x").ok());  // version 1 is there to roll back to
  BundleLab first;
  std::string one = first.sign(1);
  REQUIRE(first.deliver(one).ok());
  CHECK_FALSE(first.installer.withdraw("nope", "x").ok());
  REQUIRE(first.installer.withdraw("tool", "trial-failed").ok());
  const std::string root = first.installer.root();
  CHECK_FALSE(exists(root + "/tool/current"));
  auto handlers = first.installer.installedHandlers();
  REQUIRE(handlers.ok());
  CHECK(handlers->count("wc-map") == 0);
  CHECK(first.auditLines().back().find("\"event\":\"rolled-back\"") != std::string::npos);
  auto again = first.deliver(one);
  REQUIRE_FALSE(again.ok());
  CHECK(again.refused().reason == Refusal::kBadVersion);
  auto fixed = first.deliver(first.sign(2));
  REQUIRE(fixed.ok());
  CHECK(first.currentVersion() == 2);
}
