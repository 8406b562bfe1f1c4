// Verification: one named test per attack, each building its bad bundle itself. A spore with
// version 5 of "tool" installed receives the attack; every refusal must carry the right reason,
// leave version 5 current and serving, and be in the audit log.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <random>

#include "mesh/bundle/installer.h"
#include "mesh/bundle/receiver.h"
#include "mesh/bundle/testing.h"

using namespace mesh::bundle;
using mesh::bundle::testing::BundleLab;
using mesh::bundle::testing::craftBundle;
using mesh::bundle::testing::kDayMs;
using mesh::bundle::testing::RawArchive;
using mesh::bundle::testing::readAll;
using mesh::bundle::testing::TempDir;

namespace {

constexpr std::uint64_t kBase = 5;

// A lab whose spore runs version kBase of "tool".
struct Spore : BundleLab {
  Spore() {
    auto r = deliver(sign(kBase));
    REQUIRE(r.ok());
    REQUIRE(currentVersion() == kBase);
  }

  // The refusal of `bytes` has `reason`; version kBase still serves; the refusal is audited.
  void expectRefused(std::string_view bytes, Refusal reason, const ReceiveLimits& limits = {}) {
    std::size_t linesBefore = auditLines().size();
    auto r = deliver(bytes, limits);
    REQUIRE_FALSE(r.ok());
    INFO("refused as: " << r.refused().describe());
    CHECK(r.refused().reason == reason);
    CHECK(currentVersion() == kBase);
    auto handlers = installer.installedHandlers();
    REQUIRE(handlers.ok());
    REQUIRE(handlers->count("wc-map") == 1);
    const std::string& path = handlers->at("wc-map");
    CHECK(path == installer.root() + "/tool/" + std::to_string(kBase) + "/files/wc-map");
    CHECK(::access(path.c_str(), X_OK) == 0);
    CHECK(readAll(path) == script(kBase));
    auto lines = auditLines();
    REQUIRE(lines.size() == linesBefore + 1);
    CHECK(lines.back().find("\"event\":\"refused\"") != std::string::npos);
    CHECK(lines.back().find(std::string("\"reason\":\"") + refusalName(reason) + "\"") !=
          std::string::npos);
    // Nothing was left in the scratch area.
    CHECK(::access(installer.incomingDir("test").c_str(), F_OK) != 0);
  }
};

// A ledger that has seen nothing (for checks that do not need a spore).
struct EmptyLedger final : VersionLedger {
  mesh::util::Result<std::optional<SeenVersion>> seen(const std::string&) const override {
    return std::optional<SeenVersion>();
  }
};

}  // namespace

