// The machine facts behind docs/benchmarks.md ("Machine") that are not the peers' or SQLite's:
// SHA-256 of 4 KiB (libsodium's portable code and the CPU's SHA extensions, as crypto::sha256
// picks), Curve's cipher (crypto_box) on 4 KiB, fdatasync after writing 1.6 MB and 12 KiB at the
// end of a file (it grows) and over existing blocks, whether two flushes overlap, the round trip of a hand-off between two
// threads that sleep in poll(), and the floor of C's shape: a ZeroMQ round trip through a relay
// process (client -> relay -> worker -> relay -> client, as a task goes through the nexus to a
// spore and back) beside a direct one, without and with CurveZMQ, and what the stray sweep
// (mesh/exec/strays.h) adds to a handler run. Prints one line per fact.
//
//   build/bench/machine_facts [DIR]     (DIR: where the fdatasync file goes; default: bench/results)
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <sodium.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "mesh/crypto/sha256.h"
#include "mesh/exec/strays.h"
#include "mesh/exec/subprocess.h"

namespace {
using Clock = std::chrono::steady_clock;

double microsPer(int n, Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / n;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size())))];
}

// ---- relayed round trips ------------------------------------------------------------------------
// Each party is its own process with its own context (forked before any context exists), on
// 127.0.0.1 with ports the kernel picks; a child reports its bound endpoint over a pipe. Curve
// here is the cipher and handshake only (no ZAP handler: this tool talks to itself).

struct CurveKeys {
  char pub[41] = {}, sec[41] = {};
  CurveKeys() { zmq_curve_keypair(pub, sec); }
};

void asServer(zmq::socket_t& s, const CurveKeys* k) {
  if (!k) return;
  s.set(zmq::sockopt::curve_server, true);
  s.set(zmq::sockopt::curve_secretkey, std::string(k->sec));
}

void asClient(zmq::socket_t& s, const CurveKeys* k, const CurveKeys& mine) {
  if (!k) return;
  s.set(zmq::sockopt::curve_serverkey, std::string(k->pub));
  s.set(zmq::sockopt::curve_publickey, std::string(mine.pub));
  s.set(zmq::sockopt::curve_secretkey, std::string(mine.sec));
}

