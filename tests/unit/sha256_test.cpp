#include <doctest/doctest.h>

#include <random>
#include <string>

#include "mesh/crypto/sha256.h"
#include "mesh/util/bytes.h"

using namespace mesh;

namespace {
std::string hex(const crypto::Sha256Digest& d) {
  return util::toHex(std::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
}

std::string randomBytes(std::mt19937_64& rng, std::size_t n) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}
}  // namespace

TEST_CASE("sha256 gives the FIPS 180-4 example digests") {
  CHECK(hex(crypto::sha256("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(hex(crypto::sha256("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // 56 bytes: the padding needs a second block.
  CHECK(hex(crypto::sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")) ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(hex(crypto::sha256(std::string(1'000'000, 'a'))) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  MESSAGE("sha256 on this CPU: " << std::string(crypto::sha256Implementation()));
}

TEST_CASE("the accelerated sha256 agrees with libsodium at every length around the block edges") {
  if (!crypto::sha256AcceleratedAvailable()) {
    MESSAGE("this CPU has no SHA extensions; sha256() uses libsodium, which the vectors above check");
    CHECK(std::string(crypto::sha256Implementation()) == "libsodium");
    return;
  }
  CHECK(std::string(crypto::sha256Implementation()) == "x86 SHA extensions");
  std::mt19937_64 rng(20261122);
  std::string buffer = randomBytes(rng, 70'000);
  // Every length 0..1,100 (all padding cases of the first 17 blocks), from odd offsets too.
  for (std::size_t len = 0; len <= 1100; ++len) {
    std::size_t offset = len % 7;
    std::string_view in(buffer.data() + offset, len);
    REQUIRE_MESSAGE(hex(crypto::sha256Accelerated(in)) == hex(crypto::sha256Portable(in)), "length " << len);
  }
  for (std::size_t len : {4095u, 4096u, 4097u, 65'535u, 65'536u, 69'999u}) {
    std::string_view in(buffer.data() + 1, len);
    CHECK_MESSAGE(hex(crypto::sha256Accelerated(in)) == hex(crypto::sha256Portable(in)), "length " << len);
  }
  CHECK(hex(crypto::sha256(buffer)) == hex(crypto::sha256Portable(buffer)));
}
