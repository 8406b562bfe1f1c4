#include "mesh/bundle/ledger.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>

#include "mesh/bundle/fs.h"
#include "mesh/util/bytes.h"

namespace mesh::bundle {

using util::err;
using util::Result;
using util::Status;

namespace {

constexpr std::string_view kHeader = "hive-mesh seen v1";

using util::parseU64;

std::string encode(const SeenVersion& s) {
  std::string out(kHeader);
  out += "\nversion " + std::to_string(s.version);
  out += "\nmanifest-sha256 " + s.manifestSha256;
  out += std::string("\ninstalled ") + (s.installed ? "1" : "0");
  out += "\nbad";
  for (std::uint64_t v : s.bad) out += " " + std::to_string(v);
  out += "\n";
  return out;
}

Result<SeenVersion> decode(const std::string& text) {
  std::vector<std::string> lines = util::splitList(text, '\n');
  auto value = [&](std::size_t i, std::string_view key) -> std::optional<std::string_view> {
    if (i >= lines.size()) return std::nullopt;
    std::string_view line = lines[i];
    if (line == key) return std::string_view();
    if (line.size() <= key.size() || line.substr(0, key.size()) != key || line[key.size()] != ' ') {
      return std::nullopt;
    }
    return line.substr(key.size() + 1);
  };
  SeenVersion s;
  auto version = value(1, "version");
  auto digest = value(2, "manifest-sha256");
  auto installed = value(3, "installed");
  auto bad = value(4, "bad");
  if (lines.size() != 5 || lines[0] != kHeader || !version || !parseU64(*version, &s.version) ||
      !digest || digest->size() != 64 || !util::fromHex(*digest).ok() || !installed ||
      (*installed != "0" && *installed != "1") || !bad) {
    return err("malformed");
  }
  s.manifestSha256 = std::string(*digest);
  s.installed = *installed == "1";
  for (const std::string& item : util::splitList(*bad, ' ')) {
    std::uint64_t v = 0;
    if (!parseU64(item, &v)) return err("malformed bad-version list");
    s.bad.push_back(v);
  }
  std::sort(s.bad.begin(), s.bad.end());
  return s;
}

}  // namespace

std::optional<Refused> checkVersion(const ManifestInfo& manifest,
                                    const std::string& manifestSha256Hex,
                                    const std::optional<SeenVersion>& seen) {
  if (!seen) return std::nullopt;
  const std::string v = std::to_string(manifest.version);
  if (std::binary_search(seen->bad.begin(), seen->bad.end(), manifest.version)) {
    return refuse(Refusal::kBadVersion,
                  manifest.name + " version " + v + " was rolled back and marked bad");
  }
  if (manifest.version > seen->version) return std::nullopt;
  if (manifest.version == seen->version) {
    if (!seen->installed && manifestSha256Hex == seen->manifestSha256) return std::nullopt;
    return refuse(Refusal::kReplayedVersion, manifest.name + " version " + v +
                                                 " was already accepted: a new release needs a "
                                                 "higher version");
  }
  return refuse(Refusal::kOlderVersion,
                manifest.name + " version " + v + " is older than version " +
                    std::to_string(seen->version) + " already seen (rollback attempt?)");
}

Result<FileVersionLedger> FileVersionLedger::open(const std::string& dir) {
  if (auto s = makeDirs(dir, 0700); !s) return s.error();
  return FileVersionLedger(dir);
}

Result<std::optional<SeenVersion>> FileVersionLedger::seen(const std::string& name) const {
  MESH_ASSERT(isValidBundleName(name), "ledger names are valid bundle names");
  const std::string path = dir_ + "/" + name;
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return std::optional<SeenVersion>();
    return err("cannot inspect the version state " + path + ": " + errnoText(errno));
  }
  auto text = util::readFile(path, 64 * 1024);
  if (!text) return text.error();
  auto s = decode(*text);
  if (!s) {
    return err("the version state " + path +
               " is corrupt; restore it from a backup (deleting it "
               "drops rollback protection for " +
               name + ")");
  }
  return std::optional<SeenVersion>(std::move(*s));
}

Status FileVersionLedger::record(const std::string& name, const SeenVersion& state) {
  MESH_ASSERT(isValidBundleName(name), "ledger names are valid bundle names");
  MESH_ASSERT(state.manifestSha256.size() == 64, "hex manifest digest");
  auto old = seen(name);
  if (old.ok() && old->has_value()) {
    MESH_ASSERT((*old)->version <= state.version, "the highest seen version never goes down");
  }
  SeenVersion sorted = state;
  std::sort(sorted.bad.begin(), sorted.bad.end());
  sorted.bad.erase(std::unique(sorted.bad.begin(), sorted.bad.end()), sorted.bad.end());
  if (auto s = util::writeFileAtomic(dir_ + "/" + name, encode(sorted), 0600); !s) return s;
  return fsyncDir(dir_);
}

}  // namespace mesh::bundle
