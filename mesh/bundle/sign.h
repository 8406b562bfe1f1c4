// Signing: turns a directory into a bundle file with the release key (what `mesh bundle sign`
// runs, usually on an offline machine). The payload is archived to a temporary file beside the
// output while it is hashed, so memory stays bounded whatever the size of the tree.
//
// Thread rule: a plain function; concurrent calls must use different output paths.
// Errors: Result with one line that names the offending file and says what to do (a symbolic
// link, a device, a name that breaks a rule, an unwritable output).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mesh/bundle/manifest.h"
#include "mesh/bundle/release_key.h"
#include "mesh/util/result.h"

namespace mesh::bundle {

struct SignOptions {
  std::string name;                   // [a-z0-9][a-z0-9._-]{0,63}
  std::uint64_t version = 0;          // >= 1; must exceed every version published before
  std::int64_t createdMs = 0;         // wall clock, ms since the Unix epoch
  std::int64_t expiresMs = 0;         // must be after createdMs
  std::vector<std::string> handlers;  // empty: every top-level executable file of the directory
};

struct SignedBundle {
  ManifestInfo manifest;
  std::string keyFingerprint;
  std::uint64_t bundleBytes = 0;  // size of the file written
  std::uint64_t entries = 0;      // files and directories in the payload
};

// Archives everything under `dir` (regular files and directories only, deterministic order, modes
// 0644/0755 set from the execute bit), builds and signs the manifest, and writes the bundle to
// `outPath` atomically (outPath.tmp, fsync, rename). Each handler must be a top-level executable.
util::Result<SignedBundle> signBundle(const std::string& dir, const SignOptions& options,
                                      const ReleaseKey& key, const std::string& outPath);

}  // namespace mesh::bundle
