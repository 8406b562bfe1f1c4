// The machine facts behind docs/benchmarks.md ("Machine") that are not the peers' or SQLite's:
// SHA-256 of 4 KiB (libsodium's portable code and the CPU's SHA extensions, as crypto::sha256
// picks), Curve's cipher (crypto_box) on 4 KiB, fdatasync after writing 1.6 MB and 12 KiB at the
// end of a file (it grows) and over existing blocks, and the round trip of a hand-off between two
// threads that sleep in poll(). Prints one line per fact.
//
//   build/bench/machine_facts [DIR]     (DIR: where the fdatasync file goes; default: bench/results)
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sodium.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
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
  // 1.6 MB: a large group commit; 12 KiB: the three pages of a one-task commit, one every 0.5 ms.
  struct Case {
    std::size_t bytes;
    int reps;
    int pauseUs;
  };
  for (Case c : {Case{1600 * 1024, 40, 0}, Case{12 * 1024, 300, 500}}) {
    std::vector<char> chunk(c.bytes, 'y');
    for (int overwrite = 0; overwrite < 2; ++overwrite) {
      int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (fd < 0) {
        std::perror(path.c_str());
        return 1;
      }
      if (overwrite) {  // the blocks exist: write them, sync, start again from the beginning
        for (int i = 0; i < c.reps; ++i) {
          if (::write(fd, chunk.data(), chunk.size()) != static_cast<ssize_t>(chunk.size())) return 1;
        }
        ::fdatasync(fd);
        ::lseek(fd, 0, SEEK_SET);
      }
      std::vector<double> us;
      for (int i = 0; i < c.reps; ++i) {
        if (::write(fd, chunk.data(), chunk.size()) != static_cast<ssize_t>(chunk.size())) return 1;
        auto s0 = Clock::now();
        ::fdatasync(fd);
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s0).count());
        if (c.pauseUs) ::usleep(static_cast<useconds_t>(c.pauseUs));
      }
      ::close(fd);
      std::printf("fdatasync after %zu KiB %s: %.0f us p50\n", c.bytes / 1024,
                  overwrite ? "over existing blocks" : "appended", median(us));
    }
  }
  ::unlink(path.c_str());

  // A hand-off between two threads of one process: each waits in poll() on an eventfd the other
  // writes (a thread that sleeps and is woken, as the nexus's loop and store writer are).
  {
    int ping = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), pong = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ping < 0 || pong < 0) return 1;
    auto await = [](int fd) {
      pollfd p{fd, POLLIN, 0};
      std::uint64_t v = 0;
      for (int i = 0; i < 1000000; ++i) {  // bounded; each pass blocks until a write
        ::poll(&p, 1, 1000);
        if (::read(fd, &v, sizeof v) == sizeof v) return;
      }
    };
    auto signal = [](int fd) {
      std::uint64_t one = 1;
      return ::write(fd, &one, sizeof one) == sizeof one;
    };
    const int trips = 5000;
    std::thread echo([&] {
      for (int i = 0; i < trips; ++i) {
        await(ping);
        if (!signal(pong)) return;
      }
    });
    std::vector<double> us;
    for (int i = 0; i < trips; ++i) {
      auto s0 = Clock::now();
      if (!signal(ping)) break;
      await(pong);
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s0).count());
    }
    echo.join();
    ::close(ping);
    ::close(pong);
    std::printf("thread hand-off round trip (eventfd + poll): %.1f us p50\n", median(us));
  }
  std::fprintf(stderr, "(checksum %u: keeps the loops from being optimised away)\n", sink);
  return 0;
}
