// CurveZMQ key pairs: generation, z85 text form, fingerprints, and key files.
//
// Key file (secret, mode 0600, refused when group- or world-readable):
//   # Hive Mesh Curve key pair. Keep this file secret.
//   public-key = <40 z85 characters>
//   secret-key = <40 z85 characters>
// Public key file (FILE.pub beside it, mode 0644):
//   # Hive Mesh Curve public key
//   public-key = <40 z85 characters>
//
// Thread rule: values; SecretKey wipes its bytes on destruction and is move-only.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "mesh/util/result.h"

namespace mesh::crypto {

class PublicKey {
 public:
  PublicKey() = default;
  static util::Result<PublicKey> fromZ85(std::string_view text);
  static util::Result<PublicKey> fromBytes(std::string_view raw32);
  std::string z85() const;
  std::string_view bytes() const { return {reinterpret_cast<const char*>(bytes_.data()), 32}; }
  // "ab12:cd34:ef56:7890": the first 8 bytes of SHA-256(key), for people to compare and type.
  std::string fingerprint() const;
  bool operator==(const PublicKey& o) const { return bytes_ == o.bytes_; }
  bool operator<(const PublicKey& o) const { return bytes_ < o.bytes_; }

 private:
  std::array<std::uint8_t, 32> bytes_{};
};

class SecretKey {
 public:
  SecretKey() = default;
  ~SecretKey();
  SecretKey(SecretKey&& o) noexcept;
  SecretKey& operator=(SecretKey&& o) noexcept;
  SecretKey(const SecretKey&) = delete;
  SecretKey& operator=(const SecretKey&) = delete;
  static util::Result<SecretKey> fromZ85(std::string_view text);
  // The z85 text, as libzmq's ZMQ_CURVE_SECRETKEY takes it (41 bytes with the NUL).
  const char* z85() const { return z85_.data(); }

 private:
  std::array<char, 41> z85_{};
};

struct KeyPair {
  PublicKey publicKey;
  SecretKey secretKey;
  static KeyPair generate();
};

// Writes FILE (0600) and FILE.pub (0644). Refuses to overwrite an existing FILE.
util::Status saveKeyPair(const std::string& path, const KeyPair& pair);
// Reads a key pair file; refuses a file that group or others can read.
util::Result<KeyPair> loadKeyPair(const std::string& path);
// Accepts a .pub file, a key pair file, or the z85 text itself.
util::Result<PublicKey> loadPublicKey(const std::string& pathOrZ85);

// A fingerprint as people type it: lower-case hex, colons optional, prefix allowed.
std::string normalizeFingerprint(std::string_view text);

}  // namespace mesh::crypto
