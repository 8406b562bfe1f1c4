// SHA-256 (FIPS 180-4) of a byte string, for the `sha256` built-in handler and anything else
// that hashes bulk data.
//
// On x86-64 CPUs with the SHA extensions (Intel since Goldmont and Ice Lake, AMD since Zen) the
// compression function runs on those instructions: about 2 µs for 4 KiB on the development VM,
// against 11 µs for libsodium's portable C. Elsewhere, or when the CPU lacks them, libsodium
// computes it. The choice is made once, from CPUID, and both give the same digest (tested).
//
// Thread rule: pure functions; safe from any thread.
#pragma once

#include <array>
#include <string_view>

namespace mesh::crypto {

using Sha256Digest = std::array<unsigned char, 32>;

Sha256Digest sha256(std::string_view data);

// "x86 SHA extensions" or "libsodium": what sha256() uses on this CPU.
const char* sha256Implementation();

// The two implementations, for tests and measurements. sha256Accelerated() may only be called
// when sha256AcceleratedAvailable() is true.
Sha256Digest sha256Portable(std::string_view data);
bool sha256AcceleratedAvailable();
Sha256Digest sha256Accelerated(std::string_view data);

}  // namespace mesh::crypto