std::string bindAndTell(zmq::socket_t& s, int tellFd) {
  s.bind("tcp://127.0.0.1:*");
  std::string ep = s.get(zmq::sockopt::last_endpoint);
  std::string line = ep + "\n";
  if (::write(tellFd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(1);
  return ep;
}

std::string readEndpoint(int fd) {
  std::string ep;
  char c;
  while (ep.size() < 200 && ::read(fd, &c, 1) == 1 && c != '\n') ep += c;
  return ep;
}

// The echo worker: a DEALER that answers each [envelope...][body] with the same frames. It
// binds a ROUTER instead when `bindFd` >= 0 (the direct case) or connects to `relay`.
[[noreturn]] void runWorker(int bindFd, const std::string& relay, const CurveKeys* server, const CurveKeys& mine) {
  zmq::context_t ctx(1);
  zmq::socket_t s(ctx, bindFd >= 0 ? zmq::socket_type::router : zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  if (bindFd >= 0) {
    asServer(s, server);
    bindAndTell(s, bindFd);
  } else {
    asClient(s, server, mine);
    s.connect(relay);
    s.send(zmq::str_buffer("ready"));
  }
  for (;;) {  // until the parent's SIGTERM
    std::vector<zmq::message_t> frames;
    do {
      frames.emplace_back();
      if (!s.recv(frames.back())) _exit(0);
    } while (frames.back().more());
    for (std::size_t i = 0; i < frames.size(); ++i) {
      s.send(frames[i], i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
}

// The relay: a ROUTER for clients and a ROUTER for the worker, one poll loop, as the nexus has.
[[noreturn]] void runRelay(int tellFd, const CurveKeys* keys) {
  zmq::context_t ctx(1);
  zmq::socket_t front(ctx, zmq::socket_type::router), back(ctx, zmq::socket_type::router);
  front.set(zmq::sockopt::linger, 0);
  back.set(zmq::sockopt::linger, 0);
  asServer(front, keys);
  asServer(back, keys);
  bindAndTell(front, tellFd);
  bindAndTell(back, tellFd);
  zmq::message_t worker, m;
  if (!back.recv(worker) || !back.recv(m)) _exit(1);  // [worker id]["ready"]
  for (;;) {
    zmq::pollitem_t items[] = {{front.handle(), 0, ZMQ_POLLIN, 0}, {back.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 2, std::chrono::milliseconds(-1));
    if (items[0].revents & ZMQ_POLLIN) {  // [client][body] -> [worker][client][body]
      zmq::message_t client, body;
      if (!front.recv(client) || !front.recv(body)) _exit(0);
      back.send(zmq::buffer(worker.data(), worker.size()), zmq::send_flags::sndmore);
      back.send(client, zmq::send_flags::sndmore);
      back.send(body, zmq::send_flags::none);
    }
    if (items[1].revents & ZMQ_POLLIN) {  // [worker][client][body] -> [client][body]
      zmq::message_t from, client, body;
      if (!back.recv(from) || !back.recv(client) || !back.recv(body)) _exit(0);
      front.send(client, zmq::send_flags::sndmore);
      front.send(body, zmq::send_flags::none);
    }
  }
}

struct Trips {
  double p50 = 0, p99 = 0;
};

// `relayed`: through a relay; otherwise straight to the worker. 64-byte messages, one at a time.
Trips roundTrips(bool relayed, bool curve) {
  CurveKeys serverKeys, workerKeys, clientKeys;
  const CurveKeys* server = curve ? &serverKeys : nullptr;
  int tell[2];
  if (::pipe(tell) != 0) return {};
  std::vector<pid_t> children;
  std::string target;
  if (relayed) {
    pid_t relay = ::fork();
    if (relay == 0) runRelay(tell[1], server);
    children.push_back(relay);
    target = readEndpoint(tell[0]);
    std::string back = readEndpoint(tell[0]);
    pid_t worker = ::fork();
    if (worker == 0) runWorker(-1, back, server, workerKeys);
    children.push_back(worker);
  } else {
    pid_t worker = ::fork();
    if (worker == 0) runWorker(tell[1], "", server, workerKeys);
    children.push_back(worker);
    target = readEndpoint(tell[0]);
  }
  ::close(tell[0]);
  ::close(tell[1]);
  Trips out;
  {
    zmq::context_t ctx(1);
    zmq::socket_t s(ctx, zmq::socket_type::dealer);
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::rcvtimeo, 5000);
    asClient(s, server, clientKeys);
    s.connect(target);
    std::string payload(64, 'p');
    const int warmup = 2000, n = 20000;
    std::vector<double> us;
    us.reserve(n);
    for (int i = 0; i < warmup + n; ++i) {
      auto s0 = Clock::now();
      s.send(zmq::buffer(payload), zmq::send_flags::none);
      zmq::message_t reply;
      if (!s.recv(reply)) break;  // a 5 s silence: give up (reported as no figure)
      if (i >= warmup) us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s0).count());
    }
    if (us.size() == static_cast<std::size_t>(n)) out = Trips{percentile(us, 50), percentile(us, 99)};
  }
  for (pid_t pid : children) {
    ::kill(pid, SIGTERM);
    ::waitpid(pid, nullptr, 0);
  }
  return out;
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
  // Can two flushes overlap? Two 12 KiB writes over existing blocks, each followed by
  // fdatasync: one after the other, and with the second started from another thread 200 µs into
  // the first (as a one-task batch's result arrives while its submit is being flushed).
  {
    const std::size_t page = 12 * 1024;
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return 1;
    std::vector<char> chunk(page, 'z');
    for (int i = 0; i < 200; ++i) {
      if (::pwrite(fd, chunk.data(), page, static_cast<off_t>(i * page)) != static_cast<ssize_t>(page)) return 1;
    }
    ::fdatasync(fd);
    auto writeAndSync = [&](off_t at) {
      bool ok = ::pwrite(fd, chunk.data(), page, at) == static_cast<ssize_t>(page);
      return ::fdatasync(fd) == 0 && ok;
    };
    std::vector<double> sequential, overlapped;
    for (int r = 0; r < 300; ++r) {
      off_t at = static_cast<off_t>((r % 100) * 2 * page);
      auto s0 = Clock::now();
      if (!writeAndSync(at) || !writeAndSync(at + static_cast<off_t>(page))) return 1;
      sequential.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s0).count());
      ::usleep(300);
      s0 = Clock::now();
      std::thread second([&] {
        std::this_thread::sleep_until(s0 + std::chrono::microseconds(200));
        writeAndSync(at + static_cast<off_t>(page));
      });
      writeAndSync(at);
      second.join();
      overlapped.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s0).count());
      ::usleep(300);
    }
    ::close(fd);
    std::printf("two 12 KiB flushes: one after the other %.0f us p50; the second started 200 us into the first, "
                "from another thread: %.0f us p50\n",
                median(sequential), median(overlapped));
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
  // The peers' raw ZeroMQ figure is the direct plain one; C's bar is a multiple of it.
  double rawPlain = 0;
  for (bool curve : {false, true}) {
    Trips direct = roundTrips(false, curve), relayed = roundTrips(true, curve);
    if (!curve) rawPlain = direct.p50;
    const char* how = curve ? "with Curve" : "plain";
    std::printf("ZeroMQ round trip, direct, %s: %.1f us p50, %.1f us p99\n", how, direct.p50, direct.p99);
    std::printf("ZeroMQ round trip through a relay process, %s: %.1f us p50 (%.2fx the direct plain p50), %.1f us p99\n",
                how, relayed.p50, relayed.p50 / std::max(1.0, rawPlain), relayed.p99);
  }
  // Last: from here on this process is a child subreaper, as a spore is. What each handler run
  // pays for the sweep: its registration (at the spawn and the reap) and one sweep that finds
  // nothing (one /proc read), beside the run itself.
  {
    mesh::exec::ignoreSigpipe();
    if (!mesh::exec::strays::enable().ok()) {
      std::printf("stray sweep: cannot become a child subreaper here\n");
      return 0;
    }
    const int sweeps = 10000;
    auto t0 = Clock::now();
    for (int i = 0; i < sweeps; ++i) sink += static_cast<unsigned>(mesh::exec::strays::sweep().killed);
    double sweepUs = microsPer(sweeps, t0);
    t0 = Clock::now();
    for (int i = 0; i < sweeps; ++i) {
      mesh::exec::strays::Spawning spawning;
      spawning.started(::getpid());
      mesh::exec::strays::ended(spawning.token());
    }
    double registerUs = microsPer(sweeps, t0);
    char work[] = "/tmp/mesh-facts-XXXXXX";
    if (::mkdtemp(work) == nullptr) return 1;
    mesh::exec::RunSpec spec;
    spec.argv = {"/bin/true"};
    spec.workParent = work;
    std::vector<double> runUs;
    for (int i = 0; i < 200; ++i) {
      auto r0 = Clock::now();
      auto run = mesh::exec::runProgram(spec);
      if (!run || !run->ok()) break;
      runUs.push_back(std::chrono::duration<double, std::micro>(Clock::now() - r0).count());
    }
    ::rmdir(work);
    std::printf("stray sweep that finds nothing: %.1f us; registering and ending a run: %.2f us; "
                "a /bin/true run through exec::runProgram: %.0f us p50\n",
                sweepUs, registerUs, runUs.empty() ? 0.0 : median(runUs));
  }
  std::fprintf(stderr, "(checksum %u: keeps the loops from being optimised away)\n", sink);
  return 0;
}
