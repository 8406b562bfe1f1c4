// The spore's bundle directory: atomic install, rollback, the rollback-protection state and the
// audit log. Layout under ROOT (docs/bundles.md):
//
//   ROOT/.lock                     flock: one Installer per ROOT
//   ROOT/.state/NAME               highest version seen, its manifest digest, bad versions
//   ROOT/.incoming/ID/             scratch directories for BundleReceivers (resumable spools)
//   ROOT/audit.log                 one JSON line per install, refusal and rollback
//   ROOT/NAME/VERSION/bundle.head  the signed head as received (header, manifest, signature)
//   ROOT/NAME/VERSION/files/...    the unpacked payload
//   ROOT/NAME/current -> VERSION   symlink, switched atomically (symlink + rename)
//   ROOT/NAME/previous -> VERSION  the version `current` pointed at before the last install
//
// install() records the new version as the highest seen (fsynced) BEFORE it unpacks into
// ROOT/NAME/VERSION.tmp (O_EXCL|O_NOFOLLOW, modes set explicitly), fsyncs files and directories,
// renames to ROOT/NAME/VERSION, and switches `current`. The previous version is kept (tasks
// running on it finish on it); older versions are deleted.
//
// Thread rule: install() and rollback() run on one thread at a time (the spore's bundle worker);
// the const methods (seen, list, installedHandlers, incomingDir) may run meanwhile on another
// thread (the spore's loop): they only read files that install() and rollback() replace
// atomically (links and state files by rename), and a version directory stays until the second
// install after it stopped being current, so a read at worst misses a bundle replaced twice
// during it. pruneSpools() runs between installs (see there). A second process on the same ROOT
// is refused by the lock.
// Errors: install() returns Checked (a named refusal, audited); the rest return Result/Status.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "mesh/bundle/audit.h"
#include "mesh/bundle/ledger.h"
#include "mesh/bundle/receiver.h"
#include "mesh/util/clock.h"
#include "mesh/util/result.h"

namespace mesh::bundle {

struct InstalledBundle {
  std::string name;
  std::uint64_t current = 0;
  std::optional<std::uint64_t> previous;
  std::vector<std::string> handlers;  // of the current version
  std::string keyFingerprint;         // the release key that signed the current version
  std::int64_t expiresMs = 0;         // the current version's expiry (wall ms)
  std::string path;                   // ROOT/NAME/CURRENT/files (absolute)
  std::optional<SeenVersion> seen;    // highest seen and bad versions
};

// One version of one bundle.
struct BundleVersion {
  std::string name;
  std::uint64_t version = 0;
};

struct InstallOutcome {
  std::string name;
  std::uint64_t version = 0;
  std::optional<std::uint64_t> previous;  // the version that was current before, if any
  std::string path;                       // ROOT/NAME/VERSION/files (absolute)
};

// The longest spool id: a 64-character bundle name, '-' and a 20-digit version.
inline constexpr std::size_t kMaxSpoolId = 64 + 1 + 20;

class Installer final : public VersionLedger {
 public:
  // Opens (creating) ROOT, takes its lock, and cleans up what an interrupted install left behind
  // (VERSION.tmp directories, half-made links), and finishes an interrupted rollback (a current
  // version marked bad goes back to previous; audited). `clock` must outlive the Installer.
  static util::Result<Installer> open(const std::string& root, const util::Clock& clock);

  Installer(Installer&&) noexcept = default;
  Installer& operator=(Installer&&) noexcept = default;

  // VersionLedger: the state check (4) reads; pass the Installer itself to finish().
  util::Result<std::optional<SeenVersion>> seen(const std::string& name) const override;

