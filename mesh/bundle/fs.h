// File-system helpers for the bundle module: an owned file descriptor, whole writes and reads,
// fsync of directories, and removal of a tree that never follows a symbolic link.
// Thread rule: the functions are safe from any thread; a UniqueFd belongs to one owner.
// Errors: every function that touches the disk returns Status/Result with the path and errno text.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "mesh/util/result.h"
#include "mesh/util/unique_fd.h"

namespace mesh::bundle {

using util::UniqueFd;  // mesh/util/unique_fd.h

std::string errnoText(int e);

// Writes all of `data` (retrying short writes and EINTR). `what` names the file in the error.
util::Status writeAll(int fd, std::string_view data, const std::string& what);
// Reads up to `n` bytes at `offset`; returns fewer only at the end of the file.
util::Result<std::size_t> preadAll(int fd, char* buf, std::size_t n, std::uint64_t offset,
                                   const std::string& what);
util::Status fsyncFd(int fd, const std::string& what);
util::Status fsyncDir(const std::string& path);
// mkdir -p; new directories get `mode` (existing ones are left as they are).
util::Status makeDirs(const std::string& path, unsigned mode);
// Removes dirfd/name and everything under it without following links; a missing name is success.
util::Status removeTreeAt(int dirfd, const std::string& name);
util::Status removeTree(const std::string& path);

// Untrusted text made safe for a log line or an error message: bytes outside printable ASCII
// become \xNN, and the result is cut at `maxBytes` input bytes with "...".
std::string printable(std::string_view untrusted, std::size_t maxBytes = 120);

}  // namespace mesh::bundle
