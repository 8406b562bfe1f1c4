#include "mesh/crypto/keys.h"

#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <cstring>

#include "mesh/util/bytes.h"

namespace mesh::crypto {

util::Result<PublicKey> PublicKey::fromZ85(std::string_view text) {
  if (text.size() != 40) return util::err("a public key is 40 z85 characters, got " + std::to_string(text.size()));
  char buf[41];
  std::memcpy(buf, text.data(), 40);
  buf[40] = 0;
  PublicKey k;
  if (zmq_z85_decode(k.bytes_.data(), buf) == nullptr) return util::err("not a z85 public key: " + std::string(text));
  return k;
}

util::Result<PublicKey> PublicKey::fromBytes(std::string_view raw32) {
  if (raw32.size() != 32) return util::err("a public key is 32 bytes");
  PublicKey k;
  std::memcpy(k.bytes_.data(), raw32.data(), 32);
  return k;
}

std::string PublicKey::z85() const {
  char buf[41];
  zmq_z85_encode(buf, bytes_.data(), 32);
  return std::string(buf, 40);
}

std::string PublicKey::fingerprint() const {
  unsigned char digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(digest, bytes_.data(), bytes_.size());
  std::string hex = util::toHex(std::string_view(reinterpret_cast<char*>(digest), 8));
  return hex.substr(0, 4) + ":" + hex.substr(4, 4) + ":" + hex.substr(8, 4) + ":" + hex.substr(12, 4);
}

SecretKey::~SecretKey() { sodium_memzero(z85_.data(), z85_.size()); }
SecretKey::SecretKey(SecretKey&& o) noexcept : z85_(o.z85_) { sodium_memzero(o.z85_.data(), o.z85_.size()); }
SecretKey& SecretKey::operator=(SecretKey&& o) noexcept {
  if (this != &o) {
    z85_ = o.z85_;
    sodium_memzero(o.z85_.data(), o.z85_.size());
  }
  return *this;
}

util::Result<SecretKey> SecretKey::fromZ85(std::string_view text) {
  if (text.size() != 40) return util::err("a secret key is 40 z85 characters");
  SecretKey k;
  std::memcpy(k.z85_.data(), text.data(), 40);
  k.z85_[40] = 0;
  unsigned char raw[32];
  bool good = zmq_z85_decode(raw, k.z85_.data()) != nullptr;
  sodium_memzero(raw, sizeof raw);
  if (!good) return util::err("not a z85 secret key");
  return k;
}

KeyPair KeyPair::generate() {
  char pub[41], sec[41];
  if (zmq_curve_keypair(pub, sec) != 0) throw std::runtime_error("zmq_curve_keypair failed: libzmq built without CURVE");
  KeyPair pair{*PublicKey::fromZ85(std::string_view(pub, 40)),
               std::move(SecretKey::fromZ85(std::string_view(sec, 40))).value()};
  sodium_memzero(sec, sizeof sec);
  return pair;
}

namespace {
// Finds "name = value" in a key file's text.
std::string field(const std::string& text, const std::string& name) {
  for (const auto& line : util::splitList(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    auto trim = [](std::string s) {
      size_t a = s.find_first_not_of(" \t\r"), b = s.find_last_not_of(" \t\r");
      return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
    };
    if (trim(line.substr(0, eq)) == name) return trim(line.substr(eq + 1));
  }
  return {};
}
}  // namespace

util::Status saveKeyPair(const std::string& path, const KeyPair& pair) {
  if (access(path.c_str(), F_OK) == 0) return util::err(path + " exists already: remove it first or choose another path");
  std::string secret = "# Hive Mesh Curve key pair. Keep this file secret.\npublic-key = " +
                       pair.publicKey.z85() + "\nsecret-key = " + pair.secretKey.z85() + "\n";
  util::Status s = util::writeFileAtomic(path, secret, 0600);
  sodium_memzero(secret.data(), secret.size());
  if (!s) return s;
  return util::writeFileAtomic(path + ".pub",
                               "# Hive Mesh Curve public key\npublic-key = " + pair.publicKey.z85() + "\n", 0644);
}

util::Result<KeyPair> loadKeyPair(const std::string& path) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) return util::err("cannot read key file " + path + ": " + std::strerror(errno));
  // What the file is first (a .pub file given by mistake is the usual error), then its mode.
  auto text = util::readFile(path, 4096);
  if (!text) return text.error();
  auto pub = PublicKey::fromZ85(field(*text, "public-key"));
  auto sec = SecretKey::fromZ85(field(*text, "secret-key"));
  const bool publicOnly = field(*text, "secret-key").empty();
  sodium_memzero(text->data(), text->size());
  if (!pub) return util::err("key file " + path + ": " + pub.error().message);
  if (!sec) {
    return util::err("key file " + path + " has no valid secret-key line" +
                     (publicOnly ? ": it is a public key; give the key pair file (without .pub)" : ""));
  }
  if (st.st_mode & 077) {
    return util::err("key file " + path + " can be read by other users: run chmod 600 " + path);
  }
  // The public key must belong to the secret key, or the handshake fails in confusing ways.
  char derived[41];
  if (zmq_curve_public(derived, sec->z85()) != 0 || pub->z85() != std::string(derived, 40)) {
    return util::err("key file " + path + ": public-key does not match secret-key");
  }
  return KeyPair{*pub, std::move(*sec)};
}

util::Result<PublicKey> loadPublicKey(const std::string& pathOrZ85) {
  if (pathOrZ85.size() == 40 && access(pathOrZ85.c_str(), F_OK) != 0) return PublicKey::fromZ85(pathOrZ85);
  auto text = util::readFile(pathOrZ85, 4096);
  if (!text) return text.error();
  std::string z = field(*text, "public-key");
  if (z.empty()) return util::err(pathOrZ85 + " has no public-key line");
  return PublicKey::fromZ85(z);
}

std::string normalizeFingerprint(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == ':' || c == ' ') continue;
    out.push_back(static_cast<char>(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c));
  }
  return out;
}

}  // namespace mesh::crypto
