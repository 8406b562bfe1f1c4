// The payload archive and signing: path rules, modes, deterministic output, what the signer
// refuses, and what the archive reader refuses.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mesh/bundle/archive.h"
#include "mesh/bundle/receiver.h"
#include "mesh/bundle/sign.h"
#include "mesh/bundle/testing.h"

using namespace mesh::bundle;
using mesh::bundle::testing::RawArchive;
using mesh::bundle::testing::readAll;
using mesh::bundle::testing::TempDir;
using mesh::bundle::testing::writeFile;

namespace {

// Reads every entry of `archive` (written to a file); returns the first refusal, if any.
std::optional<Refused> readArchive(const std::string& archive, ArchiveLimits limits = {}) {
  TempDir tmp;
  writeFile(tmp / "a", archive);
  UniqueFd fd(::open((tmp / "a").c_str(), O_RDONLY));
  REQUIRE(fd.valid());
  ArchiveReader reader(fd.get(), 0, archive.size(), limits);
  for (;;) {
    auto e = reader.next();
    if (!e) return e.refused();
    if (!e->has_value()) return std::nullopt;
  }
}

Refusal reasonOf(const std::string& archive, ArchiveLimits limits = {}) {
  auto r = readArchive(archive, limits);
  REQUIRE(r.has_value());
  return r->reason;
}

SignOptions options(std::uint64_t version) {
  SignOptions o;
  o.name = "tool";
  o.version = version;
  o.createdMs = 1'000;
  o.expiresMs = 2'000;
  return o;
}

}  // namespace

TEST_CASE("the path rule accepts clean relative paths and names each problem") {
  CHECK(archivePathProblem("a").empty());
  CHECK(archivePathProblem("bin/wc-map").empty());
  CHECK(archivePathProblem("caf\xc3\xa9/x").empty());
  CHECK(archivePathProblem("..a/b..").empty());
  CHECK_FALSE(archivePathProblem("").empty());
  CHECK(archivePathProblem("/etc/passwd").find("absolute") != std::string::npos);
  CHECK(archivePathProblem("../x").find("'..'") != std::string::npos);
  CHECK(archivePathProblem("a/../../x").find("'..'") != std::string::npos);
  CHECK(archivePathProblem("a/./b").find("'.'") != std::string::npos);
  CHECK(archivePathProblem("a//b").find("empty component") != std::string::npos);
  CHECK(archivePathProblem("a/").find("empty component") != std::string::npos);
  CHECK(archivePathProblem(std::string("a\0b", 3)).find("NUL") != std::string::npos);
  CHECK_FALSE(archivePathProblem("a\nb").empty());
  CHECK_FALSE(archivePathProblem("\xff").empty());
  CHECK_FALSE(archivePathProblem(std::string(1025, 'a')).empty());
}

TEST_CASE("a well-formed archive reads back entry by entry") {
  std::string archive =
      RawArchive().dir("bin").file("bin/run", "#!/bin/sh\n", 0755).file("x", "data").end();
  CHECK_FALSE(readArchive(archive).has_value());
}

TEST_CASE("the archive reader refuses each broken rule with its own reason") {
  CHECK(reasonOf(RawArchive().file("../escape", "x").end()) == Refusal::kUnsafePath);
  CHECK(reasonOf(RawArchive().file("/etc/cron.d/x", "x").end()) == Refusal::kUnsafePath);
  CHECK(reasonOf(RawArchive().file(std::string("a\0b", 3), "x").end()) == Refusal::kUnsafePath);
  CHECK(reasonOf(RawArchive().entry(3, 0777, "link", "/etc/passwd").end()) ==
        Refusal::kUnsupportedEntry);
  CHECK(reasonOf(RawArchive().entry(4, 0644, "dev", "").end()) == Refusal::kUnsupportedEntry);
  CHECK(reasonOf(RawArchive().file("suid", "x", 04755).end()) == Refusal::kBadMode);
  CHECK(reasonOf(RawArchive().file("open", "x", 0777).end()) == Refusal::kBadMode);
  CHECK(reasonOf(RawArchive().dir("d", 0777).end()) == Refusal::kBadMode);
  CHECK(reasonOf(RawArchive().file("a", "1").file("a", "2").end()) == Refusal::kDuplicatePath);
  CHECK(reasonOf(RawArchive().file("nodir/a", "1").end()) == Refusal::kMalformedArchive);
  CHECK(reasonOf(RawArchive().file("f", "1").file("f/a", "1").end()) == Refusal::kMalformedArchive);
  CHECK(reasonOf(RawArchive().file("a", "1").end() + "x") == Refusal::kMalformedArchive);
  CHECK(reasonOf(RawArchive()
                     .file("a", "1")
                     .raw(encodeEntryHeader(2, 0644, "b", 100))
                     .raw("short")
                     .end()) == Refusal::kMalformedArchive);
  CHECK(reasonOf(std::string(kArchiveMagic)) == Refusal::kMalformedArchive);  // no end marker
  CHECK(reasonOf("NOTANARCHIVE") == Refusal::kMalformedArchive);
  CHECK(reasonOf(RawArchive().file("a", "1").file("b", "2").file("c", "3").end(),
                 ArchiveLimits{2, 1000}) == Refusal::kTooManyFiles);
  CHECK(reasonOf(RawArchive().file("a", "12345").file("b", "67890").end(), ArchiveLimits{100, 8}) ==
        Refusal::kUnpackedTooLarge);
}

