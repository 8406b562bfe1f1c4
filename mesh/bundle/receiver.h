// Receiving a bundle: a streaming verifier fed chunk by chunk, in order, by whoever moves the
// bytes (the spore's fetch over its DEALER, the nexus's publish handler, or feedFile() for a file
// on disk). Memory stays bounded whatever the bundle size: only the head (header, manifest,
// signature block: at most maxManifestBytes + 112 bytes) is buffered; the whole stream is
// appended to a spool file in the scratch directory and the payload is hashed as it passes.
//
// While streaming, feed() enforces (1) the size caps as soon as a declared or received size
// exceeds one (header's manifest length, manifest's payload size, bytes beyond the declared end)
// and, as soon as the head is complete, (2) the signature, so a forged bundle is refused before
// its payload is spooled. finish() then establishes, in this order, (1) that the stream is
// complete, (2) the verified signature, (3) payload length and SHA-256, (4) version above the
// highest seen, (5) not expired at the time this receive started, (6) every archive rule; nothing
// outside the scratch directory is touched. Each refusal is a named Refusal.
//
// Resuming: the spool holds exactly the bytes received so far, so offset() is where the sender
// must resume. Opening a receiver on a scratch directory that already holds a spool (after a
// reconnect, or after the process restarted) replays the spool through the same checks and
// continues from its end; if the replay is refused, the spool is dropped and offset() is 0.
//
// Thread rule: a receiver is used by one thread. The TrustedKeys and Clock given to open() must
// outlive it. The scratch directory belongs to one receive at a time (name it after the bundle
// being fetched, e.g. ROOT/.incoming/NAME-VERSION).
// Ownership: the receiver owns its scratch directory's files. A refusal deletes them; destroying
// an unfinished receiver keeps them (for a resume); discard() deletes them.
#pragma once

#include <sodium.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "mesh/bundle/fs.h"
#include "mesh/bundle/ledger.h"
#include "mesh/bundle/manifest.h"
#include "mesh/bundle/refusal.h"
#include "mesh/bundle/release_key.h"
#include "mesh/util/clock.h"
#include "mesh/util/result.h"

namespace mesh::bundle {

struct ReceiveLimits {
  std::uint64_t maxManifestBytes = 64 * 1024;
  std::uint64_t maxPayloadBytes = 256ull << 20;   // the archive as sent
  std::uint64_t maxFiles = 10'000;                // archive entries (files and directories)
  std::uint64_t maxUnpackedBytes = 256ull << 20;  // sum of file sizes once unpacked
};

// A bundle that passed every check. Plain data: holding one grants nothing; only
// Installer::install(BundleReceiver&) installs, and it runs the checks itself.
struct VerifiedBundle {
  ManifestInfo manifest;
  std::string head;            // header | manifest bytes | signature block, exactly as received
  std::string manifestSha256;  // hex SHA-256 of the manifest bytes: names this exact release
  std::string keyFingerprint;  // the release key that signed it
  std::string bundlePath;      // the complete, verified bundle file (in the scratch directory)
  std::uint64_t payloadOffset = 0;  // where the payload starts in bundlePath (== head.size())
  std::uint64_t entries = 0;        // files and directories in the payload
  std::uint64_t unpackedBytes = 0;
  std::int64_t startedMs = 0;  // wall clock when this receive started (the expiry check)
};

class BundleReceiver {
 public:
  // Starts a receive in `scratchDir` (created 0700 if missing), or resumes the one spooled there.
  // Errors: the scratch directory or spool cannot be created or read.
  static util::Result<BundleReceiver> open(const std::string& scratchDir,
                                           const ReceiveLimits& limits, const TrustedKeys& trusted,
                                           const util::Clock& clock);

  BundleReceiver(BundleReceiver&&) noexcept = default;
  BundleReceiver& operator=(BundleReceiver&&) noexcept = default;
  BundleReceiver(const BundleReceiver&) = delete;
  BundleReceiver& operator=(const BundleReceiver&) = delete;

  // Appends the next bytes of the bundle (the bytes at offset()). Returns false once refused:
  // refused() says why, the spool is deleted, and further feeds are ignored. Feeding after
  // finish() is a bug (asserts).
  bool feed(std::string_view chunk);

