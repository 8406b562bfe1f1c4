// The payload archive: a bundle's files as a flat sequence of entries (docs/bundles.md).
//
//   archive = "HMARCHV1" | entry* | end
//   entry   = type (u8) | mode (u16 LE) | path length (u16 LE) | size (u64 LE) | path | data
//   type    = 1 directory (mode 0755, size 0, no data) | 2 regular file (mode 0644 or 0755)
//   end     = an entry header of 13 zero bytes, and nothing after it
//
// Only files and directories can be expressed; any other type byte is refused, so links,
// devices and FIFOs never reach the disk. Paths are relative, '/'-separated, at most
// kMaxArchivePathBytes, with no empty, "." or ".." component, no NUL or control byte, valid
// UTF-8. Every entry's parent directory is declared by an earlier entry; no path appears twice.
// The writer emits each directory before its contents, names sorted bytewise: the same tree always
// gives the same bytes.
//
// Thread rule: a writer or reader is used by one thread; the free functions are pure.
// Errors: the writer returns Status (a sign-time error says which file and what to do); the
// reader returns Checked with a named Refusal for each broken rule.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "mesh/bundle/refusal.h"
#include "mesh/util/result.h"

namespace mesh::bundle {

inline constexpr std::string_view kArchiveMagic = "HMARCHV1";
inline constexpr std::size_t kArchiveEntryHeaderBytes = 13;
inline constexpr std::size_t kMaxArchivePathBytes = 1024;

enum class EntryType : std::uint8_t { kEnd = 0, kDirectory = 1, kFile = 2 };

struct ArchiveEntry {
  EntryType type = EntryType::kEnd;
  std::uint32_t mode = 0;  // 0755 or 0644
  std::string path;
  std::uint64_t size = 0;  // file contents in bytes; 0 for a directory
};

struct ArchiveLimits {
  std::uint64_t maxEntries = 10'000;              // files and directories together
  std::uint64_t maxUnpackedBytes = 256ull << 20;  // sum of file sizes
};

// Empty when `path` follows the path rule above, else why not (untrusted bytes escaped).
std::string archivePathProblem(std::string_view path);

// The 13-byte entry header followed by the path. Does not check anything: the writer checks
// first, and tests use it to build hostile archives.
std::string encodeEntryHeader(std::uint8_t type, std::uint32_t mode, std::string_view path,
                              std::uint64_t size);

// Writes an archive to a sink (a function that takes the bytes in order). Checks each path and
// mode as it goes; does not check parent order or duplicates (archiveDirectory produces a valid
// order; the reader checks).
class ArchiveWriter {
 public:
  using Sink = std::function<util::Status(std::string_view)>;
  explicit ArchiveWriter(Sink sink) : sink_(std::move(sink)) {}

  util::Status addDirectory(std::string_view path);
  util::Status addFile(std::string_view path, std::uint32_t mode, std::string_view contents);
  // Streams `size` bytes from `fd` (its current position) in 64 KiB pieces.
  util::Status addFileFromFd(std::string_view path, std::uint32_t mode, int fd, std::uint64_t size,
                             const std::string& what);
  // Writes the end marker. Nothing may be added afterwards.
  util::Status finish();

 private:
  util::Status start();
  util::Status header(EntryType type, std::uint32_t mode, std::string_view path,
                      std::uint64_t size);
  Sink sink_;
  bool started_ = false;
  bool finished_ = false;
};

struct ArchivedTree {
  std::uint64_t entries = 0;
  std::uint64_t unpackedBytes = 0;
  std::vector<std::string> topLevelExecutables;  // names of top-level files given mode 0755
};

// Adds everything under `dir` (not `dir` itself) to `writer`, each directory before its contents,
// names sorted bytewise. Regular files get 0755 if any execute bit is set, else 0644; directories
// 0755. Refuses symbolic links, devices, FIFOs and sockets, and names that break the path rule.
util::Result<ArchivedTree> archiveDirectory(const std::string& dir, ArchiveWriter& writer);

// Reads an archive from a region of a file (the spooled payload) with bounded memory, checking
// every rule as it goes. `fd` is not owned and must stay open while the reader is used; it is
// read with pread, so its position does not matter.
class ArchiveReader {
 public:
  ArchiveReader(int fd, std::uint64_t offset, std::uint64_t length, const ArchiveLimits& limits);

  // The next entry, checked; std::nullopt after the end marker (which must end the region). A
  // file's contents not read with copyData() are skipped.
  Checked<std::optional<ArchiveEntry>> next();
  // Passes the current file entry's contents to `sink` in pieces of at most 64 KiB. Call at most
  // once per file entry, after next() returned it.
  util::Status copyData(const std::function<util::Status(std::string_view)>& sink);

  std::uint64_t entries() const { return entries_; }
  std::uint64_t unpackedBytes() const { return unpackedBytes_; }

 private:
  Checked<std::optional<ArchiveEntry>> readEntry();
  int fd_;
  std::uint64_t pos_;  // absolute file offset of the next unread byte
  std::uint64_t end_;
  ArchiveLimits limits_;
  bool sawMagic_ = false;
  bool done_ = false;
  std::uint64_t dataLeft_ = 0;  // bytes of the current file entry not yet consumed
  std::uint64_t entries_ = 0;
  std::uint64_t unpackedBytes_ = 0;
  std::set<std::string> directories_;
  std::set<std::string> paths_;
};

}  // namespace mesh::bundle
