// PayloadLog: task payloads of at least kMinBytes, stored once in append-only segment files
// beside the database (DIR/payloads/NNNNNNNN.seg for DIR/nexus.db) instead of in the task rows.
//
// Why: a payload in a row is written twice (to SQLite's WAL, then to the database file by the
// checkpoint), through 4 KiB pages and an overflow chain, and for 4 KiB payloads that was most
// of the nexus's cost per task (docs/benchmarks.md, B). Here the bytes of a whole group commit
// go out in one writev and one fdatasync, and the task row holds (segment, offset, length).
//
// Durability: the store writer syncs the log BEFORE the SQLite commit that refers to it, so a
// committed row never points at bytes that are not on disk. A crash in between leaves bytes no
// row refers to: harmless, never reused (each open starts a new segment after the highest one
// present, so a torn tail is never appended to). A new segment's directory entry is synced
// before any bytes in it are referred to.
//
// Space: only the tasks of unfinished batches are ever read back, so the store writer deletes,
// between commits, every segment outside the ranges (batches.first_segment..last_segment) of
// the unfinished batches, except the one it appends to (StoreWriter, WriterOptions::payloadGcMs).
//
// Thread rule: a PayloadLog belongs to the writer thread; a PayloadReader to its thread.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mesh/util/result.h"

namespace mesh::store {

struct PayloadRef {
  std::uint64_t segment = 0;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};

class PayloadLog {
 public:
  static constexpr std::size_t kMinBytes = 1024;  // smaller payloads stay in their task row

  // DIR/payloads for DIR/nexus.db.
  static std::string dirFor(const std::string& dbPath);
  // Creates DIR (mode 0700) if missing. The first add() starts a new segment after the highest
  // one in DIR. segmentBytes: when a segment is full the next one begins.
  static util::Result<std::unique_ptr<PayloadLog>> open(const std::string& dir,
                                                        std::uint64_t segmentBytes = 256ull << 20);
  ~PayloadLog();
  PayloadLog(const PayloadLog&) = delete;
  PayloadLog& operator=(const PayloadLog&) = delete;

  // Queues the bytes (they must stay valid until sync()) and says where they will be.
  util::Result<PayloadRef> add(std::string_view bytes);
  // Writes what is queued and makes it durable. After a failure the queued bytes are dropped
  // and the next add() starts a new segment.
  util::Status sync();

  std::uint64_t segment() const { return segment_; }

 private:
  PayloadLog(std::string dir, std::uint64_t segmentBytes) : dir_(std::move(dir)), segmentBytes_(segmentBytes) {}
  util::Status startSegment();
  util::Status writeQueued();
  void abandonSegment();

  std::string dir_;
  std::uint64_t segmentBytes_;
  std::uint64_t nextSegment_ = 1;  // the number the next new segment gets
  std::uint64_t segment_ = 0;      // the open segment, 0: none
  int fd_ = -1;
  std::uint64_t size_ = 0;         // bytes written to the open segment, plus those queued
  std::uint64_t written_ = 0;      // bytes written to it
  std::vector<iovec> queued_;
  std::vector<int> toSync_;        // full segments written but not yet synced (closed after sync)
};

// Reads payloads back (recovery after a restart). Keeps each segment it opened open.
class PayloadReader {
 public:
  explicit PayloadReader(std::string dir) : dir_(std::move(dir)) {}
  ~PayloadReader();
  PayloadReader(const PayloadReader&) = delete;
  PayloadReader& operator=(const PayloadReader&) = delete;
  util::Result<std::string> read(const PayloadRef& ref);
  // Closes the segments it opened (an open file would keep a deleted segment's space in use).
  void closeAll();

 private:
  std::string dir_;
  std::unordered_map<std::uint64_t, int> fds_;
};

std::string segmentPath(const std::string& dir, std::uint64_t segment);
// The segment numbers in DIR, ascending (none if DIR does not exist).
util::Result<std::vector<std::uint64_t>> listSegments(const std::string& dir);

}  // namespace mesh::store
