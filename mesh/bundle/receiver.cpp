#include "mesh/bundle/receiver.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <map>

#include "mesh/bundle/archive.h"
#include "mesh/util/bytes.h"
#include "mesh/util/log.h"

namespace mesh::bundle {

using util::err;
using util::Result;
using util::Status;

namespace {

constexpr std::size_t kChunk = 64 * 1024;

std::uint32_t getU32(const std::string& s, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(s[at + i]);
  return v;
}

std::string isoTime(std::int64_t ms) {
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  char buf[32];
  if (gmtime_r(&secs, &tm) == nullptr ||
      std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
    return std::to_string(ms) + " ms";
  }
  return buf;
}

bool parseI64(const std::string& text, std::int64_t* out) {
  std::string t = text;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  if (t.empty() || t.size() > 18) return false;
  std::int64_t v = 0;
  for (char c : t) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

}  // namespace

BundleReceiver::BundleReceiver(std::string scratchDir, const ReceiveLimits& limits,
                               const TrustedKeys& trusted)
    : scratchDir_(std::move(scratchDir)), limits_(limits), trusted_(&trusted) {
  resetState();
}

Result<BundleReceiver> BundleReceiver::open(const std::string& scratchDir,
                                            const ReceiveLimits& limits, const TrustedKeys& trusted,
                                            const util::Clock& clock) {
  ensureSodium();
  BundleReceiver receiver(scratchDir, limits, trusted);
  if (auto s = receiver.startSpool(clock); !s) return s.error();
  return receiver;
}

void BundleReceiver::resetState() {
  phase_ = Phase::kHeader;
  head_.clear();
  head_.shrink_to_fit();
  headTarget_ = kBundleHeaderBytes;
  payloadReceived_ = 0;
  crypto_hash_sha256_init(&payloadHash_);
  manifest_.reset();
  manifestSha256_.clear();
  keyFingerprint_.clear();
  refused_.reset();
  contextName_.clear();
  contextVersion_ = 0;
  offset_ = 0;
}

Status BundleReceiver::startSpool(const util::Clock& clock) {
  if (auto s = makeDirs(scratchDir_, 0700); !s) return s;
  spool_.reset(::open(spoolPath().c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!spool_.valid()) return err("cannot open the spool " + spoolPath() + ": " + errnoText(errno));
  struct stat st {};
  if (::fstat(spool_.get(), &st) != 0)
    return err("cannot inspect " + spoolPath() + ": " + errnoText(errno));
  auto spooled = static_cast<std::uint64_t>(st.st_size);

  // The update started when the first byte was asked for; a resume keeps that time. A missing or
  // unreadable record means "now", which is only ever stricter for the expiry check.
  startedMs_ = clock.wallMs();
  bool haveStarted = false;
  if (spooled > 0) {
    auto text = util::readFile(startedPath(), 64);
    haveStarted = text.ok() && parseI64(*text, &startedMs_);
  }
  if (!haveStarted) {
    startedMs_ = clock.wallMs();
    if (auto s = util::writeFileAtomic(startedPath(), std::to_string(startedMs_) + "\n", 0600);
        !s) {
      return s;
    }
  }
  if (spooled == 0) return {};

  // Replay the spool through the same state machine (no writes), then continue after it.
  std::string buf(kChunk, '\0');
  for (std::uint64_t off = 0; off < spooled;) {
    auto got = preadAll(spool_.get(), buf.data(), buf.size(), off, spoolPath());
    if (!got) return got.error();
    if (*got == 0) break;
    if (!consume({buf.data(), *got})) {
      MESH_WARN("bundle spool %s refused on resume (%s): starting the receive again",
                spoolPath().c_str(), refused_->describe().c_str());
      resetState();
      if (::ftruncate(spool_.get(), 0) != 0) {
        return err("cannot truncate " + spoolPath() + ": " + errnoText(errno));
      }
      startedMs_ = clock.wallMs();
      return util::writeFileAtomic(startedPath(), std::to_string(startedMs_) + "\n", 0600);
    }
    off += *got;
    offset_ = off;
  }
  MESH_INFO("resuming bundle receive in %s at byte %llu", scratchDir_.c_str(),
            static_cast<unsigned long long>(offset_));
  return {};
}

std::optional<std::uint64_t> BundleReceiver::expectedSize() const {
  if (!manifest_) return std::nullopt;
  return head_.size() + manifest_->payloadSize;
}

bool BundleReceiver::fail(Refusal reason, std::string message) {
  Refused r = refuse(reason, std::move(message));
  r.name = contextName_;
  r.version = contextVersion_;
  r.keyFingerprint = keyFingerprint_;
  refused_ = std::move(r);
  return false;
}

bool BundleReceiver::feed(std::string_view chunk) {
  MESH_ASSERT(!finished_, "no feed() after finish()");
  if (refused_) return false;
  if (!spool_.valid()) return fail(Refusal::kLocalError, "the receive was discarded");
  if (!consume(chunk)) {
    discard();
    return false;
  }
  if (auto s = writeAll(spool_.get(), chunk, spoolPath()); !s) {
    fail(Refusal::kLocalError, s.error().message);
    discard();
    return false;
  }
  offset_ += chunk.size();
  return true;
}

bool BundleReceiver::consume(std::string_view data) {
  while (!data.empty()) {
    switch (phase_) {
      case Phase::kHeader:
      case Phase::kHead: {
        std::size_t take = std::min(headTarget_ - head_.size(), data.size());
        head_.append(data.substr(0, take));
        data.remove_prefix(take);
        if (head_.size() < headTarget_) break;
        if (phase_ == Phase::kHeader ? !onHeader() : !onHead()) return false;
        break;
      }
      case Phase::kPayload: {
        std::uint64_t remaining = manifest_->payloadSize - payloadReceived_;
        if (data.size() > remaining) {
          return fail(Refusal::kLongerThanDeclared,
                      "more bytes arrived than the manifest declares (a payload of " +
                          std::to_string(manifest_->payloadSize) + " bytes)");
        }
        crypto_hash_sha256_update(&payloadHash_,
                                  reinterpret_cast<const unsigned char*>(data.data()), data.size());
        payloadReceived_ += data.size();
        data = {};
        if (payloadReceived_ == manifest_->payloadSize) phase_ = Phase::kComplete;
        break;
      }
      case Phase::kComplete:
        return fail(Refusal::kLongerThanDeclared,
                    "bytes arrived after the end the manifest declares (a payload of " +
                        std::to_string(manifest_->payloadSize) + " bytes)");
    }
  }
  return true;
}

bool BundleReceiver::onHeader() {
  if (std::string_view(head_).substr(0, 8) != kBundleMagic) {
    return fail(Refusal::kGarbage, "not a Hive Mesh bundle (bad magic)");
  }
  std::uint32_t format = getU32(head_, 8);
  if (format != kBundleFormatVersion) {
    return fail(Refusal::kGarbage, "bundle format version " + std::to_string(format) +
                                       " is not supported (this node reads version 1)");
  }
  std::uint32_t manifestLen = getU32(head_, 12);
  // (1) size cap on the declared manifest, before reading it.
  if (manifestLen > limits_.maxManifestBytes) {
    return fail(Refusal::kManifestTooLarge,
                "the header declares a manifest of " + std::to_string(manifestLen) +
                    " bytes, above the cap of " + std::to_string(limits_.maxManifestBytes));
  }
  if (manifestLen == 0 || manifestLen % 8 != 0) {
    return fail(Refusal::kMalformedManifest, "manifest length " + std::to_string(manifestLen) +
                                                 " is not a positive multiple of 8");
  }
  headTarget_ = kBundleHeaderBytes + manifestLen + kSignatureBlockBytes;
  head_.reserve(headTarget_);
  phase_ = Phase::kHead;
  return true;
}

bool BundleReceiver::onHead() {
  const std::size_t manifestLen = headTarget_ - kBundleHeaderBytes - kSignatureBlockBytes;
  std::string_view manifestBytes = std::string_view(head_).substr(kBundleHeaderBytes, manifestLen);
  std::string_view signer =
      std::string_view(head_).substr(kBundleHeaderBytes + manifestLen, kPublicKeyBytes);
  std::string_view signature =
      std::string_view(head_).substr(kBundleHeaderBytes + manifestLen + kPublicKeyBytes);
  keyFingerprint_ = ReleasePublicKey::fromBytes(signer)->fingerprint();

  auto m = decodeManifest(manifestBytes);
  if (!m) return fail(Refusal::kMalformedManifest, m.error().message);
  contextName_ = m->name;
  contextVersion_ = m->version;
  // (1) size cap on the declared payload, before receiving it.
  if (m->payloadSize > limits_.maxPayloadBytes) {
    return fail(Refusal::kPayloadTooLarge,
                "the manifest declares a payload of " + std::to_string(m->payloadSize) +
                    " bytes, above the cap of " + std::to_string(limits_.maxPayloadBytes));
  }
  // (2) the signature over the exact bytes received, by a trusted key.
  const ReleasePublicKey* key = trusted_->find(signer);
  if (key == nullptr) {
    return fail(Refusal::kUntrustedKey, "signed by release key " + keyFingerprint_ +
                                            ", which this node does not trust (see --trust)");
  }
  if (!verifyManifestSignature(manifestBytes, signature, *key)) {
    return fail(Refusal::kBadSignature, "the signature by release key " + keyFingerprint_ +
                                            " does not match the manifest (tampered?)");
  }
  manifestSha256_ = util::toHex(sha256(manifestBytes));
  manifest_ = std::move(*m);
  phase_ = manifest_->payloadSize == 0 ? Phase::kComplete : Phase::kPayload;
  return true;
}

Refused BundleReceiver::finishRefused(Refusal reason, std::string message) {
  fail(reason, std::move(message));
  discard();
  return *refused_;
}

Checked<VerifiedBundle> BundleReceiver::finish(const VersionLedger& ledger) {
  MESH_ASSERT(!finished_, "finish() is called once");
  finished_ = true;
  if (refused_) return *refused_;

  // (1) Size caps were enforced while streaming; the stream must also be complete.
  if (phase_ != Phase::kComplete) {
    if (!manifest_) {
      return finishRefused(Refusal::kTruncated, "the bundle ended inside its head, after " +
                                                    std::to_string(offset_) + " bytes");
    }
    return finishRefused(Refusal::kTruncated, "the bundle ended after " + std::to_string(offset_) +
                                                  " of " + std::to_string(*expectedSize()) +
                                                  " bytes");
  }
  // (2) The signature was verified when the head arrived: a complete stream implies it.
  MESH_ASSERT(manifest_.has_value(), "a complete stream has a verified manifest");
  const ManifestInfo& m = *manifest_;

  // (3) Payload length (exact: enforced while streaming) and SHA-256.
  std::string digest(crypto_hash_sha256_BYTES, '\0');
  crypto_hash_sha256_final(&payloadHash_, reinterpret_cast<unsigned char*>(digest.data()));
  if (payloadReceived_ != m.payloadSize || digest != m.payloadSha256) {
    return finishRefused(Refusal::kPayloadMismatch,
                         "the payload's SHA-256 " + util::toHex(digest).substr(0, 16) +
                             "... differs from the manifest's " +
                             util::toHex(m.payloadSha256).substr(0, 16) + "... (tampered?)");
  }

  // (4) Version above the highest ever seen for the name.
  auto seen = ledger.seen(m.name);
  if (!seen) {
    return finishRefused(Refusal::kLocalError, "cannot read the highest version seen for " +
                                                   m.name + ", refusing: " + seen.error().message);
  }
  if (auto r = checkVersion(m, manifestSha256_, *seen)) return finishRefused(r->reason, r->message);

  // (5) Not expired when this update started.
  if (startedMs_ >= m.expiresMs) {
    return finishRefused(Refusal::kExpired, m.name + " version " + std::to_string(m.version) +
                                                " expired at " + isoTime(m.expiresMs) +
                                                ", before this update started at " +
                                                isoTime(startedMs_));
  }

  // (6) Every archive rule, reading the spooled payload back with bounded memory.
  ArchiveReader reader(spool_.get(), head_.size(), m.payloadSize,
                       ArchiveLimits{limits_.maxFiles, limits_.maxUnpackedBytes});
  std::map<std::string, std::uint32_t> topLevelFiles;
  for (;;) {
    auto entry = reader.next();
    if (!entry) return finishRefused(entry.refused().reason, entry.refused().message);
    if (!entry->has_value()) break;
    const ArchiveEntry& e = **entry;
    if (e.type == EntryType::kFile && e.path.find('/') == std::string::npos) {
      topLevelFiles[e.path] = e.mode;
    }
  }
  for (const std::string& h : m.handlers) {
    auto it = topLevelFiles.find(h);
    if (it == topLevelFiles.end() || it->second != 0755) {
      return finishRefused(
          Refusal::kMissingHandler,
          "handler " + h + " is not an executable (0755) file at the top of the payload");
    }
  }

  VerifiedBundle v;
  v.manifest = m;
  v.head = head_;
  v.manifestSha256 = manifestSha256_;
  v.keyFingerprint = keyFingerprint_;
  v.bundlePath = spoolPath();
  v.payloadOffset = head_.size();
  v.entries = reader.entries();
  v.unpackedBytes = reader.unpackedBytes();
  v.startedMs = startedMs_;
  return v;
}

Status BundleReceiver::keepBundleFile(const std::string& dest) {
  MESH_ASSERT(finished_ && !refused_, "keepBundleFile() follows a successful finish()");
  if (auto s = fsyncFd(spool_.get(), spoolPath()); !s) return s;
  if (::rename(spoolPath().c_str(), dest.c_str()) != 0) {
    return err("cannot move the verified bundle to " + dest + ": " + errnoText(errno));
  }
  std::size_t slash = dest.rfind('/');
  if (auto s =
          fsyncDir(slash == std::string::npos ? "." : (slash == 0 ? "/" : dest.substr(0, slash)));
      !s) {
    return s;
  }
  discard();
  return {};
}

void BundleReceiver::discard() {
  spool_.reset();
  if (auto s = removeTree(scratchDir_); !s) {
    MESH_WARN("cannot remove the bundle scratch directory: %s", s.error().message.c_str());
  }
  if (!finished_ && !refused_) fail(Refusal::kLocalError, "the receive was discarded");
}

// ---- helpers -------------------------------------------------------------------------------

Status feedFile(BundleReceiver& receiver, const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return err("cannot open " + path + ": " + errnoText(errno));
  std::string buf(kChunk, '\0');
  for (std::uint64_t off = receiver.offset();;) {
    auto got = preadAll(fd.get(), buf.data(), buf.size(), off, path);
    if (!got) return got.error();
    if (*got == 0) return {};
    if (!receiver.feed({buf.data(), *got})) return {};
    off += *got;
  }
}

Checked<VerifiedBundle> checkBundleFile(const std::string& path, const std::string& keepAs,
                                        const std::string& scratchDir, const ReceiveLimits& limits,
                                        const TrustedKeys& trusted, const VersionLedger& ledger,
                                        const util::Clock& clock) {
  if (auto s = removeTree(scratchDir); !s) return refuse(Refusal::kLocalError, s.error().message);
  auto receiver = BundleReceiver::open(scratchDir, limits, trusted, clock);
  if (!receiver) return refuse(Refusal::kLocalError, receiver.error().message);
  if (auto s = feedFile(*receiver, path); !s) {
    receiver->discard();
    return refuse(Refusal::kLocalError, s.error().message);
  }
  auto verified = receiver->finish(ledger);
  if (!verified) return verified;
  if (keepAs.empty()) {
    receiver->discard();
    verified->bundlePath.clear();
    return verified;
  }
  if (auto s = receiver->keepBundleFile(keepAs); !s) {
    receiver->discard();
    return refuse(Refusal::kLocalError, s.error().message);
  }
  verified->bundlePath = keepAs;
  return verified;
}

}  // namespace mesh::bundle
