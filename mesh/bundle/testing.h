// Test support for the bundle module (header-only, used by tests/unit/bundle_*_test.cpp and the
// lead's integration tests): a temporary directory, file helpers, and builders for hostile
// bundles that a real signer would never produce. Not part of the production API.
// Thread rule: plain helpers for one test thread.
#pragma once

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "mesh/bundle/archive.h"
#include "mesh/bundle/fs.h"
#include "mesh/bundle/installer.h"
#include "mesh/bundle/manifest.h"
#include "mesh/bundle/receiver.h"
#include "mesh/bundle/release_key.h"
#include "mesh/bundle/sign.h"
#include "mesh/util/bytes.h"
#include "mesh/util/clock.h"

namespace mesh::bundle::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/bundle-test-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() { (void)removeTree(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

// Writes `contents` to `path` (creating parent directories) and sets `mode`. Throws on failure.
inline void writeFile(const std::string& path, std::string_view contents, unsigned mode = 0644) {
  std::size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    if (!makeDirs(path.substr(0, slash), 0755))
      throw std::runtime_error("mkdir failed for " + path);
  }
  if (!util::writeFileAtomic(path, contents, mode))
    throw std::runtime_error("write failed: " + path);
  ::chmod(path.c_str(), mode);
}

inline std::string readAll(const std::string& path) {
  auto r = util::readFile(path);
  if (!r) throw std::runtime_error(r.error().message);
  return *r;
}

// Raw archive bytes, entry by entry, with no checks at all.
class RawArchive {
 public:
  RawArchive() : bytes_(kArchiveMagic) {}
  RawArchive& dir(std::string_view path, std::uint32_t mode = 0755) {
    bytes_ += encodeEntryHeader(1, mode, path, 0);
    return *this;
  }
  RawArchive& file(std::string_view path, std::string_view contents, std::uint32_t mode = 0644) {
    bytes_ += encodeEntryHeader(2, mode, path, contents.size());
    bytes_ += contents;
    return *this;
  }
  RawArchive& entry(std::uint8_t type, std::uint32_t mode, std::string_view path,
                    std::string_view data) {
    bytes_ += encodeEntryHeader(type, mode, path, data.size());
    bytes_ += data;
    return *this;
  }
  RawArchive& raw(std::string_view bytes) {
    bytes_ += bytes;
    return *this;
  }
  std::string end() const { return bytes_ + encodeEntryHeader(0, 0, {}, 0); }

 private:
  std::string bytes_;
};

// A signed bundle from a manifest and payload of the caller's choosing. payloadSize and
// payloadSha256 are filled in from `payload` unless the manifest already sets them.
inline std::string craftBundle(ManifestInfo m, std::string_view payload, const ReleaseKey& key) {
  if (m.payloadSha256.empty()) m.payloadSha256 = sha256(payload);
  if (m.payloadSize == 0) m.payloadSize = payload.size();
  std::string manifestBytes = encodeManifest(m);
  std::string head =
      encodeBundleHead(manifestBytes, key.publicKey(), signManifest(manifestBytes, key));
  return head + std::string(payload);
}

inline constexpr std::int64_t kDayMs = 86'400'000;

// A spore's bundle directory with a release key it trusts and a manual clock, plus builders for
// good and bad bundles of one name ("tool", whose handler is "wc-map"). Setup errors throw.
class BundleLab {
 public:
  BundleLab()
      : key(ReleaseKey::generate()), installer(Installer::open(tmp / "bundles", clock).value()) {
    trusted.add(key.publicKey());
  }

  TempDir tmp;
  util::ManualClock clock;
  ReleaseKey key;
  TrustedKeys trusted;
  Installer installer;
  std::string name = "tool";

  // A manifest for `version` created an hour ago, expiring in 30 days (payload fields empty).
  ManifestInfo manifest(std::uint64_t version) const {
    ManifestInfo m;
    m.name = name;
    m.version = version;
    m.createdMs = clock.wallMs() - 3'600'000;
    m.expiresMs = clock.wallMs() + 30 * kDayMs;
    m.handlers = {"wc-map"};
    return m;
  }

  // The script of handler wc-map in `version`.
  static std::string script(std::uint64_t version) {
    return "#!/bin/sh\necho v" + std::to_string(version) + "\n";
  }

  // A source tree for `version`: wc-map (0755) and lib/words.txt.
  std::string sourceDir(std::uint64_t version) {
    std::string dir = tmp / ("src-" + std::to_string(version));
    writeFile(dir + "/wc-map", script(version), 0755);
    writeFile(dir + "/lib/words.txt", "alpha beta gamma\n", 0644);
    return dir;
  }

  // The same tree as sourceDir(), as archive bytes built by hand (for crafting).
  static std::string payload(std::uint64_t version) {
    return RawArchive()
        .dir("lib")
        .file("lib/words.txt", "alpha beta gamma\n")
        .file("wc-map", script(version), 0755)
        .end();
  }

  // A bundle signed by signBundle from sourceDir(version), as bytes.
  std::string sign(std::uint64_t version, const ReleaseKey* by = nullptr,
                   std::int64_t expiresInMs = 30 * kDayMs) {
    SignOptions o;
    o.name = name;
    o.version = version;
    o.createdMs = clock.wallMs() - 3'600'000;
    o.expiresMs = clock.wallMs() + expiresInMs;
    std::string out = tmp / (name + "-" + std::to_string(version) + ".bundle");
    auto r = signBundle(sourceDir(version), o, by != nullptr ? *by : key, out);
    if (!r) throw std::runtime_error(r.error().message);
    return readAll(out);
  }

  // Feeds `bytes` in chunks of `chunk` bytes to a fresh receiver (stopping at a refusal), then
  // installs. `fed` receives how many bytes the receiver accepted.
  Checked<InstallOutcome> deliver(std::string_view bytes, const ReceiveLimits& limits = {},
                                  std::size_t chunk = 4096, std::uint64_t* fed = nullptr) {
    std::string scratch = installer.incomingDir("test");
    (void)removeTree(scratch);
    auto rx = BundleReceiver::open(scratch, limits, trusted, clock);
    if (!rx) throw std::runtime_error(rx.error().message);
    for (std::size_t off = 0; off < bytes.size(); off += chunk) {
      if (!rx->feed(bytes.substr(off, chunk))) break;
    }
    if (fed != nullptr) *fed = rx->offset();
    return installer.install(*rx);
  }

  // The version ROOT/NAME/current points at, or 0.
  std::uint64_t currentVersion() const {
    char buf[64];
    std::string link = installer.root() + "/" + name + "/current";
    ssize_t n = ::readlink(link.c_str(), buf, sizeof buf - 1);
    if (n <= 0) return 0;
    return std::stoull(std::string(buf, static_cast<std::size_t>(n)));
  }

  std::vector<std::string> auditLines() const {
    return util::splitList(readAll(installer.auditPath()), '\n');
  }
};

}  // namespace mesh::bundle::testing
