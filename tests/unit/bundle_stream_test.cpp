// Streaming: resuming a receive (also across a restart), and a 50 MiB bundle with bounded memory.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>

#include "mesh/bundle/installer.h"
#include "mesh/bundle/receiver.h"
#include "mesh/bundle/sign.h"
#include "mesh/bundle/testing.h"

using namespace mesh::bundle;
using mesh::bundle::testing::BundleLab;
using mesh::bundle::testing::readAll;
using mesh::bundle::testing::writeFile;

namespace {

// A field of /proc/self/status in KiB ("VmHWM", "VmRSS"), or -1.
long statusKiB(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  }
  return -1;
}

// Resets the peak RSS to the current RSS (Linux >= 4.0). False if the kernel refuses.
bool resetPeakRss() {
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (f == nullptr) return false;
  bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

}  // namespace

TEST_CASE("a resumed receive (half fed, receiver recreated from the scratch state) installs") {
  // Split inside the header, inside the manifest, and inside the payload.
  for (std::size_t split : {std::size_t{10}, std::size_t{100}, std::size_t{0}}) {
    BundleLab lab;
    REQUIRE(lab.deliver(lab.sign(1)).ok());
    std::string bytes = lab.sign(2);
    if (split == 0) split = bytes.size() - 60;
    INFO("split at " << split << " of " << bytes.size());
    const std::string scratch = lab.installer.incomingDir("tool-2");
    {
      auto rx = BundleReceiver::open(scratch, {}, lab.trusted, lab.clock);
      REQUIRE(rx.ok());
      REQUIRE(rx->feed(std::string_view(bytes).substr(0, split / 2)));
      REQUIRE(rx->feed(std::string_view(bytes).substr(split / 2, split - split / 2)));
      CHECK(rx->offset() == split);
    }  // the process "dies": the receiver goes away, the scratch files stay

    lab.clock.advanceMs(5'000);
    auto rx = BundleReceiver::open(scratch, {}, lab.trusted, lab.clock);
    REQUIRE(rx.ok());
    CHECK(rx->offset() == split);                          // where the fetch resumes
    CHECK(rx->startedMs() == lab.clock.wallMs() - 5'000);  // the update's original start time
    if (rx->manifest() != nullptr) {
      // Known once the head is in: the fetcher compares it with the announced bundle.
      CHECK(*rx->expectedSize() == bytes.size());
      CHECK(rx->manifestSha256().size() == 64);
    }
    REQUIRE(rx->feed(std::string_view(bytes).substr(split)));
    CHECK(rx->complete());
    auto r = lab.installer.install(*rx);
    REQUIRE(r.ok());
    CHECK(lab.currentVersion() == 2);
    CHECK(::access(scratch.c_str(), F_OK) != 0);
  }
}

TEST_CASE("feedFile resumes from the receiver's offset") {
  BundleLab lab;
  std::string bytes = lab.sign(1);
  writeFile(lab.tmp / "b", bytes);
  const std::string scratch = lab.installer.incomingDir("f");
  {
    auto rx = BundleReceiver::open(scratch, {}, lab.trusted, lab.clock);
    REQUIRE(rx->feed(std::string_view(bytes).substr(0, 333)));
  }
  auto rx = BundleReceiver::open(scratch, {}, lab.trusted, lab.clock);
  REQUIRE(rx.ok());
  CHECK(rx->offset() == 333);
  REQUIRE(feedFile(*rx, lab.tmp / "b").ok());
  CHECK(rx->offset() == bytes.size());
  CHECK(lab.installer.install(*rx).ok());
}

TEST_CASE("a resume whose spool was corrupted on disk starts again from zero") {
  BundleLab lab;
  std::string bytes = lab.sign(1);
  const std::string scratch = lab.installer.incomingDir("c");
  {
    auto rx = BundleReceiver::open(scratch, {}, lab.trusted, lab.clock);
    REQUIRE(rx->feed(std::string_view(bytes).substr(0, 500)));
  }
  std::string spool = readAll(scratch + "/bundle.part");
  spool[20] ^= 1;  // inside the manifest: the signature no longer matches
  writeFile(scratch + "/bundle.part", spool, 0600);
  auto rx = BundleReceiver::open(scratch, {}, lab.trusted, lab.clock);
  REQUIRE(rx.ok());
  CHECK(rx->offset() == 0);
  CHECK(rx->refused() == nullptr);
  REQUIRE(rx->feed(bytes));
  CHECK(lab.installer.install(*rx).ok());
}

TEST_CASE("a 50 MiB bundle streams through the receiver and installs with bounded memory") {
  BundleLab lab;
  // Source tree: one 50 MiB file written 1 MiB at a time, plus the handler.
  const std::string src = lab.sourceDir(1);
  {
    std::mt19937_64 rng(50);
    std::string block(1 << 20, '\0');
    std::FILE* f = std::fopen((src + "/big.bin").c_str(), "wb");
    REQUIRE(f != nullptr);
    for (int i = 0; i < 50; ++i) {
      for (std::size_t k = 0; k + 8 <= block.size(); k += 8) {
        std::uint64_t v = rng();
        std::memcpy(&block[k], &v, 8);
      }
      REQUIRE(std::fwrite(block.data(), 1, block.size(), f) == block.size());
    }
    REQUIRE(std::fclose(f) == 0);
  }
  SignOptions o;
  o.name = "tool";
  o.version = 1;
  o.createdMs = lab.clock.wallMs() - 1000;
  o.expiresMs = lab.clock.wallMs() + 86'400'000;
  const std::string bundlePath = lab.tmp / "big.bundle";
  auto signedBundle = signBundle(src, o, lab.key, bundlePath);
  REQUIRE(signedBundle.ok());
  CHECK(signedBundle->manifest.payloadSize > (50u << 20));

  const bool peakReset = resetPeakRss();
  const long baseKiB = statusKiB("VmHWM");
  auto rx = BundleReceiver::open(lab.installer.incomingDir("big"), {}, lab.trusted, lab.clock);
  REQUIRE(rx.ok());
  // Feed 64 KiB at a time from the file, checking the receiver's own buffer on the way.
  {
    int fd = ::open(bundlePath.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    std::string chunk(64 * 1024, '\0');
    std::size_t maxBuffered = 0;
    for (;;) {
      ssize_t n = ::read(fd, chunk.data(), chunk.size());
      REQUIRE(n >= 0);
      if (n == 0) break;
      REQUIRE(rx->feed(std::string_view(chunk.data(), static_cast<std::size_t>(n))));
      maxBuffered = std::max(maxBuffered, rx->bufferedBytes());
    }
    ::close(fd);
    CHECK(maxBuffered <=
          ReceiveLimits{}.maxManifestBytes + kBundleHeaderBytes + kSignatureBlockBytes);
    CHECK(maxBuffered < 4096);  // in practice: the head of this bundle
  }
  CHECK(rx->complete());
  auto r = lab.installer.install(*rx);
  REQUIRE(r.ok());
  const long peakKiB = statusKiB("VmHWM");
  INFO("peak RSS grew by " << (peakKiB - baseKiB) << " KiB (reset worked: " << peakReset << ")");
  if (peakReset && baseKiB > 0) CHECK(peakKiB - baseKiB < 16 * 1024);  // far below 50 MiB
  // The big file arrived intact.
  struct stat st {};
  REQUIRE(::stat((r->path + "/big.bin").c_str(), &st) == 0);
  CHECK(st.st_size == (50 << 20));
}
