#include "mesh/bundle/release_key.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <new>
#include <stdexcept>

#include "mesh/bundle/fs.h"
#include "mesh/util/bytes.h"

namespace mesh::bundle {

using util::err;
using util::Result;
using util::Status;

namespace {

constexpr std::string_view kSecretHeader = "hive-mesh release secret key v1";
constexpr std::string_view kPublicHeader = "hive-mesh release public key v1";
constexpr std::size_t kSeedBytes = crypto_sign_SEEDBYTES;  // 32
constexpr int kB64 = sodium_base64_VARIANT_ORIGINAL;

// Wipes a stack buffer that held secret material when it goes out of scope.
template <std::size_t N>
struct WipedBuffer {
  char bytes[N];
  ~WipedBuffer() { sodium_memzero(bytes, N); }
};

// Splits "HEADER\nBASE64\n" (the final newline optional). Returns false on any other shape.
bool splitKeyText(std::string_view text, std::string_view header, std::string_view* b64) {
  if (text.size() < header.size() + 1 || text.substr(0, header.size()) != header ||
      text[header.size()] != '\n') {
    return false;
  }
  std::string_view rest = text.substr(header.size() + 1);
  if (!rest.empty() && rest.back() == '\n') rest.remove_suffix(1);
  if (rest.empty() || rest.find('\n') != std::string_view::npos) return false;
  *b64 = rest;
  return true;
}

// Decodes exactly `n` bytes of padded standard base64 into `out`.
bool decodeBase64Exact(std::string_view b64, unsigned char* out, std::size_t n) {
  std::size_t len = 0;
  const char* end = nullptr;
  if (sodium_base642bin(out, n, b64.data(), b64.size(), nullptr, &len, &end, kB64) != 0) {
    return false;
  }
  return len == n && end == b64.data() + b64.size();
}

}  // namespace

void ensureSodium() {
  if (sodium_init() < 0) throw std::runtime_error("libsodium failed to initialise");
}

std::string sha256(std::string_view bytes) {
  ensureSodium();
  std::string out(crypto_hash_sha256_BYTES, '\0');
  crypto_hash_sha256(reinterpret_cast<unsigned char*>(out.data()),
                     reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  return out;
}

// ---- ReleasePublicKey ----------------------------------------------------------------------

Result<ReleasePublicKey> ReleasePublicKey::fromBytes(std::string_view raw) {
  if (raw.size() != kPublicKeyBytes) {
    return err("a release public key is 32 bytes, got " + std::to_string(raw.size()));
  }
  ReleasePublicKey key;
  std::copy(raw.begin(), raw.end(), key.key_.begin());
  return key;
}

Result<ReleasePublicKey> ReleasePublicKey::load(const std::string& path) {
  auto text = util::readFile(path, 4096);
  if (!text) return text.error();
  std::string_view b64;
  ReleasePublicKey key;
  if (!splitKeyText(*text, kPublicHeader, &b64) ||
      !decodeBase64Exact(b64, key.key_.data(), key.key_.size())) {
    return err(path + " is not a release public key file (expected the line '" +
               std::string(kPublicHeader) + "' then 32 bytes in base64): check --trust");
  }
  return key;
}

std::string ReleasePublicKey::toText() const {
  return std::string(kPublicHeader) + "\n" + util::toBase64(bytes()) + "\n";
}

Status ReleasePublicKey::save(const std::string& path) const {
  return util::writeFileAtomic(path, toText(), 0644);
}

std::string ReleasePublicKey::fingerprint() const {
  std::string hex = util::toHex(sha256(bytes()).substr(0, 8));
  std::string out;
  for (std::size_t i = 0; i < hex.size(); i += 4) {
    if (i > 0) out.push_back(':');
    out.append(hex, i, 4);
  }
  return out;
}

// ---- ReleaseKey ----------------------------------------------------------------------------

void ReleaseKey::SecretFree::operator()(unsigned char* p) const { sodium_free(p); }

ReleaseKey::ReleaseKey() {
  ensureSodium();
  auto* p = static_cast<unsigned char*>(sodium_malloc(crypto_sign_SECRETKEYBYTES));
  if (p == nullptr) throw std::bad_alloc();
  secret_.reset(p);
}

ReleaseKey ReleaseKey::generate() {
  ReleaseKey key;
  std::array<unsigned char, kPublicKeyBytes> pk{};
  crypto_sign_keypair(pk.data(), key.secret_.get());
  key.public_ =
      ReleasePublicKey::fromBytes({reinterpret_cast<const char*>(pk.data()), pk.size()}).value();
  return key;
}

Result<ReleaseKey> ReleaseKey::load(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return err("cannot open release key " + path + ": " + errnoText(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return err("cannot inspect " + path + ": " + errnoText(errno));
  if (!S_ISREG(st.st_mode)) return err(path + " is not a regular file: give the release key file");
  // What the file is first (a public key given by mistake is the usual error), then its mode.
  WipedBuffer<512> buf;
  auto got = preadAll(fd.get(), buf.bytes, sizeof buf.bytes, 0, path);
  if (!got) return got.error();
  if (*got == sizeof buf.bytes) return err(path + " is too large to be a release key file");
  std::string_view b64;
  WipedBuffer<kSeedBytes> seed;
  auto* seedBytes = reinterpret_cast<unsigned char*>(seed.bytes);
  if (!splitKeyText({buf.bytes, *got}, kSecretHeader, &b64) ||
      !decodeBase64Exact(b64, seedBytes, kSeedBytes)) {
    return err(path + " is not a release secret key file (expected the line '" +
               std::string(kSecretHeader) + "' then 32 bytes in base64; the .pub file is the public half)");
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return err("release key " + path + " has mode " + mode +
               ": the group or others can access it; run chmod 600 " + path);
  }
  ReleaseKey key;
  std::array<unsigned char, kPublicKeyBytes> pk{};
  crypto_sign_seed_keypair(pk.data(), key.secret_.get(), seedBytes);
  key.public_ =
      ReleasePublicKey::fromBytes({reinterpret_cast<const char*>(pk.data()), pk.size()}).value();
  return key;
}

Status ReleaseKey::save(const std::string& path) const {
  WipedBuffer<256> text;
  std::size_t n = kSecretHeader.size();
  std::copy(kSecretHeader.begin(), kSecretHeader.end(), text.bytes);
  text.bytes[n++] = '\n';
  // The seed is the first 32 bytes of libsodium's 64-byte secret key.
  sodium_bin2base64(text.bytes + n, sizeof text.bytes - n - 1, secret_.get(), kSeedBytes, kB64);
  n += sodium_base64_ENCODED_LEN(kSeedBytes, kB64) - 1;  // without the NUL
  text.bytes[n++] = '\n';

  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    if (errno == EEXIST) {
      return err(path +
                 " already exists: refusing to overwrite a release key; choose another file");
    }
    return err("cannot create " + path + ": " + errnoText(errno));
  }
  if (::fchmod(fd.get(), 0600) != 0) return err("cannot chmod " + path + ": " + errnoText(errno));
  if (auto s = writeAll(fd.get(), {text.bytes, n}, path); !s) return s;
  if (auto s = fsyncFd(fd.get(), path); !s) return s;
  return public_.save(path + ".pub");
}

std::string ReleaseKey::sign(std::string_view message) const {
  std::string sig(kSignatureBytes, '\0');
  crypto_sign_detached(reinterpret_cast<unsigned char*>(sig.data()), nullptr,
                       reinterpret_cast<const unsigned char*>(message.data()), message.size(),
                       secret_.get());
  return sig;
}

// ---- TrustedKeys ---------------------------------------------------------------------------

void TrustedKeys::add(const ReleasePublicKey& key) {
  if (find(key.bytes()) == nullptr) keys_.push_back(key);
}

Status TrustedKeys::addFile(const std::string& path) {
  auto key = ReleasePublicKey::load(path);
  if (!key) return key.error();
  add(*key);
  return {};
}

const ReleasePublicKey* TrustedKeys::find(std::string_view raw) const {
  for (const auto& key : keys_) {
    if (key.bytes() == raw) return &key;
  }
  return nullptr;
}

}  // namespace mesh::bundle
