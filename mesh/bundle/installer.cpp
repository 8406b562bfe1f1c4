#include "mesh/bundle/installer.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>

#include "mesh/bundle/archive.h"
#include "mesh/util/bytes.h"
#include "mesh/util/log.h"

namespace mesh::bundle {

using util::err;
using util::Result;
using util::Status;

namespace {

constexpr const char* kCurrent = "current";
constexpr const char* kPrevious = "previous";
constexpr const char* kHeadFile = "bundle.head";
constexpr const char* kFilesDir = "files";
constexpr const char* kInterrupted = "the install was interrupted: the spore is stopping";

// A version directory's name: a decimal number without leading zeros (one spelling per version).
bool parseVersion(std::string_view text, std::uint64_t* out) {
  return !text.empty() && text[0] != '0' && util::parseU64(text, out);
}

// The version a link in a bundle directory points at; std::nullopt if there is no such link (or
// it does not hold a version number).
std::optional<std::uint64_t> readVersionLink(int dirfd, const char* link) {
  char buf[64];
  ssize_t n = ::readlinkat(dirfd, link, buf, sizeof buf - 1);
  if (n <= 0) return std::nullopt;
  std::uint64_t v = 0;
  if (!parseVersion({buf, static_cast<std::size_t>(n)}, &v)) {
    MESH_WARN("bundle link %s points at '%s', not a version: ignored", link,
              printable({buf, static_cast<std::size_t>(n)}).c_str());
    return std::nullopt;
  }
  return v;
}

// Points dirfd/link at `target` atomically: a symlink under a temporary name renamed over it.
Status switchLink(int dirfd, const std::string& link, const std::string& target) {
  const std::string tmp = link + ".tmp";
  if (::unlinkat(dirfd, tmp.c_str(), 0) != 0 && errno != ENOENT) {
    return err("cannot remove a stale " + tmp + ": " + errnoText(errno));
  }
  if (::symlinkat(target.c_str(), dirfd, tmp.c_str()) != 0) {
    return err("cannot create the link " + tmp + ": " + errnoText(errno));
  }
  if (::renameat(dirfd, tmp.c_str(), dirfd, link.c_str()) != 0) {
    return err("cannot switch the link " + link + ": " + errnoText(errno));
  }
  return {};
}

// Opens the directory `rel` ("" = base itself) under `base`, component by component, never
// following a link.
Result<UniqueFd> openDirAt(int base, std::string_view rel) {
  UniqueFd cur(::dup(base));
  if (!cur.valid()) return err("cannot duplicate a directory descriptor: " + errnoText(errno));
  std::size_t start = 0;
  while (start < rel.size()) {
    std::size_t slash = rel.find('/', start);
    if (slash == std::string_view::npos) slash = rel.size();
    std::string part(rel.substr(start, slash - start));
    UniqueFd next(
        ::openat(cur.get(), part.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next.valid())
      return err("cannot open directory " + std::string(rel) + ": " + errnoText(errno));
    cur = std::move(next);
    start = slash + 1;
  }
  return cur;
}

std::vector<std::string> listNames(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(std::move(n));
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

// [a-z0-9][a-z0-9._-]*, at most kMaxSpoolId: what spoolId makes of any bundle name and version.
bool isValidSpoolId(std::string_view id) {
  auto lowerOrDigit = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (id.empty() || id.size() > kMaxSpoolId || !lowerOrDigit(id.front())) return false;
  return std::all_of(id.begin(), id.end(),
                     [&](char c) { return lowerOrDigit(c) || c == '.' || c == '_' || c == '-'; });
}

bool endsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Unpacks the verified payload into `filesDir` (an empty directory): directories first made 0700
// then set to 0755, files created O_EXCL|O_NOFOLLOW then given their mode, each file fsynced,
// then every directory fsynced deepest first. The archive rules are checked again as it reads.
// Stops with a kLocalError refusal once `stop` (may be null) reads true.
std::optional<Refused> unpackPayload(const VerifiedBundle& bundle, const ReceiveLimits& limits,
                                     int filesDir, const std::atomic<bool>* stop) {
  auto stopped = [stop] { return stop != nullptr && stop->load(); };
  UniqueFd src(::open(bundle.bundlePath.c_str(), O_RDONLY | O_CLOEXEC));
  if (!src.valid()) {
    return refuse(Refusal::kLocalError,
                  "cannot open " + bundle.bundlePath + ": " + errnoText(errno));
  }
  ArchiveReader reader(src.get(), bundle.payloadOffset, bundle.manifest.payloadSize,
                       ArchiveLimits{limits.maxFiles, limits.maxUnpackedBytes});
  std::vector<std::string> dirs;
  for (;;) {
    if (stopped()) return refuse(Refusal::kLocalError, kInterrupted);
    auto next = reader.next();
    if (!next) return next.refused();
    if (!next->has_value()) break;
    const ArchiveEntry& e = **next;
    std::size_t slash = e.path.rfind('/');
    std::string parentRel = slash == std::string::npos ? "" : e.path.substr(0, slash);
    std::string base = slash == std::string::npos ? e.path : e.path.substr(slash + 1);
    auto parent = openDirAt(filesDir, parentRel);
    if (!parent) return refuse(Refusal::kLocalError, parent.error().message);
    if (e.type == EntryType::kDirectory) {
      if (::mkdirat(parent->get(), base.c_str(), 0700) != 0) {
        return refuse(Refusal::kLocalError,
                      "cannot create directory " + e.path + ": " + errnoText(errno));
      }
      UniqueFd d(
          ::openat(parent->get(), base.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!d.valid() || ::fchmod(d.get(), 0755) != 0) {
        return refuse(Refusal::kLocalError,
                      "cannot set up directory " + e.path + ": " + errnoText(errno));
      }
      dirs.push_back(e.path);
      continue;
    }
    UniqueFd f(::openat(parent->get(), base.c_str(),
                        O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!f.valid()) {
      return refuse(Refusal::kLocalError, "cannot create " + e.path + ": " + errnoText(errno));
    }
    Status copied = reader.copyData([&](std::string_view bytes) -> Status {
      if (stopped()) return err(kInterrupted);
      return writeAll(f.get(), bytes, e.path);
    });
    if (!copied) return refuse(Refusal::kLocalError, copied.error().message);
    if (::fchmod(f.get(), e.mode) != 0) {
      return refuse(Refusal::kLocalError,
                    "cannot set the mode of " + e.path + ": " + errnoText(errno));
    }
    if (auto s = fsyncFd(f.get(), e.path); !s)
      return refuse(Refusal::kLocalError, s.error().message);
  }
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    auto d = openDirAt(filesDir, *it);
    if (!d) return refuse(Refusal::kLocalError, d.error().message);
    if (auto s = fsyncFd(d->get(), *it); !s) return refuse(Refusal::kLocalError, s.error().message);
  }
  return std::nullopt;
}

// Recovery of a rollback cut short: rollback() marks the version bad before it switches
// `current`, so a crash between the two leaves a bad version current (and never fetched again).
// Finishes the switch to `previous` (audited); also drops a `previous` that names `current` (a
// crash after the switch, before the link was removed), which a later rollback would mark bad.
Status finishRollback(const FileVersionLedger& ledger, AuditLog& audit, const util::Clock& clock,
                      const std::string& dirPath, const std::string& name) {
  UniqueFd dir(::open(dirPath.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir.valid()) return {};  // not a bundle directory
  auto current = readVersionLink(dir.get(), kCurrent);
  auto previous = readVersionLink(dir.get(), kPrevious);
  if (!current) return {};
  if (previous == current) {
    MESH_WARN("bundle %s: previous and current are both version %llu: removing previous",
              name.c_str(), static_cast<unsigned long long>(*current));
    if (::unlinkat(dir.get(), kPrevious, 0) != 0 && errno != ENOENT) {
      return err("cannot remove " + dirPath + "/previous: " + errnoText(errno));
    }
    return fsyncFd(dir.get(), dirPath);
  }
  auto seen = ledger.seen(name);
  if (!seen) {
    MESH_WARN("bundle %s: %s", name.c_str(), seen.error().message.c_str());
    return {};  // installs of that name are refused until the state is restored
  }
  if (!seen->has_value()) return {};
  const std::vector<std::uint64_t>& bad = (*seen)->bad;
  if (std::find(bad.begin(), bad.end(), *current) == bad.end()) return {};
  const std::string prevName = previous ? std::to_string(*previous) : std::string();
  struct stat st {};
  if (!previous || ::fstatat(dir.get(), prevName.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
      !S_ISDIR(st.st_mode)) {
    // A withdrawal cut short (a first install that failed its trial): finish it. The version is
    // bad; with nothing to return to, its handlers go.
    if (::unlinkat(dir.get(), kCurrent, 0) != 0 && errno != ENOENT) {
      return err("cannot remove " + dirPath + "/current: " + errnoText(errno));
    }
    if (auto s = fsyncFd(dir.get(), dirPath); !s) return s;
    const std::string message = "finished at start-up: version " + std::to_string(*current) +
                                " was marked bad with no previous version to return to, and is removed";
    MESH_WARN("bundle %s withdrawn: %s", name.c_str(), message.c_str());
    if (auto s = audit.append({"rolled-back", name, *current, "interrupted-rollback", message, ""}, clock.wallMs()); !s) {
      MESH_ERROR("audit log: %s", s.error().message.c_str());
    }
    return {};
  }
  if (auto s = switchLink(dir.get(), kCurrent, prevName); !s) return s;
  if (::unlinkat(dir.get(), kPrevious, 0) != 0 && errno != ENOENT) {
    return err("cannot remove " + dirPath + "/previous: " + errnoText(errno));
  }
  if (auto s = fsyncFd(dir.get(), dirPath); !s) return s;
  const std::string message = "finished at start-up: current is version " + prevName +
                              " again; version " + std::to_string(*current) +
                              " was marked bad by a rollback cut short";
  MESH_WARN("bundle %s rolled back: %s", name.c_str(), message.c_str());
  if (auto s = audit.append({"rolled-back", name, *current, "interrupted-rollback", message, ""},
                            clock.wallMs());
      !s) {
    MESH_ERROR("audit log: %s", s.error().message.c_str());
  }
  return {};
}

}  // namespace

Installer::Installer(std::string root, FileVersionLedger ledger, AuditLog audit, UniqueFd lock,
                     const util::Clock& clock)
    : root_(std::move(root)),
      ledger_(std::move(ledger)),
      audit_(std::move(audit)),
      lock_(std::move(lock)),
      clock_(&clock) {}

Result<Installer> Installer::open(const std::string& rootIn, const util::Clock& clock) {
  ensureSodium();
  if (auto s = makeDirs(rootIn, 0755); !s) return s.error();
  char resolved[PATH_MAX];
  if (::realpath(rootIn.c_str(), resolved) == nullptr) {
    return err("cannot resolve the bundle directory " + rootIn + ": " + errnoText(errno));
  }
  std::string root = resolved;
  UniqueFd lock(::open((root + "/.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!lock.valid()) return err("cannot open " + root + "/.lock: " + errnoText(errno));
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    return err("another process is using the bundle directory " + root +
               ": stop it or use another");
  }
  auto ledger = FileVersionLedger::open(root + "/.state");
  if (!ledger) return ledger.error();
  if (auto s = makeDirs(root + "/.incoming", 0700); !s) return s.error();
  auto audit = AuditLog::open(root + "/audit.log");
  if (!audit) return audit.error();

  // Recovery: whatever an interrupted install left half-made is removed; `current` never pointed
  // at it, and the version state lets the same bundle be received again.
  for (const std::string& name : listNames(root)) {
    if (!isValidBundleName(name)) continue;
    const std::string dir = root + "/" + name;
    for (const std::string& entry : listNames(dir)) {
      if (!endsWith(entry, ".tmp")) continue;
      MESH_WARN("removing %s/%s left by an interrupted install", dir.c_str(), entry.c_str());
      if (auto s = removeTree(dir + "/" + entry); !s) return s.error();
    }
    if (auto s = finishRollback(*ledger, *audit, clock, dir, name); !s) return s.error();
  }
  return Installer(root, std::move(*ledger), std::move(*audit), std::move(lock), clock);
}

Result<std::optional<SeenVersion>> Installer::seen(const std::string& name) const {
  return ledger_.seen(name);
}

std::string Installer::spoolId(const std::string& name, std::uint64_t version) {
  MESH_ASSERT(isValidBundleName(name), "a spool is named after a valid bundle name");
  return name + "-" + std::to_string(version);
}

std::string Installer::incomingDir(const std::string& id) const {
  MESH_ASSERT(isValidSpoolId(id), "incoming ids follow the spool id rule");
  return root_ + "/.incoming/" + id;
}

Result<std::size_t> Installer::pruneSpools(const std::set<std::string>& wanted,
                                           std::size_t keepAtMost) {
  const std::string incoming = root_ + "/.incoming";
  UniqueFd dir(::open(incoming.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir.valid()) return err("cannot open " + incoming + ": " + errnoText(errno));
  std::size_t removed = 0;
  auto remove = [&](const std::string& id, const char* why) {
    MESH_INFO("removing the bundle spool %s/%s: %s", incoming.c_str(), printable(id).c_str(), why);
    if (auto s = removeTreeAt(dir.get(), id); !s) {
      MESH_WARN("%s", s.error().message.c_str());
      return;
    }
    ++removed;
  };
  struct Kept {
    std::int64_t writtenNs;
    std::string id;
  };
  std::vector<Kept> kept;
  for (const std::string& id : listNames(incoming)) {
    if (wanted.count(id) == 0) {
      remove(id, "no bundle offered needs it");
      continue;
    }
    struct stat st {};
    const std::string part = id + "/bundle.part";
    if (::fstatat(dir.get(), part.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 &&
        ::fstatat(dir.get(), id.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      continue;  // vanished meanwhile
    }
    kept.push_back({st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec, id});
  }
  // The most recently written first; the oldest go beyond keepAtMost.
  std::sort(kept.begin(), kept.end(), [](const Kept& a, const Kept& b) {
    return a.writtenNs != b.writtenNs ? a.writtenNs > b.writtenNs : a.id < b.id;
  });
  for (std::size_t i = keepAtMost; i < kept.size(); ++i) {
    remove(kept[i].id, ("more than " + std::to_string(keepAtMost) + " spools").c_str());
  }
  if (removed > 0) {
    if (auto s = fsyncFd(dir.get(), incoming); !s) MESH_WARN("%s", s.error().message.c_str());
  }
  return removed;
}

void Installer::audit(const AuditEvent& event) {
  if (auto s = audit_.append(event, clock_->wallMs()); !s) {
    MESH_ERROR("audit log: %s", s.error().message.c_str());
  }
}

Checked<InstallOutcome> Installer::install(BundleReceiver& receiver,
                                           const std::atomic<bool>* stop) {
  Checked<VerifiedBundle> verdict = receiver.refused() != nullptr
                                        ? Checked<VerifiedBundle>(*receiver.refused())
                                        : receiver.finish(*this);
  Checked<InstallOutcome> outcome = verdict ? installVerified(*verdict, receiver.limits(), stop)
                                            : Checked<InstallOutcome>(verdict.refused());
  if (!outcome && verdict && stop != nullptr && stop->load()) {
    // Not a refusal: the spool stays for the next start (see the header).
    MESH_INFO("bundle %s version %llu: install interrupted by the stop; it is installed from its "
              "spool at the next start",
              verdict->manifest.name.c_str(),
              static_cast<unsigned long long>(verdict->manifest.version));
    return outcome;
  }
  receiver.discard();
  if (!outcome) {
    Refused r = outcome.refused();
    if (verdict && r.name.empty()) {  // an install-time refusal: the bundle itself is known
      r.name = verdict->manifest.name;
      r.version = verdict->manifest.version;
      r.keyFingerprint = verdict->keyFingerprint;
    }
    MESH_WARN("bundle %s version %llu refused: %s", r.name.empty() ? "?" : r.name.c_str(),
              static_cast<unsigned long long>(r.version), r.describe().c_str());
    audit({"refused", r.name, r.version, refusalName(r.reason), r.message, r.keyFingerprint});
    return r;
  }
  std::string message = "installed in " + outcome->path;
  if (outcome->previous) message += "; previous version " + std::to_string(*outcome->previous);
  MESH_INFO("bundle %s version %llu %s", outcome->name.c_str(),
            static_cast<unsigned long long>(outcome->version), message.c_str());
  audit({"installed", outcome->name, outcome->version, "", message, verdict->keyFingerprint});
  return outcome;
}

Checked<InstallOutcome> Installer::installVerified(const VerifiedBundle& bundle,
                                                   const ReceiveLimits& limits,
                                                   const std::atomic<bool>* stop) {
  const ManifestInfo& m = bundle.manifest;
  const std::string version = std::to_string(m.version);
  auto local = [](const std::string& message) { return refuse(Refusal::kLocalError, message); };

  // A handler name must mean one program on this spore, compared as the registry names them
  // ("x.serve" provides x): otherwise one bundle's handler silently replaces the other's.
  auto installed = list();
  if (!installed) return local(installed.error().message);
  for (const InstalledBundle& other : *installed) {
    if (other.name == m.name) continue;
    for (const std::string& h : m.handlers) {
      for (const std::string& o : other.handlers) {
        if (providedHandler(h) != providedHandler(o)) continue;
        return refuse(Refusal::kHandlerClash,
                      "handler " + providedHandler(h) + " (file " + h +
                          ") is already provided by bundle " + other.name + " version " +
                          std::to_string(other.current) + " (file " + o +
                          "): rename it in one of the bundles");
      }
    }
  }

  // The highest version seen is recorded (durably) before anything is unpacked.
  auto seen = ledger_.seen(m.name);
  if (!seen) return local(seen.error().message);
  SeenVersion state = seen->value_or(SeenVersion{});
  state.version = m.version;
  state.manifestSha256 = bundle.manifestSha256;
  state.installed = false;
  if (auto s = ledger_.record(m.name, state); !s) return local(s.error().message);

  const std::string nameDirPath = root_ + "/" + m.name;
  if (auto s = makeDirs(nameDirPath, 0755); !s) return local(s.error().message);
  if (auto s = fsyncDir(root_); !s) return local(s.error().message);
  UniqueFd nameDir(::open(nameDirPath.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!nameDir.valid()) return local("cannot open " + nameDirPath + ": " + errnoText(errno));
  std::optional<std::uint64_t> current = readVersionLink(nameDir.get(), kCurrent);

  InstallOutcome outcome;
  outcome.name = m.name;
  outcome.version = m.version;
  outcome.path = nameDirPath + "/" + version + "/" + kFilesDir;

  if (current != m.version) {  // (equal only when a crash came after the switch: nothing to redo)
    outcome.previous = current;
    const std::string tmp = version + ".tmp";
    if (auto s = removeTreeAt(nameDir.get(), tmp); !s) return local(s.error().message);
    if (auto s = removeTreeAt(nameDir.get(), version); !s) return local(s.error().message);
    if (::mkdirat(nameDir.get(), tmp.c_str(), 0700) != 0) {
      return local("cannot create " + nameDirPath + "/" + tmp + ": " + errnoText(errno));
    }
    auto unpackInto = [&]() -> std::optional<Refused> {
      UniqueFd versionDir(
          ::openat(nameDir.get(), tmp.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!versionDir.valid()) return local("cannot open " + tmp + ": " + errnoText(errno));
      UniqueFd head(::openat(versionDir.get(), kHeadFile,
                             O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
      if (!head.valid())
        return local("cannot create " + std::string(kHeadFile) + ": " + errnoText(errno));
      if (auto s = writeAll(head.get(), bundle.head, kHeadFile); !s)
        return local(s.error().message);
      if (::fchmod(head.get(), 0644) != 0) return local("cannot chmod " + std::string(kHeadFile));
      if (auto s = fsyncFd(head.get(), kHeadFile); !s) return local(s.error().message);
      if (::mkdirat(versionDir.get(), kFilesDir, 0700) != 0) {
        return local("cannot create " + tmp + "/" + kFilesDir + ": " + errnoText(errno));
      }
      UniqueFd files(
          ::openat(versionDir.get(), kFilesDir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!files.valid())
        return local("cannot open " + tmp + "/" + kFilesDir + ": " + errnoText(errno));
      if (auto r = unpackPayload(bundle, limits, files.get(), stop)) return r;
      if (::fchmod(files.get(), 0755) != 0 || ::fchmod(versionDir.get(), 0755) != 0) {
        return local("cannot set the mode of " + tmp + ": " + errnoText(errno));
      }
      if (auto s = fsyncFd(files.get(), kFilesDir); !s) return local(s.error().message);
      if (auto s = fsyncFd(versionDir.get(), tmp); !s) return local(s.error().message);
      if (::renameat(nameDir.get(), tmp.c_str(), nameDir.get(), version.c_str()) != 0) {
        return local("cannot rename " + tmp + " to " + version + ": " + errnoText(errno));
      }
      return std::nullopt;
    };
    if (auto r = unpackInto()) {
      if (auto s = removeTreeAt(nameDir.get(), tmp); !s) MESH_WARN("%s", s.error().message.c_str());
      return *r;
    }
    if (auto s = fsyncFd(nameDir.get(), nameDirPath); !s) return local(s.error().message);

    // `previous` first, then `current`: a crash between them leaves both on the old version.
    if (current) {
      if (auto s = switchLink(nameDir.get(), kPrevious, std::to_string(*current)); !s) {
        return local(s.error().message);
      }
    } else if (::unlinkat(nameDir.get(), kPrevious, 0) != 0 && errno != ENOENT) {
      return local("cannot remove a stale previous link: " + errnoText(errno));
    }
    if (auto s = switchLink(nameDir.get(), kCurrent, version); !s) return local(s.error().message);
    if (auto s = fsyncFd(nameDir.get(), nameDirPath); !s) return local(s.error().message);
  } else {
    outcome.previous = readVersionLink(nameDir.get(), kPrevious);
  }

  state.installed = true;
  if (auto s = ledger_.record(m.name, state); !s) return local(s.error().message);

  // Keep current and previous; delete every other version.
  for (const std::string& entry : listNames(nameDirPath)) {
    std::uint64_t v = 0;
    if (!parseVersion(entry, &v) || v == m.version ||
        (outcome.previous && v == *outcome.previous)) {
      continue;
    }
    if (auto s = removeTreeAt(nameDir.get(), entry); !s) MESH_WARN("%s", s.error().message.c_str());
  }
  return outcome;
}

Result<Installer::CurrentOf> Installer::openCurrent(const std::string& name) const {
  if (!isValidBundleName(name)) return err("'" + printable(name) + "' is not a bundle name");
  CurrentOf of;
  of.path = root_ + "/" + name;
  of.dir = UniqueFd(::open(of.path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!of.dir.valid()) return err("no bundle " + name + " is installed");
  auto current = readVersionLink(of.dir.get(), kCurrent);
  if (!current) return err("no version of " + name + " is current");
  of.current = *current;
  of.previous = readVersionLink(of.dir.get(), kPrevious);
  return of;
}

Status Installer::markBad(const std::string& name, std::uint64_t version) {
  auto seen = ledger_.seen(name);
  if (!seen) return seen.error();
  if (!seen->has_value()) return err("no version state for " + name + " in " + ledger_.dir());
  SeenVersion state = **seen;
  state.bad.push_back(version);
  return ledger_.record(name, state);
}

Status Installer::rollback(const std::string& name, const std::string& reason) {
  auto of = openCurrent(name);
  if (!of) return of.error();
  if (!of->previous) return err(name + " has no previous version to roll back to");
  struct stat st {};
  const std::string prevName = std::to_string(*of->previous);
  if (::fstatat(of->dir.get(), prevName.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
      !S_ISDIR(st.st_mode)) {
    return err(name + " version " + prevName + " is missing from " + of->path);
  }
  if (auto s = markBad(name, of->current); !s) return s;
  if (auto s = switchLink(of->dir.get(), kCurrent, prevName); !s) return s;
  if (::unlinkat(of->dir.get(), kPrevious, 0) != 0 && errno != ENOENT) {
    return err("cannot remove " + of->path + "/previous: " + errnoText(errno));
  }
  if (auto s = fsyncFd(of->dir.get(), of->path); !s) return s;
  std::string message = "current is version " + prevName + " again; version " +
                        std::to_string(of->current) + " is marked bad";
  MESH_WARN("bundle %s rolled back (%s): %s", name.c_str(), printable(reason).c_str(),
            message.c_str());
  audit({"rolled-back", name, of->current, reason, message, ""});
  return {};
}

Status Installer::withdraw(const std::string& name, const std::string& reason) {
  auto of = openCurrent(name);
  if (!of) return of.error();
  if (of->previous) return err(name + " has a previous version: roll back to it instead");
  if (auto s = markBad(name, of->current); !s) return s;
  if (::unlinkat(of->dir.get(), kCurrent, 0) != 0 && errno != ENOENT) {
    return err("cannot remove " + of->path + "/current: " + errnoText(errno));
  }
  if (auto s = fsyncFd(of->dir.get(), of->path); !s) return s;
  std::string message = "version " + std::to_string(of->current) + " is marked bad and removed; with no previous version, " +
                        name + "'s handlers are gone from this spore until a higher version installs";
  MESH_WARN("bundle %s withdrawn (%s): %s", name.c_str(), printable(reason).c_str(), message.c_str());
  audit({"rolled-back", name, of->current, reason, message, ""});
  return {};
}

std::optional<InstalledBundle> Installer::describe(const std::string& name) const {
  const std::string nameDirPath = root_ + "/" + name;
  UniqueFd nameDir(::open(nameDirPath.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!nameDir.valid()) return std::nullopt;
  auto current = readVersionLink(nameDir.get(), kCurrent);
  if (!current) return std::nullopt;
  const std::string versionDir = nameDirPath + "/" + std::to_string(*current);
  auto headText = util::readFile(versionDir + "/" + kHeadFile, 1 << 20);
  if (!headText) {
    MESH_WARN("bundle %s: %s", name.c_str(), headText.error().message.c_str());
    return std::nullopt;
  }
  auto head = splitBundleHead(*headText);
  auto manifest = head ? decodeManifest(head->manifestBytes) : Result<ManifestInfo>(head.error());
  if (!manifest) {
    MESH_WARN("bundle %s: unreadable %s: %s", name.c_str(), kHeadFile,
              manifest.error().message.c_str());
    return std::nullopt;
  }
  InstalledBundle b;
  b.name = name;
  b.current = *current;
  b.previous = readVersionLink(nameDir.get(), kPrevious);
  b.handlers = manifest->handlers;
  b.keyFingerprint = ReleasePublicKey::fromBytes(head->signerKey)->fingerprint();
  b.expiresMs = manifest->expiresMs;
  b.path = versionDir + "/" + kFilesDir;
  auto seen = ledger_.seen(name);
  if (seen) b.seen = *seen;
  return b;
}

Result<std::vector<InstalledBundle>> Installer::list() const {
  std::vector<InstalledBundle> out;
  for (const std::string& name : listNames(root_)) {
    if (!isValidBundleName(name)) continue;
    if (auto b = describe(name)) out.push_back(std::move(*b));
  }
  return out;
}

std::optional<BundleVersion> Installer::versionOfProgram(std::string_view path) const {
  if (path.size() <= root_.size() || path.substr(0, root_.size()) != root_ || path[root_.size()] != '/') {
    return std::nullopt;
  }
  std::string_view rest = path.substr(root_.size() + 1);  // NAME/VERSION/files/FILE
  const auto slash1 = rest.find('/');
  if (slash1 == std::string_view::npos) return std::nullopt;
  const auto slash2 = rest.find('/', slash1 + 1);
  if (slash2 == std::string_view::npos) return std::nullopt;
  BundleVersion v;
  v.name = std::string(rest.substr(0, slash1));
  if (!isValidBundleName(v.name) || !parseVersion(rest.substr(slash1 + 1, slash2 - slash1 - 1), &v.version) ||
      rest.substr(slash2 + 1, std::string_view(kFilesDir).size() + 1) != std::string(kFilesDir) + "/") {
    return std::nullopt;
  }
  return v;
}

Result<std::map<std::string, std::string>> Installer::installedHandlers() const {
  auto bundles = list();
  if (!bundles) return bundles.error();
  std::map<std::string, std::string> handlers;
  for (const InstalledBundle& b : *bundles) {
    for (const std::string& h : b.handlers) {
      auto [it, inserted] = handlers.emplace(h, b.path + "/" + h);
      if (!inserted) {
        MESH_WARN("handler %s is in bundles %s and %s: using %s", h.c_str(), it->second.c_str(),
                  b.name.c_str(), it->second.c_str());
      }
    }
  }
  return handlers;
}

}  // namespace mesh::bundle