TEST_CASE("signing the same tree twice gives the same payload, with modes from the execute bit") {
  TempDir tmp;
  writeFile(tmp / "src/wc-map", "#!/bin/sh\ncat\n", 0700);
  writeFile(tmp / "src/notes.txt", "hello", 0600);
  writeFile(tmp / "src/lib/z.txt", "z", 0640);
  writeFile(tmp / "src/lib/a.sh", "#!/bin/sh\n", 0755);
  ReleaseKey key = ReleaseKey::generate();
  auto first = signBundle(tmp / "src", options(1), key, tmp / "one.bundle");
  auto second = signBundle(tmp / "src", options(1), key, tmp / "two.bundle");
  REQUIRE(first.ok());
  REQUIRE(second.ok());
  CHECK(first->manifest.payloadSha256 == second->manifest.payloadSha256);
  CHECK(readAll(tmp / "one.bundle") == readAll(tmp / "two.bundle"));
  CHECK(first->manifest.handlers == std::vector<std::string>{"wc-map"});  // top-level executables
  CHECK(first->entries == 5);
  CHECK(first->bundleBytes == readAll(tmp / "one.bundle").size());

  // The payload lists the directory before its contents, names sorted, modes normalized.
  std::string bundle = readAll(tmp / "one.bundle");
  auto head = first->bundleBytes - first->manifest.payloadSize;
  writeFile(tmp / "payload", bundle.substr(head));
  UniqueFd fd(::open((tmp / "payload").c_str(), O_RDONLY));
  ArchiveReader reader(fd.get(), 0, first->manifest.payloadSize, ArchiveLimits{});
  std::vector<std::pair<std::string, std::uint32_t>> seen;
  for (;;) {
    auto e = reader.next();
    REQUIRE(e.ok());
    if (!e->has_value()) break;
    seen.emplace_back((*e)->path, (*e)->mode);
  }
  std::vector<std::pair<std::string, std::uint32_t>> want = {{"lib", 0755},
                                                             {"lib/a.sh", 0755},
                                                             {"lib/z.txt", 0644},
                                                             {"notes.txt", 0644},
                                                             {"wc-map", 0755}};
  CHECK(seen == want);
}

TEST_CASE("a symbolic link in the source directory is refused at sign time") {
  TempDir tmp;
  writeFile(tmp / "src/run", "#!/bin/sh\n", 0755);
  REQUIRE(::symlink("/etc/passwd", (tmp / "src/passwd").c_str()) == 0);
  auto r = signBundle(tmp / "src", options(1), ReleaseKey::generate(), tmp / "out.bundle");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("symbolic link") != std::string::npos);
  CHECK(::access((tmp / "out.bundle").c_str(), F_OK) != 0);
  CHECK(::access((tmp / "out.bundle.tmp").c_str(), F_OK) != 0);
  CHECK(::access((tmp / "out.bundle.payload.tmp").c_str(), F_OK) != 0);
}

TEST_CASE("a directory with no executable at its top is refused at sign time: the bundle would provide no handler") {
  TempDir tmp;
  writeFile(tmp / "src/notes.txt", "not a program\n", 0644);
  auto r = signBundle(tmp / "src", options(1), ReleaseKey::generate(), tmp / "out.bundle");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("no executable file at its top") != std::string::npos);
  CHECK(::access((tmp / "out.bundle").c_str(), F_OK) != 0);
}

TEST_CASE("a FIFO in the source directory is refused at sign time") {
  TempDir tmp;
  writeFile(tmp / "src/run", "#!/bin/sh\n", 0755);
  REQUIRE(::mkfifo((tmp / "src/pipe").c_str(), 0644) == 0);
  auto r = signBundle(tmp / "src", options(1), ReleaseKey::generate(), tmp / "out.bundle");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("FIFO") != std::string::npos);
}

TEST_CASE("signing refuses bad names, versions, expiry and handlers that are not executables") {
  TempDir tmp;
  writeFile(tmp / "src/run", "#!/bin/sh\n", 0755);
  writeFile(tmp / "src/data", "x", 0644);
  ReleaseKey key = ReleaseKey::generate();
  SignOptions o = options(1);
  o.name = "Bad Name";
  CHECK_FALSE(signBundle(tmp / "src", o, key, tmp / "b").ok());
  o = options(0);
  CHECK_FALSE(signBundle(tmp / "src", o, key, tmp / "b").ok());
  o = options(1);
  o.expiresMs = o.createdMs;
  CHECK_FALSE(signBundle(tmp / "src", o, key, tmp / "b").ok());
  o = options(1);
  o.handlers = {"data"};
  auto r = signBundle(tmp / "src", o, key, tmp / "b");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("chmod +x") != std::string::npos);
  o.handlers = {"nothere"};  // no such file: said so, not sent to chmod
  r = signBundle(tmp / "src", o, key, tmp / "b");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("there is no file") != std::string::npos);
  o.handlers = {"run"};
  CHECK(signBundle(tmp / "src", o, key, tmp / "b").ok());
  CHECK_FALSE(signBundle(tmp / "missing", options(1), key, tmp / "b").ok());
}
