#include "mesh/bundle/sign.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "mesh/bundle/archive.h"
#include "mesh/bundle/fs.h"

namespace mesh::bundle {

using util::err;
using util::Result;
using util::Status;

namespace {

// Unlinks a temporary file when the scope ends (unless released).
class TempFileGuard {
 public:
  explicit TempFileGuard(std::string path) : path_(std::move(path)) {}
  ~TempFileGuard() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  void release() { path_.clear(); }
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;

 private:
  std::string path_;
};

std::string parentDir(const std::string& path) {
  std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

Result<SignedBundle> signBundle(const std::string& dir, const SignOptions& options,
                                const ReleaseKey& key, const std::string& outPath) {
  ensureSodium();
  if (!isValidBundleName(options.name)) {
    return err("bundle name '" + printable(options.name) +
               "' breaks the rule [a-z0-9][a-z0-9._-]{0,63}: choose another --name");
  }
  if (options.version == 0) return err("--version must be 1 or more");
  if (options.expiresMs <= options.createdMs)
    return err("--expires must be after the creation time");

  // 1. Archive the tree into a temporary file, hashing as it goes.
  const std::string payloadPath = outPath + ".payload.tmp";
  ::unlink(payloadPath.c_str());
  UniqueFd payload(::open(payloadPath.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!payload.valid()) return err("cannot create " + payloadPath + ": " + errnoText(errno));
  TempFileGuard payloadGuard(payloadPath);
  crypto_hash_sha256_state hash;
  crypto_hash_sha256_init(&hash);
  std::uint64_t payloadSize = 0;
  ArchiveWriter writer([&](std::string_view bytes) -> Status {
    crypto_hash_sha256_update(&hash, reinterpret_cast<const unsigned char*>(bytes.data()),
                              bytes.size());
    payloadSize += bytes.size();
    return writeAll(payload.get(), bytes, payloadPath);
  });
  auto tree = archiveDirectory(dir, writer);
  if (!tree) return tree.error();

  // 2. The manifest.
  ManifestInfo m;
  m.name = options.name;
  m.version = options.version;
  m.createdMs = options.createdMs;
  m.expiresMs = options.expiresMs;
  m.payloadSize = payloadSize;
  m.payloadSha256.resize(crypto_hash_sha256_BYTES);
  crypto_hash_sha256_final(&hash, reinterpret_cast<unsigned char*>(m.payloadSha256.data()));
  m.handlers = options.handlers.empty() ? tree->topLevelExecutables : options.handlers;
  std::sort(m.handlers.begin(), m.handlers.end());
  if (m.handlers.size() > kMaxHandlers) return err("a bundle has at most 256 handlers");
  // A bundle without handlers would, once published, take its name's handlers away from every
  // spore, with no failure for a trial to catch.
  if (m.handlers.empty()) {
    return err(dir + " has no executable file at its top, so the bundle would provide no handler: chmod +x the "
               "handler programs (or name them with --bundle-handlers)");
  }
  for (std::size_t i = 0; i < m.handlers.size(); ++i) {
    const std::string& h = m.handlers[i];
    if (!isValidHandlerName(h)) {
      return err("handler '" + printable(h) + "' breaks the rule [a-z0-9][a-z0-9._-]{0,63}: " +
                 "rename the file, or name the handlers explicitly");
    }
    if (i > 0 && m.handlers[i - 1] == h) return err("handler " + h + " is listed twice");
    const auto& execs = tree->topLevelExecutables;
    if (std::find(execs.begin(), execs.end(), h) == execs.end()) {
      struct stat st {};
      if (::lstat((dir + "/" + h).c_str(), &st) != 0) return err("handler " + h + ": there is no file " + dir + "/" + h);
      if (!S_ISREG(st.st_mode)) return err("handler " + h + ": " + dir + "/" + h + " is not a regular file");
      return err("handler " + h + " is not an executable file at the top of " + dir +
                 ": run chmod +x " + dir + "/" + h);
    }
  }
  std::string manifestBytes = encodeManifest(m);
  std::string head =
      encodeBundleHead(manifestBytes, key.publicKey(), signManifest(manifestBytes, key));

  // 3. head + payload -> outPath, atomically.
  const std::string tmpPath = outPath + ".tmp";
  ::unlink(tmpPath.c_str());
  UniqueFd out(::open(tmpPath.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!out.valid()) return err("cannot create " + tmpPath + ": " + errnoText(errno));
  TempFileGuard outGuard(tmpPath);
  if (auto s = writeAll(out.get(), head, tmpPath); !s) return s.error();
  std::string buf(64 * 1024, '\0');
  for (std::uint64_t off = 0; off < payloadSize;) {
    auto got = preadAll(payload.get(), buf.data(), buf.size(), off, payloadPath);
    if (!got) return got.error();
    if (*got == 0) return err(payloadPath + " shrank while the bundle was written");
    if (auto s = writeAll(out.get(), {buf.data(), *got}, tmpPath); !s) return s.error();
    off += *got;
  }
  if (auto s = fsyncFd(out.get(), tmpPath); !s) return s.error();
  out.reset();
  if (::rename(tmpPath.c_str(), outPath.c_str()) != 0) {
    return err("cannot rename " + tmpPath + " to " + outPath + ": " + errnoText(errno));
  }
  outGuard.release();
  if (auto s = fsyncDir(parentDir(outPath)); !s) return s.error();

  SignedBundle signedBundle;
  signedBundle.manifest = std::move(m);
  signedBundle.keyFingerprint = key.publicKey().fingerprint();
  signedBundle.bundleBytes = head.size() + payloadSize;
  signedBundle.entries = tree->entries;
  return signedBundle;
}

}  // namespace mesh::bundle
