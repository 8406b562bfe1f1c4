#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "mesh/crypto/keys.h"
#include "mesh/util/bytes.h"

using namespace mesh;

namespace {
std::string tempDir() {
  char dir[] = "/tmp/mesh-crypto-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  return dir;
}
}  // namespace

TEST_CASE("a generated key pair round trips through z85") {
  auto pair = crypto::KeyPair::generate();
  auto again = crypto::PublicKey::fromZ85(pair.publicKey.z85());
  REQUIRE(again.ok());
  CHECK(*again == pair.publicKey);
  CHECK(pair.publicKey.fingerprint().size() == 19);
}

TEST_CASE("a malformed z85 key is refused") {
  CHECK_FALSE(crypto::PublicKey::fromZ85("short").ok());
  CHECK_FALSE(crypto::PublicKey::fromZ85(std::string(40, '"')).ok());
}

TEST_CASE("a saved key pair loads back, with the secret file private") {
  std::string dir = tempDir();
  auto pair = crypto::KeyPair::generate();
  REQUIRE(crypto::saveKeyPair(dir + "/node.key", pair).ok());
  struct stat st{};
  REQUIRE(stat((dir + "/node.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto loaded = crypto::loadKeyPair(dir + "/node.key");
  REQUIRE(loaded.ok());
  CHECK(loaded->publicKey == pair.publicKey);
  CHECK(std::string(loaded->secretKey.z85()) == pair.secretKey.z85());
  auto pub = crypto::loadPublicKey(dir + "/node.key.pub");
  REQUIRE(pub.ok());
  CHECK(*pub == pair.publicKey);
  CHECK(crypto::loadPublicKey(pair.publicKey.z85()).ok());
  CHECK_FALSE(crypto::saveKeyPair(dir + "/node.key", pair).ok());  // no overwrite
  std::system(("rm -rf " + dir).c_str());
}

TEST_CASE("a secret key file readable by others is refused") {
  std::string dir = tempDir();
  REQUIRE(crypto::saveKeyPair(dir + "/k", crypto::KeyPair::generate()).ok());
  chmod((dir + "/k").c_str(), 0644);
  auto loaded = crypto::loadKeyPair(dir + "/k");
  REQUIRE_FALSE(loaded.ok());
  CHECK(loaded.error().message.find("chmod 600") != std::string::npos);
  // A .pub file (mode 0644) given for a key pair: named for what it is, not sent to chmod.
  auto pub = crypto::loadKeyPair(dir + "/k.pub");
  REQUIRE_FALSE(pub.ok());
  CHECK(pub.error().message.find("it is a public key") != std::string::npos);
  CHECK(pub.error().message.find("chmod") == std::string::npos);
  std::system(("rm -rf " + dir).c_str());
}

TEST_CASE("a key file whose public key does not match its secret is refused") {
  std::string dir = tempDir();
  auto a = crypto::KeyPair::generate();
  auto b = crypto::KeyPair::generate();
  std::string text = "public-key = " + a.publicKey.z85() + "\nsecret-key = " + b.secretKey.z85() + "\n";
  REQUIRE(util::writeFileAtomic(dir + "/k", text, 0600).ok());
  CHECK_FALSE(crypto::loadKeyPair(dir + "/k").ok());
  std::system(("rm -rf " + dir).c_str());
}

TEST_CASE("fingerprints normalize for typing") {
  CHECK(crypto::normalizeFingerprint("AB12:cd34") == "ab12cd34");
}
