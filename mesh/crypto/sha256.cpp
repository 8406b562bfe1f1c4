#include "mesh/crypto/sha256.h"

#include <sodium.h>

#include <cstdint>
#include <cstring>

#include "mesh/util/result.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define MESH_SHA256_X86 1
#endif

namespace mesh::crypto {
namespace {

#if MESH_SHA256_X86

constexpr std::uint32_t kInitialState[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                            0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

// The round constants of FIPS 180-4 §4.2.2.
alignas(16) constexpr std::uint32_t kRound[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

bool detectShaExtensions() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool ssse3 = (c & (1u << 9)) != 0, sse41 = (c & (1u << 19)) != 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool sha = (b & (1u << 29)) != 0;
  return ssse3 && sse41 && sha;
}

// Runs the compression function over `blocks` 64-byte blocks.
//
// SHA256RNDS2 does two rounds on the working variables packed as {A,B,E,F} and {C,D,G,H}
// (A in the highest lane), so the state is repacked on the way in and out. The message
// schedule uses SHA256MSG1/MSG2 for W[t-16] + σ0(W[t-15]) and the σ1 terms; the W[t-7] term
// is added in between.
__attribute__((target("sha,sse4.1,ssse3"))) void compressShaNi(std::uint32_t state[8],
                                                               const unsigned char* data,
                                                               std::size_t blocks) {
  const __m128i byteSwap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
  __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(&state[0]));  // lanes a b c d
  __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(&state[4]));  // lanes e f g h
  lo = _mm_shuffle_epi32(lo, 0xB1);                                            // b a d c
  hi = _mm_shuffle_epi32(hi, 0x1B);                                            // h g f e
  __m128i abef = _mm_alignr_epi8(lo, hi, 8);                                   // f e b a
  __m128i cdgh = _mm_blend_epi16(hi, lo, 0xF0);                                // h g d c

  for (std::size_t block = 0; block < blocks; ++block, data += 64) {
    const __m128i abefStart = abef, cdghStart = cdgh;
    __m128i w[4];
    for (int i = 0; i < 4; ++i) {
      w[i] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(data + 16 * i)),
                              byteSwap);
    }
#pragma GCC unroll 16
    for (int g = 0; g < 16; ++g) {  // four rounds per step
      if (g >= 4) {
        // W[4g..4g+3] from the four previous groups, held in w[(g-4)%4] .. w[(g-1)%4].
        __m128i t = _mm_sha256msg1_epu32(w[g % 4], w[(g + 1) % 4]);
        t = _mm_add_epi32(t, _mm_alignr_epi8(w[(g + 3) % 4], w[(g + 2) % 4], 4));
        w[g % 4] = _mm_sha256msg2_epu32(t, w[(g + 3) % 4]);
      }
      __m128i wk = _mm_add_epi32(w[g % 4], _mm_load_si128(reinterpret_cast<const __m128i*>(&kRound[4 * g])));
      cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);  // now holds the new A,B,E,F
      wk = _mm_shuffle_epi32(wk, 0x0E);
      abef = _mm_sha256rnds2_epu32(abef, cdgh, wk);  // old A,B,E,F are the new C,D,G,H
    }
    abef = _mm_add_epi32(abef, abefStart);
    cdgh = _mm_add_epi32(cdgh, cdghStart);
  }

  __m128i t = _mm_shuffle_epi32(abef, 0x1B);  // a b e f
  cdgh = _mm_shuffle_epi32(cdgh, 0xB1);       // g h c d
  lo = _mm_blend_epi16(t, cdgh, 0xF0);        // a b c d
  hi = _mm_alignr_epi8(cdgh, t, 8);           // e f g h
  _mm_storeu_si128(reinterpret_cast<__m128i*>(&state[0]), lo);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(&state[4]), hi);
}

#endif  // MESH_SHA256_X86

const bool kAccelerated =
#if MESH_SHA256_X86
    detectShaExtensions();
#else
    false;
#endif

}  // namespace

Sha256Digest sha256Portable(std::string_view data) {
  Sha256Digest d{};
  static const bool initialised = ::sodium_init() >= 0;  // once, not per hash
  MESH_ASSERT(initialised, "libsodium failed to initialise");
  ::crypto_hash_sha256(d.data(), reinterpret_cast<const unsigned char*>(data.data()), data.size());
  return d;
}

bool sha256AcceleratedAvailable() { return kAccelerated; }

Sha256Digest sha256Accelerated(std::string_view data) {
  MESH_ASSERT(kAccelerated, "sha256Accelerated called on a CPU without the SHA extensions");
#if MESH_SHA256_X86
  std::uint32_t state[8];
  std::memcpy(state, kInitialState, sizeof state);
  const auto* bytes = reinterpret_cast<const unsigned char*>(data.data());
  const std::size_t full = data.size() / 64;
  compressShaNi(state, bytes, full);

  // Padding (FIPS 180-4 §5.1.1): 0x80, zeros, then the length in bits, big-endian, in one or
  // two final blocks.
  unsigned char tail[128] = {};
  const std::size_t rest = data.size() - full * 64;
  if (rest > 0) std::memcpy(tail, bytes + full * 64, rest);
  tail[rest] = 0x80;
  const std::size_t tailBlocks = rest + 1 + 8 <= 64 ? 1 : 2;
  const std::uint64_t bits = static_cast<std::uint64_t>(data.size()) * 8;
  for (int i = 0; i < 8; ++i) tail[tailBlocks * 64 - 1 - i] = static_cast<unsigned char>(bits >> (8 * i));
  compressShaNi(state, tail, tailBlocks);

  Sha256Digest d{};
  for (int i = 0; i < 8; ++i) {
    d[4 * i] = static_cast<unsigned char>(state[i] >> 24);
    d[4 * i + 1] = static_cast<unsigned char>(state[i] >> 16);
    d[4 * i + 2] = static_cast<unsigned char>(state[i] >> 8);
    d[4 * i + 3] = static_cast<unsigned char>(state[i]);
  }
  return d;
#else
  (void)data;
  return {};
#endif
}

Sha256Digest sha256(std::string_view data) {
  return kAccelerated ? sha256Accelerated(data) : sha256Portable(data);
}

const char* sha256Implementation() { return kAccelerated ? "x86 SHA extensions" : "libsodium"; }

}  // namespace mesh::crypto
