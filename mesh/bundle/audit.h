// The audit log: one JSON line per bundle install, refusal (with its reason) and rollback,
// appended to a file (ROOT/audit.log on a spore). Each line is written with one write(2) on an
// O_APPEND descriptor and fsynced, so lines never interleave or tear, even across processes.
//
//   {"time":"2026-11-22T10:00:00Z","time_ms":1795...,"event":"refused","name":"wordcount",
//    "version":7,"reason":"untrusted-key","message":"...","key":"3f2a:9c0e:7b1d:4c55"}
//
// Thread rule: an AuditLog is used by one thread.
// Errors: append() returns a Status; the caller logs it (an unwritable audit log never blocks an
// install or a refusal).
#pragma once

#include <cstdint>
#include <string>

#include "mesh/bundle/fs.h"
#include "mesh/util/result.h"

namespace mesh::bundle {

struct AuditEvent {
  std::string event;           // "installed", "refused" or "rolled-back"
  std::string name;            // empty when not known (refused before the manifest was read)
  std::uint64_t version = 0;   // 0 when not known
  std::string reason;          // refusalName() for a refusal; the cause for a rollback
  std::string message;         // one line
  std::string keyFingerprint;  // the signer's release key, when known
};

// The JSON line for `event` (with its trailing newline). Non-UTF-8 text is escaped first.
std::string auditLine(const AuditEvent& event, std::int64_t wallMs);

class AuditLog {
 public:
  // Opens (creating, mode 0640) the log for appending.
  static util::Result<AuditLog> open(const std::string& path);
  util::Status append(const AuditEvent& event, std::int64_t wallMs);
  const std::string& path() const { return path_; }

 private:
  AuditLog(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  UniqueFd fd_;
  std::string path_;
};

}  // namespace mesh::bundle
