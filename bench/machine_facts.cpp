// The machine facts behind docs/benchmarks.md ("Machine") that are not the peers' or SQLite's:
// SHA-256 of 4 KiB (libsodium's portable code and the CPU's SHA extensions, as crypto::sha256
// picks), Curve's cipher (crypto_box) on 4 KiB, and fdatasync after writing 1.6 MB at the end
// of a file (it grows) and over existing blocks. Prints one line per fact.
//
//   build/bench/machine_facts [DIR]     (DIR: where the fdatasync file goes; default: bench/results)
#include <fcntl.h>
#include <sodium.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "mesh/crypto/sha256.h"

namespace {
using Clock = std::chrono::steady_clock;

double microsPer(int n, Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / n;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  if (sodium_init() < 0) return 1;
  const int n = 20000;
  std::string block(4096, 'x');
  unsigned sink = 0;

  auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    block[0] = static_cast<char>(i);
    sink += mesh::crypto::sha256Portable(block)[0];
  }
  std::printf("sha256 4 KiB, libsodium: %.2f us\n", microsPer(n, t0));
  if (mesh::crypto::sha256AcceleratedAvailable()) {
    t0 = Clock::now();
    for (int i = 0; i < n; ++i) {
      block[0] = static_cast<char>(i);
      sink += mesh::crypto::sha256Accelerated(block)[0];
    }
    std::printf("sha256 4 KiB, SHA extensions: %.2f us\n", microsPer(n, t0));
  } else {
    std::printf("sha256 4 KiB, SHA extensions: not on this CPU\n");
  }

  unsigned char key[crypto_box_BEFORENMBYTES], nonce[crypto_box_NONCEBYTES];
  randombytes_buf(key, sizeof key);
  randombytes_buf(nonce, sizeof nonce);
  std::vector<unsigned char> boxed(block.size() + crypto_box_MACBYTES);
  t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    crypto_box_easy_afternm(boxed.data(), reinterpret_cast<const unsigned char*>(block.data()), block.size(), nonce, key);
    sink += boxed[0];
  }
  std::printf("crypto_box 4 KiB: %.2f us\n", microsPer(n, t0));

  const std::string dir = argc > 1 ? argv[1] : "bench/results";
  const std::string path = dir + "/machine_facts.tmp";
  std::vector<char> chunk(1600 * 1024, 'y');
  for (int overwrite = 0; overwrite < 2; ++overwrite) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
      std::perror(path.c_str());
      return 1;
    }
    if (overwrite) {  // the blocks exist: write them, sync, start again from the beginning
      for (int i = 0; i < 40; ++i) {
        if (::write(fd, chunk.data(), chunk.size()) != static_cast<ssize_t>(chunk.size())) return 1;
      }
      ::fdatasync(fd);
      ::lseek(fd, 0, SEEK_SET);
    }
    std::vector<double> ms;
    for (int i = 0; i < 40; ++i) {
      if (::write(fd, chunk.data(), chunk.size()) != static_cast<ssize_t>(chunk.size())) return 1;
      auto s0 = Clock::now();
      ::fdatasync(fd);
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - s0).count());
    }
    ::close(fd);
    std::printf("fdatasync after 1.6 MB %s: %.2f ms p50\n", overwrite ? "over existing blocks" : "appended", median(ms));
  }
  ::unlink(path.c_str());
  std::fprintf(stderr, "(checksum %u: keeps the loops from being optimised away)\n", sink);
  return 0;
}