  // Bytes received and spooled so far: where a resumed transfer continues.
  std::uint64_t offset() const { return offset_; }
  // The bundle's total size, known (and signed) once the head has been verified.
  std::optional<std::uint64_t> expectedSize() const;
  // True when every declared byte has arrived (call finish() then).
  bool complete() const { return phase_ == Phase::kComplete && !refused_; }
  const Refused* refused() const { return refused_ ? &*refused_ : nullptr; }
  // The manifest, once its signature has been verified (e.g. to abort early a fetch of a version
  // that is already installed); nullptr before.
  const ManifestInfo* manifest() const { return manifest_ ? &*manifest_ : nullptr; }
  // Hex SHA-256 of the verified manifest bytes; empty before. Compare with the announced bundle
  // to make sure a resumed spool is the bundle being fetched.
  const std::string& manifestSha256() const { return manifestSha256_; }
  // Bytes this receiver holds in memory (the head buffer); bounded by the manifest cap.
  std::size_t bufferedBytes() const { return head_.capacity(); }
  std::int64_t startedMs() const { return startedMs_; }
  const ReceiveLimits& limits() const { return limits_; }
  const std::string& scratchDir() const { return scratchDir_; }

  // Runs checks (1)-(6) in order (see the file comment) and returns the verified bundle, or the
  // refusal (after which the spool is deleted). `ledger` answers check (4); an unreadable ledger
  // refuses (kLocalError). Call once.
  Checked<VerifiedBundle> finish(const VersionLedger& ledger);

  // After a successful finish(): moves the verified bundle file to `dest` (same file system) and
  // removes the scratch directory. For the nexus, which keeps what it verified.
  util::Status keepBundleFile(const std::string& dest);
  // Deletes the scratch directory and everything in it. The receiver is refused afterwards if it
  // had not finished.
  void discard();

 private:
  enum class Phase { kHeader, kHead, kPayload, kComplete };

  BundleReceiver(std::string scratchDir, const ReceiveLimits& limits, const TrustedKeys& trusted);
  util::Status startSpool(const util::Clock& clock);
  void resetState();
  bool consume(std::string_view data);  // the state machine; false once refused
  bool onHeader();
  bool onHead();
  bool fail(Refusal reason, std::string message);
  Refused finishRefused(Refusal reason, std::string message);
  std::string spoolPath() const { return scratchDir_ + "/bundle.part"; }
  std::string startedPath() const { return scratchDir_ + "/started"; }

  std::string scratchDir_;
  ReceiveLimits limits_;
  const TrustedKeys* trusted_;
  UniqueFd spool_;
  std::int64_t startedMs_ = 0;
  std::uint64_t offset_ = 0;

  Phase phase_ = Phase::kHeader;
  std::string head_;            // header, manifest bytes, signature block
  std::size_t headTarget_ = 0;  // bytes the head will have once complete
  std::uint64_t payloadReceived_ = 0;
  crypto_hash_sha256_state payloadHash_{};
  std::optional<ManifestInfo> manifest_;
  std::string manifestSha256_;
  std::string keyFingerprint_;
  std::optional<Refused> refused_;
  // What is known of the bundle for refusal messages (unverified before the signature check).
  std::string contextName_;
  std::uint64_t contextVersion_ = 0;
  bool finished_ = false;
};

// Streams the file at `path` into `receiver` from receiver.offset() on, in 64 KiB chunks, until
// the end of the file or a refusal. Errors: the file cannot be read (not a refusal).
util::Status feedFile(BundleReceiver& receiver, const std::string& path);

// The nexus's check before it accepts a publish: the same receiver and the same checks a spore
// runs (so the nexus never announces a bundle a spore would refuse, expiry aside), on a whole file.
// `scratchDir` is emptied first. On success, if `keepAs` is not empty the verified copy is moved
// there (bundlePath says where), else it is deleted. The caller records the version in its ledger
// when it accepts the bundle.
Checked<VerifiedBundle> checkBundleFile(const std::string& path, const std::string& keepAs,
                                        const std::string& scratchDir, const ReceiveLimits& limits,
                                        const TrustedKeys& trusted, const VersionLedger& ledger,
                                        const util::Clock& clock);

}  // namespace mesh::bundle
