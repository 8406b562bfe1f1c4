// Release keys: the Ed25519 key pair (libsodium) that signs code bundles. The secret half lives
// offline with whoever cuts releases; the nexus and every spore trust only public halves
// (TrustedKeys, several at once so that a key can be rotated). File formats: docs/bundles.md.
//
// Thread rule: ReleaseKey and ReleasePublicKey are values owned by one thread (signing with a
// const ReleaseKey from several threads is safe). A TrustedKeys that is no longer modified may be
// read from any thread.
// Errors: loading and saving return Result/Status with a line that says what to do.
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mesh/util/result.h"

namespace mesh::bundle {

inline constexpr std::size_t kPublicKeyBytes = 32;
inline constexpr std::size_t kSignatureBytes = 64;

// Calls sodium_init() (idempotent); throws std::runtime_error if libsodium cannot start.
void ensureSodium();

// SHA-256 helpers (libsodium), raw 32-byte digests.
std::string sha256(std::string_view bytes);

class ReleasePublicKey {
 public:
  // `raw` must be exactly 32 bytes.
  static util::Result<ReleasePublicKey> fromBytes(std::string_view raw);
  // Reads a public key file ("hive-mesh release public key v1" + base64 line).
  static util::Result<ReleasePublicKey> load(const std::string& path);
  // The file's text, as load() reads it.
  std::string toText() const;
  // Writes toText() atomically with mode 0644.
  util::Status save(const std::string& path) const;

  std::string_view bytes() const {
    return {reinterpret_cast<const char*>(key_.data()), key_.size()};
  }
  // "3f2a:9c0e:7b1d:4c55": the first 8 bytes of SHA-256(key) in hex, as mesh/crypto shows Curve
  // keys; for display and the audit log.
  std::string fingerprint() const;

  bool operator==(const ReleasePublicKey& other) const { return key_ == other.key_; }

 private:
  std::array<unsigned char, kPublicKeyBytes> key_{};
};

// The secret signing key. Its 64 secret bytes live in sodium_malloc'ed memory (guard pages,
// mlocked, excluded from core dumps where the OS allows) that sodium_free wipes on destruction.
// Movable, not copyable.
class ReleaseKey {
 public:
  static ReleaseKey generate();
  // Reads a secret key file. Refuses a file that is not a regular file, or that the group or
  // others may read or write (the message says to run chmod 600), or whose text is malformed.
  static util::Result<ReleaseKey> load(const std::string& path);
  // Writes the secret to `path` (mode 0600, refuses to overwrite an existing file) and the public
  // key to `path + ".pub"` (0644).
  util::Status save(const std::string& path) const;

  const ReleasePublicKey& publicKey() const { return public_; }
  // A 64-byte detached Ed25519 signature of `message`.
  std::string sign(std::string_view message) const;

 private:
  struct SecretFree {
    void operator()(unsigned char* p) const;
  };
  ReleaseKey();
  std::unique_ptr<unsigned char, SecretFree> secret_;  // crypto_sign_SECRETKEYBYTES (64)
  ReleasePublicKey public_;
};

// The release public keys a node accepts bundles from. Several keys may be trusted at once:
// rotation is "trust old and new, sign with new, then drop old".
class TrustedKeys {
 public:
  void add(const ReleasePublicKey& key);  // adding a key twice keeps one copy
  // Loads a public key file and adds it.
  util::Status addFile(const std::string& path);
  // The trusted key whose raw 32 bytes are `raw`, or nullptr.
  const ReleasePublicKey* find(std::string_view raw) const;
  std::size_t size() const { return keys_.size(); }
  bool empty() const { return keys_.empty(); }

 private:
  std::vector<ReleasePublicKey> keys_;
};

}  // namespace mesh::bundle
