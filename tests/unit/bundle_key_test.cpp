// Release keys: generation, the key files, permissions, fingerprints, manifest signatures.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include "mesh/bundle/manifest.h"
#include "mesh/bundle/release_key.h"
#include "mesh/bundle/testing.h"

using namespace mesh::bundle;
using mesh::bundle::testing::readAll;
using mesh::bundle::testing::TempDir;
using mesh::bundle::testing::writeFile;

TEST_CASE("a release key saves with mode 0600, its public key beside it, and loads back") {
  TempDir tmp;
  ReleaseKey key = ReleaseKey::generate();
  REQUIRE(key.save(tmp / "release.key").ok());
  struct stat st {};
  REQUIRE(::stat((tmp / "release.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(readAll(tmp / "release.key").rfind("hive-mesh release secret key v1\n", 0) == 0);
  CHECK(readAll(tmp / "release.key.pub").rfind("hive-mesh release public key v1\n", 0) == 0);

  auto loaded = ReleaseKey::load(tmp / "release.key");
  REQUIRE(loaded.ok());
  CHECK(loaded->publicKey() == key.publicKey());
  auto pub = ReleasePublicKey::load(tmp / "release.key.pub");
  REQUIRE(pub.ok());
  CHECK(*pub == key.publicKey());
  CHECK(key.publicKey().fingerprint().size() == 19);
  CHECK(key.publicKey().fingerprint()[4] == ':');

  // The reloaded secret signs what the original public key verifies.
  std::string sig = loaded->sign("hello");
  CHECK(sig.size() == kSignatureBytes);
  CHECK(verifyManifestSignature("12345678", signManifest("12345678", *loaded), key.publicKey()));
}

TEST_CASE("a secret key file readable by the group or others is refused with chmod advice") {
  TempDir tmp;
  ReleaseKey key = ReleaseKey::generate();
  REQUIRE(key.save(tmp / "release.key").ok());
  REQUIRE(::chmod((tmp / "release.key").c_str(), 0644) == 0);
  auto loaded = ReleaseKey::load(tmp / "release.key");
  REQUIRE_FALSE(loaded.ok());
  CHECK(loaded.error().message.find("chmod 600") != std::string::npos);
  REQUIRE(::chmod((tmp / "release.key").c_str(), 0640) == 0);
  CHECK_FALSE(ReleaseKey::load(tmp / "release.key").ok());
  REQUIRE(::chmod((tmp / "release.key").c_str(), 0600) == 0);
  CHECK(ReleaseKey::load(tmp / "release.key").ok());
  // The public half given by mistake is named for what it is, not sent to chmod.
  auto pub = ReleaseKey::load(tmp / "release.key.pub");
  REQUIRE_FALSE(pub.ok());
  CHECK(pub.error().message.find("is not a release secret key file") != std::string::npos);
  CHECK(pub.error().message.find("chmod") == std::string::npos);
}

TEST_CASE("saving a release key never overwrites an existing file") {
  TempDir tmp;
  REQUIRE(ReleaseKey::generate().save(tmp / "release.key").ok());
  auto second = ReleaseKey::generate().save(tmp / "release.key");
  REQUIRE_FALSE(second.ok());
  CHECK(second.error().message.find("refusing to overwrite") != std::string::npos);
}

TEST_CASE("malformed key files are refused") {
  TempDir tmp;
  writeFile(tmp / "bad.key", "hive-mesh release secret key v1\nnot base64!\n", 0600);
  CHECK_FALSE(ReleaseKey::load(tmp / "bad.key").ok());
  writeFile(tmp / "short.key", "hive-mesh release secret key v1\nAAAA\n", 0600);
  CHECK_FALSE(ReleaseKey::load(tmp / "short.key").ok());
  writeFile(tmp / "wrong.pub", "hive-mesh release secret key v1\nAAAA\n", 0644);
  CHECK_FALSE(ReleasePublicKey::load(tmp / "wrong.pub").ok());
  writeFile(tmp / "extra.pub", ReleaseKey::generate().publicKey().toText() + "more\n", 0644);
  CHECK_FALSE(ReleasePublicKey::load(tmp / "extra.pub").ok());
  CHECK_FALSE(ReleaseKey::load(tmp / "missing.key").ok());
}

TEST_CASE("trusted keys find a key by its raw bytes and hold each key once") {
  ReleaseKey a = ReleaseKey::generate();
  ReleaseKey b = ReleaseKey::generate();
  TrustedKeys trusted;
  trusted.add(a.publicKey());
  trusted.add(a.publicKey());
  CHECK(trusted.size() == 1);
  CHECK(trusted.find(a.publicKey().bytes()) != nullptr);
  CHECK(trusted.find(b.publicKey().bytes()) == nullptr);
  trusted.add(b.publicKey());
  CHECK(trusted.find(b.publicKey().bytes()) != nullptr);
}

TEST_CASE("a manifest signature does not verify under another domain, key or byte") {
  ReleaseKey key = ReleaseKey::generate();
  ManifestInfo m;
  m.name = "wordcount";
  m.version = 3;
  m.createdMs = 1;
  m.expiresMs = 2;
  m.payloadSize = 10;
  m.payloadSha256 = sha256("x");
  m.handlers = {"wc-map", "wc-reduce"};
  std::string bytes = encodeManifest(m);
  std::string sig = signManifest(bytes, key);
  CHECK(verifyManifestSignature(bytes, sig, key.publicKey()));
  // Without the domain prefix the same key's signature is a different one.
  CHECK_FALSE(verifyManifestSignature(bytes, key.sign(bytes), key.publicKey()));
  CHECK_FALSE(verifyManifestSignature(bytes, sig, ReleaseKey::generate().publicKey()));
  std::string flipped = bytes;
  flipped[flipped.size() / 2] ^= 1;
  CHECK_FALSE(verifyManifestSignature(flipped, sig, key.publicKey()));

  auto decoded = decodeManifest(bytes);
  REQUIRE(decoded.ok());
  CHECK(decoded->name == "wordcount");
  CHECK(decoded->version == 3);
  CHECK(decoded->handlers == m.handlers);
}

TEST_CASE("manifests that break a rule do not decode") {
  CHECK_FALSE(decodeManifest("").ok());
  CHECK_FALSE(decodeManifest("1234567").ok());
  CHECK_FALSE(decodeManifest(std::string(64, '\xff')).ok());
  CHECK(isValidBundleName("wordcount"));
  CHECK(isValidBundleName("a.b_c-9"));
  CHECK_FALSE(isValidBundleName(""));
  CHECK_FALSE(isValidBundleName(".hidden"));
  CHECK_FALSE(isValidBundleName("Upper"));
  CHECK_FALSE(isValidBundleName("a/b"));
  CHECK_FALSE(isValidBundleName("audit.log"));
  CHECK_FALSE(isValidBundleName(std::string(65, 'a')));
  CHECK(isValidBundleName(std::string(64, 'a')));
}
