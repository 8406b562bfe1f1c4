// Rollback and replay protection: the highest bundle version ever accepted per name (check 4).
// VersionLedger is what the verifier reads; FileVersionLedger keeps it in one small fsynced text
// file per name (the spore's Installer uses one under ROOT/.state; the nexus may use one in its
// data directory or implement VersionLedger over its database).
//
// Thread rule: a FileVersionLedger is used by one thread (one owner per directory).
// Errors: an unreadable or corrupt state file is an Error; the verifier then refuses (fails
// closed) rather than forgetting what it has seen.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mesh/bundle/manifest.h"
#include "mesh/bundle/refusal.h"
#include "mesh/util/result.h"

namespace mesh::bundle {

struct SeenVersion {
  std::uint64_t version = 0;       // the highest version accepted for the name
  std::string manifestSha256;      // hex SHA-256 of that version's exact manifest bytes
  bool installed = false;          // false: recorded before an install that has not finished
  std::vector<std::uint64_t> bad;  // versions a rollback marked bad, ascending
};

class VersionLedger {
 public:
  virtual ~VersionLedger() = default;
  // What was seen for `name`, or std::nullopt if nothing was.
  virtual util::Result<std::optional<SeenVersion>> seen(const std::string& name) const = 0;
};

// Check (4) as a pure function: std::nullopt when a manifest with this version and digest may be
// accepted. It may when nothing was seen, or its version is higher than the highest seen, or it
// is the very manifest (same digest) of a recorded install that never finished (a crash between
// recording and switching `current`). Otherwise: kBadVersion, kReplayedVersion or kOlderVersion.
std::optional<Refused> checkVersion(const ManifestInfo& manifest,
                                    const std::string& manifestSha256Hex,
                                    const std::optional<SeenVersion>& seen);

class FileVersionLedger final : public VersionLedger {
 public:
  // Creates `dir` (0700) if it is missing.
  static util::Result<FileVersionLedger> open(const std::string& dir);

  util::Result<std::optional<SeenVersion>> seen(const std::string& name) const override;
  // Replaces the state of `name`; durable when it returns (file fsynced, renamed, directory
  // fsynced). Recording a lower version than the one stored is a bug (asserts).
  util::Status record(const std::string& name, const SeenVersion& state);

  const std::string& dir() const { return dir_; }

 private:
  explicit FileVersionLedger(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
};

}  // namespace mesh::bundle
