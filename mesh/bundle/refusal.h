// Refusals: why a bundle was not accepted, as a named reason (for tests, the audit log and
// `mesh bundles`) plus one line of text that says what was wrong. Checked<T> is the bundle
// module's Result<T>: a value, or a Refused that carries its reason.
// Thread rule: plain values, no shared state.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace mesh::bundle {

// The verification checks run in the order of the groups below (docs/bundles.md).
enum class Refusal {
  // The container itself (found while streaming).
  kGarbage,            // not a bundle: wrong magic or unknown format version
  kMalformedManifest,  // the manifest does not decode or breaks a rule (name, hash length, ...)
  kTruncated,          // the stream ended before the end the manifest declares
  // (1) Size caps, enforced while streaming.
  kManifestTooLarge,    // the header declares a manifest above the cap
  kPayloadTooLarge,     // the manifest declares a payload above the cap
  kLongerThanDeclared,  // more bytes arrived than the manifest declares
  // (2) Signature over the exact manifest bytes.
  kUntrustedKey,  // signed by a key this node does not trust
  kBadSignature,  // the signature does not match the manifest bytes
  // (3) Payload.
  kPayloadMismatch,  // the payload's SHA-256 differs from the manifest's
  // (4) Rollback and replay.
  kOlderVersion,     // version below the highest ever seen for the name
  kReplayedVersion,  // version equal to the highest ever seen for the name
  kBadVersion,       // a version that a rollback marked bad
  // (5) Freeze.
  kExpired,  // expired when the update started
  // (6) Archive.
  kUnsafePath,        // absolute, `..`, `.`, empty component, NUL, control byte, too long
  kDuplicatePath,     // the same path twice
  kUnsupportedEntry,  // not a regular file or directory (a link, device, FIFO, ...)
  kBadMode,           // a mode other than 0644/0755 for files, 0755 for directories
  kTooManyFiles,      // more entries than the cap
  kUnpackedTooLarge,  // file contents add up to more than the cap
  kMalformedArchive,  // bad magic, truncated entry, parent not declared first, trailing bytes
  kMissingHandler,    // a handler the manifest names is not a top-level 0755 file
  // Local conditions (install time, or this node's own state), not proven attacks.
  kHandlerClash,  // another installed bundle already provides a handler of that name
  kLocalError,    // scratch, state or install I/O failed (disk full, permissions, ...)
};

// Stable kebab-case name ("untrusted-key"), used in the audit log, JSON output and tests.
const char* refusalName(Refusal reason);

struct Refused {
  Refusal reason = Refusal::kLocalError;
  std::string message;  // one line; untrusted text in it is escaped
  // What was known about the bundle when it was refused; empty/0 when not known yet. Before the
  // signature is verified these come from an unverified manifest: shown, never trusted.
  std::string name;
  std::uint64_t version = 0;
  std::string keyFingerprint;  // the signer's key, when the signature block was read

  // "untrusted-key: signed by key 1a2b... which is not trusted"
  std::string describe() const;
};

inline Refused refuse(Refusal reason, std::string message) {
  Refused r;
  r.reason = reason;
  r.message = std::move(message);
  return r;
}

template <typename T>
class [[nodiscard]] Checked {
 public:
  Checked(T value) : value_(std::move(value)) {}              // NOLINT: implicit on purpose
  Checked(Refused refused) : refused_(std::move(refused)) {}  // NOLINT

  bool ok() const { return value_.has_value(); }
  explicit operator bool() const { return ok(); }

  // Precondition: ok(). Calling these on a refusal is a bug and throws std::logic_error.
  T& value() & {
    check();
    return *value_;
  }
  const T& value() const& {
    check();
    return *value_;
  }
  T&& value() && {
    check();
    return std::move(*value_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }

  // Precondition: !ok().
  const Refused& refused() const {
    if (ok()) throw std::logic_error("Checked::refused() on a value");
    return refused_;
  }

 private:
  void check() const {
    if (!ok()) throw std::logic_error("Checked::value() on a refusal: " + refused_.describe());
  }
  std::optional<T> value_;
  Refused refused_;
};

}  // namespace mesh::bundle
