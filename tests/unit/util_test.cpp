#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <thread>

#include "mesh/util/bytes.h"
#include "mesh/util/memory.h"
#include "mesh/util/result.h"

using namespace mesh::util;

TEST_CASE("a Result holds either a value or an error") {
  Result<int> good = 7;
  CHECK(good.ok());
  CHECK(*good == 7);
  Result<int> bad = err("no");
  CHECK_FALSE(bad.ok());
  CHECK(bad.error().message == "no");
  CHECK_THROWS_AS(bad.value(), std::logic_error);
  Status s;
  CHECK(s.ok());
  Status f = err("broken");
  CHECK_FALSE(f.ok());
}

TEST_CASE("hex and base64 round trip known vectors") {
  CHECK(toHex(std::string("\x00\xff\x10", 3)) == "00ff10");
  CHECK(*fromHex("00ff10") == std::string("\x00\xff\x10", 3));
  CHECK_FALSE(fromHex("abc").ok());
  CHECK_FALSE(fromHex("zz").ok());
  CHECK(toBase64("") == "");
  CHECK(toBase64("f") == "Zg==");
  CHECK(toBase64("fo") == "Zm8=");
  CHECK(toBase64("foo") == "Zm9v");
  CHECK(toBase64("foobar") == "Zm9vYmFy");
}

TEST_CASE("UTF-8 validation refuses overlongs, surrogates and truncation") {
  CHECK(isUtf8("plain ascii"));
  CHECK(isUtf8("caf\xc3\xa9"));
  CHECK(isUtf8("\xf0\x9f\x98\x80"));
  CHECK_FALSE(isUtf8("\xc0\xaf"));          // overlong '/'
  CHECK_FALSE(isUtf8("\xed\xa0\x80"));      // surrogate
  CHECK_FALSE(isUtf8("\xe2\x82"));          // truncated
  CHECK_FALSE(isUtf8("\xff"));
}

TEST_CASE("JSON strings escape quotes, backslashes and control characters") {
  CHECK(jsonString("a\"b\\c\nd\x01") == "\"a\\\"b\\\\c\\nd\\u0001\"");
  CHECK(jsonNumber(12.345, 1) == "12.3");
  CHECK(jsonNumber(std::nan(""), 1) == "null");
  CHECK(jsonNumber(-std::numeric_limits<double>::infinity(), 3) == "null");
}

TEST_CASE("sizes and durations parse with units and refuse garbage") {
  CHECK(*parseSize("4096") == 4096);
  CHECK(*parseSize("64K") == 65536);
  CHECK(*parseSize("2M") == 2u << 20);
  CHECK_FALSE(parseSize("12Q").ok());
  CHECK_FALSE(parseSize("").ok());
  CHECK_FALSE(parseSize("99999999999999999999999").ok());
  CHECK(*parseDurationMs("250ms") == 250);
  CHECK(*parseDurationMs("30") == 30000);
  CHECK(*parseDurationMs("30d") == 30ll * 86400000);
  CHECK_FALSE(parseDurationMs("5 weeks").ok());
  CHECK_FALSE(parseDurationMs("30x").ok());
  auto negative = parseDurationMs("-1s");
  REQUIRE_FALSE(negative.ok());
  CHECK(negative.error().message.find("cannot be negative") != std::string::npos);
}

TEST_CASE("parseU64 takes whole decimal numbers only") {
  std::uint64_t v = 0;
  CHECK(parseU64("18446744073709551615", &v));
  CHECK(v == UINT64_MAX);
  CHECK_FALSE(parseU64("18446744073709551616", &v));
  CHECK_FALSE(parseU64("", &v));
  CHECK_FALSE(parseU64("12a", &v));
  CHECK_FALSE(parseU64("-1", &v));
}

TEST_CASE("splitList drops empty items") {
  auto v = splitList(",gpu,,ssd,", ',');
  REQUIRE(v.size() == 2);
  CHECK(v[0] == "gpu");
  CHECK(v[1] == "ssd");
}

TEST_CASE("writeFileAtomic creates the file with the requested mode") {
  char dir[] = "/tmp/mesh-util-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string path = std::string(dir) + "/secret";
  REQUIRE(writeFileAtomic(path, "hello", 0600).ok());
  struct stat st{};
  REQUIRE(stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(*readFile(path) == "hello");
  CHECK_FALSE(readFile(path, 2).ok());
  CHECK_FALSE(readFile(std::string(dir) + "/missing").ok());
  unlink(path.c_str());
  rmdir(dir);
}

TEST_CASE("lockDir lets one holder at a time use a directory and names it to the others") {
  char dir[] = "/tmp/mesh-util-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  {
    auto first = lockDir(dir, "nexus");
    REQUIRE(first.ok());
    auto second = lockDir(dir, "nexus");  // another open file: flock refuses it as it would another process
    REQUIRE_FALSE(second.ok());
    CHECK(second.error().message.find("another nexus (process " + std::to_string(getpid()) + ")") != std::string::npos);
  }
  CHECK(lockDir(dir, "nexus").ok());  // released with its fd
  unlink((std::string(dir) + "/.lock").c_str());
  rmdir(dir);
}

TEST_CASE("readFile reads large files, files at the size limit and pipes whole") {
  char dir[] = "/tmp/mesh-util-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string path = std::string(dir) + "/big";
  std::string big(3 * 65536 + 17, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 131) % 251);
  REQUIRE(writeFileAtomic(path, big, 0644).ok());
  auto got = readFile(path);
  REQUIRE(got.ok());
  CHECK(*got == big);
  CHECK(readFile(path, big.size()).ok());
  CHECK_FALSE(readFile(path, big.size() - 1).ok());
  // A pipe has no size to reserve: read in pieces to its end.
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  std::thread writer([&] {
    std::size_t off = 0;
    while (off < big.size()) {
      ssize_t n = write(fds[1], big.data() + off, big.size() - off);
      if (n <= 0) break;
      off += static_cast<std::size_t>(n);
    }
    close(fds[1]);
  });
  auto fromPipe = readFile("/proc/self/fd/" + std::to_string(fds[0]));
  writer.join();
  close(fds[0]);
  REQUIRE(fromPipe.ok());
  CHECK(*fromPipe == big);
  unlink(path.c_str());
  rmdir(dir);
}

TEST_CASE("after retainFreedMemory a freed block of a few MiB stays in the heap for reuse") {
  REQUIRE(mesh::util::retainFreedMemory());
  constexpr std::size_t kBlock = 8u << 20;
  std::size_t heldBefore = mallinfo2().fordblks;
  {
    std::unique_ptr<char[]> block(new char[kBlock]);
    std::memset(block.get(), 1, kBlock);  // fault it in, as a real frame would be
    CHECK(mallinfo2().hblkhd < kBlock);   // not a separate mmap
  }
  // Freed, not handed back to the kernel: the next frame of that size faults nothing in.
  CHECK(mallinfo2().fordblks >= heldBefore + kBlock / 2);
}