TEST_CASE("a good bundle verifies and installs, its handlers resolve and current points at it") {
  BundleLab lab;
  std::uint64_t fed = 0;
  std::string bytes = lab.sign(1);
  auto r = lab.deliver(bytes, {}, 1000, &fed);
  REQUIRE(r.ok());
  CHECK(fed == bytes.size());
  CHECK(r->version == 1);
  CHECK_FALSE(r->previous.has_value());
  CHECK(lab.currentVersion() == 1);
  auto handlers = lab.installer.installedHandlers();
  REQUIRE(handlers.ok());
  REQUIRE(handlers->size() == 1);
  std::string exe = handlers->at("wc-map");
  CHECK(exe == lab.installer.root() + "/tool/1/files/wc-map");
  CHECK(exe[0] == '/');
  CHECK(::access(exe.c_str(), X_OK) == 0);
  struct stat st {};
  REQUIRE(::stat(exe.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0755);
  REQUIRE(::stat((lab.installer.root() + "/tool/1/files/lib/words.txt").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0644);
  REQUIRE(::stat((lab.installer.root() + "/tool/1/files/lib").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0755);
  CHECK(readAll(exe) == BundleLab::script(1));
  // The handler runs.
  CHECK(std::system((exe + " > " + (lab.tmp / "out")).c_str()) == 0);
  CHECK(readAll(lab.tmp / "out") == "v1\n");
  auto lines = lab.auditLines();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].find("\"event\":\"installed\"") != std::string::npos);
  CHECK(lines[0].find(lab.key.publicKey().fingerprint()) != std::string::npos);
}

TEST_CASE("a newer version installs over the old one, which stays as previous") {
  Spore spore;
  auto r = spore.deliver(spore.sign(kBase + 1));
  REQUIRE(r.ok());
  CHECK(spore.currentVersion() == kBase + 1);
  REQUIRE(r->previous.has_value());
  CHECK(*r->previous == kBase);
  auto handlers = spore.installer.installedHandlers();
  CHECK(handlers->at("wc-map") == spore.installer.root() + "/tool/6/files/wc-map");
}

TEST_CASE("a tampered manifest is refused: the signature no longer matches") {
  Spore spore;
  ManifestInfo m = spore.manifest(kBase + 1);
  std::string payload = BundleLab::payload(kBase + 1);
  m.payloadSize = payload.size();
  m.payloadSha256 = sha256(payload);
  std::string signature = signManifest(encodeManifest(m), spore.key);
  m.expiresMs += 365 * kDayMs;  // the attacker extends the expiry and keeps the signature
  std::string bytes =
      encodeBundleHead(encodeManifest(m), spore.key.publicKey(), signature) + payload;
  spore.expectRefused(bytes, Refusal::kBadSignature);
}

TEST_CASE("a tampered payload is refused: its SHA-256 differs from the manifest's") {
  Spore spore;
  std::string bytes = spore.sign(kBase + 1);
  // The last byte of wc-map's contents, just before the 13-byte end marker.
  bytes[bytes.size() - kArchiveEntryHeaderBytes - 2] ^= 0x20;
  spore.expectRefused(bytes, Refusal::kPayloadMismatch);
}

TEST_CASE("a bundle signed by an untrusted key is refused") {
  Spore spore;
  ReleaseKey stranger = ReleaseKey::generate();
  spore.expectRefused(spore.sign(kBase + 1, &stranger), Refusal::kUntrustedKey);
}

TEST_CASE("a bundle that claims a trusted key but carries another key's signature is refused") {
  Spore spore;
  ReleaseKey stranger = ReleaseKey::generate();
  ManifestInfo m = spore.manifest(kBase + 1);
  std::string payload = BundleLab::payload(kBase + 1);
  m.payloadSize = payload.size();
  m.payloadSha256 = sha256(payload);
  std::string bytes = encodeManifest(m);
  std::string forged =
      encodeBundleHead(bytes, spore.key.publicKey(), signManifest(bytes, stranger));
  spore.expectRefused(forged + payload, Refusal::kBadSignature);
}

TEST_CASE("an older version is refused (rollback attempt)") {
  Spore spore;
  spore.expectRefused(spore.sign(kBase - 1), Refusal::kOlderVersion);
}

TEST_CASE("the same version replayed is refused") {
  Spore spore;
  spore.expectRefused(readAll(spore.tmp / "tool-5.bundle"), Refusal::kReplayedVersion);
}

TEST_CASE("an expired bundle is refused") {
  Spore spore;
  ManifestInfo m = spore.manifest(kBase + 1);
  m.createdMs = spore.clock.wallMs() - 10 * kDayMs;
  m.expiresMs = spore.clock.wallMs() - kDayMs;
  spore.expectRefused(craftBundle(m, BundleLab::payload(kBase + 1), spore.key), Refusal::kExpired);
}

TEST_CASE("expiry is judged at the time the update started, not when it finished") {
  BundleLab lab;
  std::string bytes = lab.sign(1, nullptr, 60'000);  // valid for one more minute
  auto rx = BundleReceiver::open(lab.installer.incomingDir("slow"), {}, lab.trusted, lab.clock);
  REQUIRE(rx.ok());
  REQUIRE(rx->feed(std::string_view(bytes).substr(0, 100)));
  lab.clock.advanceMs(120'000);  // the download is slow: the bundle expires meanwhile
  REQUIRE(rx->feed(std::string_view(bytes).substr(100)));
  CHECK(lab.installer.install(*rx).ok());
  // A receive that starts after the expiry is refused.
  auto late = BundleReceiver::open(lab.installer.incomingDir("late"), {}, lab.trusted, lab.clock);
  REQUIRE(late.ok());
  std::string again = lab.sign(2, nullptr, -1);
  REQUIRE(late->feed(again));
  auto r = lab.installer.install(*late);
  REQUIRE_FALSE(r.ok());
  CHECK(r.refused().reason == Refusal::kExpired);
}

TEST_CASE("a ../ path in the archive is refused and nothing lands outside the bundle directory") {
  Spore spore;
  std::string payload =
      RawArchive().file("wc-map", BundleLab::script(6), 0755).file("../../escaped", "pwned").end();
  spore.expectRefused(craftBundle(spore.manifest(kBase + 1), payload, spore.key),
                      Refusal::kUnsafePath);
  CHECK(::access((spore.installer.root() + "/escaped").c_str(), F_OK) != 0);
  CHECK(::access((spore.installer.root() + "/tool/escaped").c_str(), F_OK) != 0);
  CHECK(::access((spore.installer.root() + "/tool/6").c_str(), F_OK) != 0);
  CHECK(::access((spore.installer.root() + "/tool/6.tmp").c_str(), F_OK) != 0);
}

TEST_CASE("an absolute path in the archive is refused") {
  Spore spore;
  std::string evil = spore.tmp / "absolute-target";
  std::string payload =
      RawArchive().file("wc-map", BundleLab::script(6), 0755).file(evil, "pwned").end();
  spore.expectRefused(craftBundle(spore.manifest(kBase + 1), payload, spore.key),
                      Refusal::kUnsafePath);
  CHECK(::access(evil.c_str(), F_OK) != 0);
}

TEST_CASE("a link-type entry crafted into the archive is refused at verify time") {
  Spore spore;
  std::string payload =
      RawArchive()
          .file("wc-map", BundleLab::script(6), 0755)
          .entry(3, 0777, "passwd", "/etc/passwd")  // what a symlink entry would be
          .end();
  spore.expectRefused(craftBundle(spore.manifest(kBase + 1), payload, spore.key),
                      Refusal::kUnsupportedEntry);
}

TEST_CASE("a setuid file mode in the archive is refused") {
  Spore spore;
  std::string payload = RawArchive().file("wc-map", BundleLab::script(6), 04755).end();
  spore.expectRefused(craftBundle(spore.manifest(kBase + 1), payload, spore.key),
                      Refusal::kBadMode);
}

TEST_CASE("a path given twice in the archive is refused") {
  Spore spore;
  std::string payload = RawArchive()
                            .file("wc-map", BundleLab::script(6), 0755)
                            .file("wc-map", "#!/bin/sh\nrm -rf ~\n", 0755)
                            .end();
  spore.expectRefused(craftBundle(spore.manifest(kBase + 1), payload, spore.key),
                      Refusal::kDuplicatePath);
}

TEST_CASE("an archive over the file-count or unpacked-size cap is refused") {
  Spore spore;
  std::string bytes = craftBundle(spore.manifest(kBase + 1), BundleLab::payload(6), spore.key);
  ReceiveLimits fewFiles;
  fewFiles.maxFiles = 2;
  spore.expectRefused(bytes, Refusal::kTooManyFiles, fewFiles);
  ReceiveLimits small;
  small.maxUnpackedBytes = 20;
  spore.expectRefused(bytes, Refusal::kUnpackedTooLarge, small);
}

TEST_CASE("a handler that is not an executable at the top of the payload is refused") {
  Spore spore;
  std::string payload = RawArchive().file("wc-map", BundleLab::script(6), 0644).end();
  spore.expectRefused(craftBundle(spore.manifest(kBase + 1), payload, spore.key),
                      Refusal::kMissingHandler);
}

TEST_CASE("an oversized payload is refused while streaming: the feed stops at the head") {
  Spore spore;
  std::string bytes = spore.sign(kBase + 1);
  ReceiveLimits limits;
  limits.maxPayloadBytes = 64;
  std::uint64_t fed = 0;
  auto r = spore.deliver(bytes, limits, 256, &fed);
  REQUIRE_FALSE(r.ok());
  CHECK(r.refused().reason == Refusal::kPayloadTooLarge);
  CHECK(fed < 512);  // refused within the chunks that carried the head
  spore.expectRefused(bytes, Refusal::kPayloadTooLarge, limits);
}

TEST_CASE("a manifest above the size cap is refused from the header alone") {
  Spore spore;
  std::string bytes = spore.sign(kBase + 1);
  ReceiveLimits limits;
  limits.maxManifestBytes = 64;
  auto rx =
      BundleReceiver::open(spore.installer.incomingDir("cap"), limits, spore.trusted, spore.clock);
  REQUIRE(rx.ok());
  CHECK_FALSE(rx->feed(std::string_view(bytes).substr(0, kBundleHeaderBytes)));
  REQUIRE(rx->refused() != nullptr);
  CHECK(rx->refused()->reason == Refusal::kManifestTooLarge);
  spore.expectRefused(bytes, Refusal::kManifestTooLarge, limits);
}

TEST_CASE("a manifest claiming a smaller size than sent is refused as soon as the excess arrives") {
  Spore spore;
  std::string payload = BundleLab::payload(kBase + 1);
  ManifestInfo m = spore.manifest(kBase + 1);
  m.payloadSize = payload.size() - 5;
  m.payloadSha256 = sha256(payload.substr(0, payload.size() - 5));
  std::string bytes = craftBundle(m, payload, spore.key);
  auto rx =
      BundleReceiver::open(spore.installer.incomingDir("small"), {}, spore.trusted, spore.clock);
  REQUIRE(rx.ok());
  REQUIRE(rx->feed(std::string_view(bytes).substr(0, bytes.size() - 5)));
  CHECK_FALSE(rx->feed(std::string_view(bytes).substr(bytes.size() - 5, 1)));
  CHECK(rx->refused()->reason == Refusal::kLongerThanDeclared);
  spore.expectRefused(bytes, Refusal::kLongerThanDeclared);
  // Bytes after a complete, well-formed bundle are refused the same way.
  spore.expectRefused(spore.sign(kBase + 1) + "x", Refusal::kLongerThanDeclared);
}

TEST_CASE("a truncated bundle is refused") {
  Spore spore;
  std::string bytes = spore.sign(kBase + 1);
  spore.expectRefused(bytes.substr(0, bytes.size() - 100), Refusal::kTruncated);
  spore.expectRefused(bytes.substr(0, 40), Refusal::kTruncated);
  spore.expectRefused("", Refusal::kTruncated);
}

TEST_CASE("garbage bytes are refused") {
  Spore spore;
  std::mt19937 rng(7);
  std::string garbage(4096, '\0');
  for (char& c : garbage) c = static_cast<char>(rng());
  spore.expectRefused(garbage, Refusal::kGarbage);
  std::string wrongFormat = spore.sign(kBase + 1);
  wrongFormat[8] = 2;  // format version 2
  spore.expectRefused(wrongFormat, Refusal::kGarbage);
}

TEST_CASE("a manifest that does not decode is refused") {
  Spore spore;
  std::string bytes = spore.sign(kBase + 1);
  // Point the root pointer of the manifest far outside the message.
  for (int i = 0; i < 8; ++i) bytes[kBundleHeaderBytes + 8 + i] = '\x7f';
  spore.expectRefused(bytes, Refusal::kMalformedManifest);
}

TEST_CASE("a handler name another installed bundle provides is refused at install") {
  Spore spore;
  ManifestInfo m = spore.manifest(1);
  m.name = "other";
  spore.expectRefused(craftBundle(m, BundleLab::payload(1), spore.key), Refusal::kHandlerClash);
}

TEST_CASE("corrupted bundles never crash the receiver and are always refused (seeded fuzz)") {
  BundleLab lab;
  const std::string good = lab.sign(1);
  EmptyLedger ledger;
  {
    // The unmutated bundle passes, so the loop below can fail.
    auto rx = BundleReceiver::open(lab.tmp / "fuzz-scratch", {}, lab.trusted, lab.clock);
    REQUIRE(rx.ok());
    REQUIRE(rx->feed(good));
    REQUIRE(rx->finish(ledger).ok());
    rx->discard();
  }
  std::mt19937_64 rng(20261122);
  std::map<Refusal, int> reasons;
  for (int iter = 0; iter < 300; ++iter) {
    std::string bad = good;
    switch (rng() % 5) {
      case 0: {  // flip 1-4 bytes anywhere
        int flips = 1 + static_cast<int>(rng() % 4);
        for (int i = 0; i < flips; ++i)
          bad[rng() % bad.size()] ^= static_cast<char>(1 + rng() % 255);
        break;
      }
      case 1:
        bad.resize(rng() % bad.size());
        break;  // truncate
      case 2:
        bad.append(1 + rng() % 64, static_cast<char>(rng()));
        break;  // extend
      case 3:
        bad.insert(bad.begin() + static_cast<long>(rng() % bad.size()), static_cast<char>(rng()));
        break;
      case 4:
        bad.erase(rng() % bad.size(), 1);
        break;
    }
    auto rx = BundleReceiver::open(lab.tmp / "fuzz-scratch", {}, lab.trusted, lab.clock);
    REQUIRE(rx.ok());
    std::size_t off = 0;
    while (off < bad.size()) {
      std::size_t n = 1 + rng() % 3000;
      if (!rx->feed(std::string_view(bad).substr(off, n))) break;
      off += n;
    }
    auto verdict = rx->finish(ledger);
    INFO("iteration " << iter);
    CHECK_FALSE(verdict.ok());
    if (!verdict.ok()) reasons[verdict.refused().reason]++;
    rx->discard();
  }
  CHECK(reasons.size() >= 4);  // the mutations reach several different checks
}

TEST_CASE("the nexus check refuses what a spore refuses and keeps what it accepts") {
  Spore spore;
  TempDir nexus;
  auto ledger = FileVersionLedger::open(nexus / "state");
  REQUIRE(ledger.ok());
  std::string good = spore.tmp / "tool-6.bundle";
  (void)spore.sign(kBase + 1);
  auto accepted = checkBundleFile(good, nexus / "stored.bundle", nexus / "scratch", {},
                                  spore.trusted, *ledger, spore.clock);
  REQUIRE(accepted.ok());
  CHECK(accepted->bundlePath == nexus / "stored.bundle");
  CHECK(readAll(nexus / "stored.bundle") == readAll(good));
  CHECK(accepted->manifest.version == kBase + 1);
  CHECK(::access((nexus / "scratch").c_str(), F_OK) != 0);

  ReleaseKey stranger = ReleaseKey::generate();
  (void)spore.sign(kBase + 2, &stranger);
  auto refused = checkBundleFile(spore.tmp / "tool-7.bundle", nexus / "stranger.bundle",
                                 nexus / "scratch", {}, spore.trusted, *ledger, spore.clock);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.refused().reason == Refusal::kUntrustedKey);
  CHECK(::access((nexus / "stranger.bundle").c_str(), F_OK) != 0);

  // Once the nexus records what it accepted, a replay of it is refused.
  SeenVersion seen;
  seen.version = accepted->manifest.version;
  seen.manifestSha256 = accepted->manifestSha256;
  seen.installed = true;
  REQUIRE(ledger->record("tool", seen).ok());
  auto replay =
      checkBundleFile(good, "", nexus / "scratch", {}, spore.trusted, *ledger, spore.clock);
  REQUIRE_FALSE(replay.ok());
  CHECK(replay.refused().reason == Refusal::kReplayedVersion);
}