  // Finishes `receiver` (runs every check with this Installer as the ledger; do not call
  // receiver.finish() yourself) and installs the bundle if they all pass. A receiver that was
  // refused while streaming is audited here too. The refusal or install is written to the audit
  // log, and the receiver's scratch directory is deleted either way. A failure to install is a
  // kLocalError refusal; `current` is then unchanged, and the same bundle may be received again.
  // `stop` (optional, borrowed): once it reads true, the unpack stops before its next file or
  // 64 KiB piece and install() returns a kLocalError refusal without auditing it and without
  // deleting the receiver's spool, so the next start installs the same spool (the version is
  // recorded as not installed, which check 4 allows for the very same manifest).
  Checked<InstallOutcome> install(BundleReceiver& receiver,
                                  const std::atomic<bool>* stop = nullptr);

  // Switches `current` back to `previous`, marks the version it leaves as bad (never installed
  // again), and audits `reason`. Errors: nothing installed, or no previous version.
  util::Status rollback(const std::string& name, const std::string& reason);
  // For a version with no previous one (a spore's first install of the name) that failed its
  // trial: marks it bad, then removes `current`, so the name's handlers are gone from this spore
  // until a higher version installs; audited as a rollback with `reason`. A crash between the
  // two is finished by open(). Errors: nothing installed, or a previous version exists.
  util::Status withdraw(const std::string& name, const std::string& reason);

  // Handler name -> absolute path of its executable in its bundle's current version (the resolved
  // version directory, so a task keeps running the version it started with).
  util::Result<std::map<std::string, std::string>> installedHandlers() const;
  // The bundle version whose files hold `path`, a program path of installedHandlers()
  // (ROOT/NAME/VERSION/files/FILE); nullopt for any other path (a built-in, the handler
  // directory). Reads only the root: safe beside any other call.
  std::optional<BundleVersion> versionOfProgram(std::string_view path) const;
  // Every bundle with a current version, sorted by name (feeds hello and `mesh bundles`).
  util::Result<std::vector<InstalledBundle>> list() const;

  // The scratch id of the receive of bundle `name` (a valid bundle name) version `version`:
  // "NAME-VERSION", at most kMaxSpoolId characters whatever the name's length and the version.
  static std::string spoolId(const std::string& name, std::uint64_t version);
  // A scratch directory for a receive: ROOT/.incoming/ID. `id` is a spoolId, or any other id of
  // the same characters ([a-z0-9][a-z0-9._-]*, at most kMaxSpoolId); reusing the same id after a
  // restart resumes that receive. Another id is a bug (asserts).
  std::string incomingDir(const std::string& id) const;
  // Bounds ROOT/.incoming: deletes every scratch directory whose id is not in `wanted` (spools
  // of versions superseded or no longer served, anything else found there), then, while more
  // than `keepAtMost` remain, the one whose spool was written longest ago. Each deletion is
  // logged. Returns how many were deleted. No receiver may be open on a spool it may delete, so
  // it may not run beside install(); it touches only ROOT/.incoming, so it may beside rollback().
  util::Result<std::size_t> pruneSpools(const std::set<std::string>& wanted,
                                        std::size_t keepAtMost);
  const std::string& root() const { return root_; }
  const std::string& auditPath() const { return audit_.path(); }

 private:
  Installer(std::string root, FileVersionLedger ledger, AuditLog audit, UniqueFd lock,
            const util::Clock& clock);
  Checked<InstallOutcome> installVerified(const VerifiedBundle& bundle,
                                          const ReceiveLimits& limits,
                                          const std::atomic<bool>* stop);
  void audit(const AuditEvent& event);
  std::optional<InstalledBundle> describe(const std::string& name) const;

  // A name's directory with its current version, as rollback and withdraw start from.
  struct CurrentOf {
    std::string path;
    UniqueFd dir;
    std::uint64_t current = 0;
    std::optional<std::uint64_t> previous;
  };
  // Errors: not a bundle name, nothing installed, or no current version.
  util::Result<CurrentOf> openCurrent(const std::string& name) const;
  // Adds `version` to the name's bad versions in the ledger (before any link moves, so a crash
  // after it never installs that version again).
  util::Status markBad(const std::string& name, std::uint64_t version);

  std::string root_;
  FileVersionLedger ledger_;
  AuditLog audit_;
  UniqueFd lock_;
  const util::Clock* clock_;
};

}  // namespace mesh::bundle
