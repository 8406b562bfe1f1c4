#include "mesh/bundle/fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

namespace mesh::bundle {

using util::err;
using util::Result;
using util::Status;

std::string errnoText(int e) { return std::strerror(e); }

Status writeAll(int fd, std::string_view data, const std::string& what) {
  std::size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return err("cannot write " + what + ": " + errnoText(errno));
    }
    off += static_cast<std::size_t>(n);
  }
  return {};
}

Result<std::size_t> preadAll(int fd, char* buf, std::size_t n, std::uint64_t offset,
                             const std::string& what) {
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::pread(fd, buf + got, n - got, static_cast<off_t>(offset + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return err("cannot read " + what + ": " + errnoText(errno));
    }
    if (r == 0) break;
    got += static_cast<std::size_t>(r);
  }
  return got;
}

Status fsyncFd(int fd, const std::string& what) {
  if (::fsync(fd) != 0) return err("cannot fsync " + what + ": " + errnoText(errno));
  return {};
}

Status fsyncDir(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return err("cannot open directory " + path + ": " + errnoText(errno));
  return fsyncFd(fd.get(), path);
}

Status makeDirs(const std::string& path, unsigned mode) {
  if (path.empty()) return err("empty directory path");
  std::string prefix;
  std::size_t pos = 0;
  while (pos <= path.size()) {
    std::size_t slash = path.find('/', pos);
    if (slash == std::string::npos) slash = path.size();
    prefix = path.substr(0, slash);
    pos = slash + 1;
    if (prefix.empty()) continue;  // leading '/'
    if (::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST) {
      return err("cannot create directory " + prefix + ": " + errnoText(errno));
    }
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return err(path + " exists and is not a directory");
  }
  return {};
}

Status removeTreeAt(int dirfd, const std::string& name) {
  struct stat st {};
  if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return {};
    return err("cannot inspect " + name + ": " + errnoText(errno));
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlinkat(dirfd, name.c_str(), 0) != 0 && errno != ENOENT) {
      return err("cannot remove " + name + ": " + errnoText(errno));
    }
    return {};
  }
  UniqueFd fd(::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return err("cannot open directory " + name + ": " + errnoText(errno));
  std::vector<std::string> children;
  {
    int listFd = ::dup(fd.get());
    if (listFd < 0) return err("cannot list " + name + ": " + errnoText(errno));
    DIR* dir = ::fdopendir(listFd);
    if (dir == nullptr) {
      ::close(listFd);
      return err("cannot list " + name + ": " + errnoText(errno));
    }
    while (dirent* e = ::readdir(dir)) {
      std::string child = e->d_name;
      if (child != "." && child != "..") children.push_back(std::move(child));
    }
    ::closedir(dir);
  }
  for (const std::string& child : children) {
    if (auto s = removeTreeAt(fd.get(), child); !s) return s;
  }
  if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
    return err("cannot remove directory " + name + ": " + errnoText(errno));
  }
  return {};
}

Status removeTree(const std::string& path) { return removeTreeAt(AT_FDCWD, path); }

std::string printable(std::string_view untrusted, std::size_t maxBytes) {
  std::string out;
  std::size_t n = untrusted.size() < maxBytes ? untrusted.size() : maxBytes;
  for (std::size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(untrusted[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (n < untrusted.size()) out += "...";
  return out;
}

}  // namespace mesh::bundle
