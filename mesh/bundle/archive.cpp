#include "mesh/bundle/archive.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "mesh/bundle/fs.h"
#include "mesh/util/bytes.h"

namespace mesh::bundle {

using util::err;
using util::Result;
using util::Status;

namespace {

constexpr std::size_t kPiece = 64 * 1024;

std::uint64_t getLe(const unsigned char* p, int n) {
  std::uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

void putLe(std::string& out, std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(v >> (8 * i) & 0xff));
}

std::string octal(std::uint32_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", mode);
  return buf;
}

Refused archiveRefusal(Refusal reason, std::string message) {
  return refuse(reason, "payload archive: " + std::move(message));
}

}  // namespace

std::string archivePathProblem(std::string_view path) {
  if (path.empty()) return "empty path";
  if (path.size() > kMaxArchivePathBytes) return "path longer than 1024 bytes";
  if (path.front() == '/') return "absolute path '" + printable(path) + "'";
  for (char ch : path) {
    auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) return "path '" + printable(path) + "' holds a NUL or control byte";
  }
  if (!util::isUtf8(path)) return "path '" + printable(path) + "' is not UTF-8";
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    std::string_view part = path.substr(start, slash - start);
    if (part.empty()) return "path '" + printable(path) + "' has an empty component";
    if (part == ".") return "path '" + printable(path) + "' has a '.' component";
    if (part == "..") return "path '" + printable(path) + "' has a '..' component";
    start = slash + 1;
  }
  return {};
}

std::string encodeEntryHeader(std::uint8_t type, std::uint32_t mode, std::string_view path,
                              std::uint64_t size) {
  std::string out;
  out.reserve(kArchiveEntryHeaderBytes + path.size());
  out.push_back(static_cast<char>(type));
  putLe(out, mode, 2);
  putLe(out, path.size(), 2);
  putLe(out, size, 8);
  out.append(path);
  return out;
}

// ---- ArchiveWriter -------------------------------------------------------------------------

Status ArchiveWriter::start() {
  MESH_ASSERT(!finished_, "nothing is added to an archive after finish()");
  if (started_) return {};
  started_ = true;
  return sink_(kArchiveMagic);
}

Status ArchiveWriter::header(EntryType type, std::uint32_t mode, std::string_view path,
                             std::uint64_t size) {
  if (auto s = start(); !s) return s;
  if (std::string problem = archivePathProblem(path); !problem.empty()) {
    return err("cannot put '" + printable(path) + "' in a bundle: " + problem);
  }
  if (type == EntryType::kDirectory && mode != 0755) return err("directories are 0755");
  if (type == EntryType::kFile && mode != 0644 && mode != 0755) {
    return err("file modes are 0644 or 0755, not " + octal(mode));
  }
  return sink_(encodeEntryHeader(static_cast<std::uint8_t>(type), mode, path, size));
}

Status ArchiveWriter::addDirectory(std::string_view path) {
  return header(EntryType::kDirectory, 0755, path, 0);
}

Status ArchiveWriter::addFile(std::string_view path, std::uint32_t mode,
                              std::string_view contents) {
  if (auto s = header(EntryType::kFile, mode, path, contents.size()); !s) return s;
  return sink_(contents);
}

Status ArchiveWriter::addFileFromFd(std::string_view path, std::uint32_t mode, int fd,
                                    std::uint64_t size, const std::string& what) {
  if (auto s = header(EntryType::kFile, mode, path, size); !s) return s;
  std::string buf(kPiece, '\0');
  std::uint64_t left = size;
  while (left > 0) {
    std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(left, kPiece));
    ssize_t n = ::read(fd, buf.data(), want);
    if (n < 0) {
      if (errno == EINTR) continue;
      return err("cannot read " + what + ": " + errnoText(errno));
    }
    if (n == 0) return err(what + " shrank while it was being signed: sign again");
    if (auto s = sink_({buf.data(), static_cast<std::size_t>(n)}); !s) return s;
    left -= static_cast<std::uint64_t>(n);
  }
  return {};
}

Status ArchiveWriter::finish() {
  if (auto s = start(); !s) return s;
  finished_ = true;
  return sink_(encodeEntryHeader(0, 0, {}, 0));
}

// ---- archiveDirectory ----------------------------------------------------------------------

namespace {

Status walk(const std::string& root, const std::string& rel, ArchiveWriter& writer,
            ArchivedTree& tree) {
  std::string dirPath = rel.empty() ? root : root + "/" + rel;
  std::vector<std::string> names;
  {
    DIR* dir = ::opendir(dirPath.c_str());
    if (dir == nullptr) return err("cannot list " + dirPath + ": " + errnoText(errno));
    while (dirent* e = ::readdir(dir)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(std::move(name));
    }
    ::closedir(dir);
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    std::string childRel = rel.empty() ? name : rel + "/" + name;
    std::string childPath = root + "/" + childRel;
    struct stat st {};
    if (::lstat(childPath.c_str(), &st) != 0) {
      return err("cannot inspect " + childPath + ": " + errnoText(errno));
    }
    if (S_ISLNK(st.st_mode)) {
      return err(childPath + " is a symbolic link: a bundle holds only regular files and " +
                 "directories; copy the target in instead");
    }
    if (S_ISDIR(st.st_mode)) {
      if (auto s = writer.addDirectory(childRel); !s) return s;
      ++tree.entries;
      if (auto s = walk(root, childRel, writer, tree); !s) return s;
      continue;
    }
    if (!S_ISREG(st.st_mode)) {
      return err(childPath + " is a device, FIFO or socket: a bundle holds only regular files " +
                 "and directories; remove it");
    }
    UniqueFd fd(::open(childPath.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid()) return err("cannot open " + childPath + ": " + errnoText(errno));
    struct stat opened {};
    if (::fstat(fd.get(), &opened) != 0 || !S_ISREG(opened.st_mode) || opened.st_ino != st.st_ino) {
      return err(childPath + " changed while it was being signed: sign again");
    }
    std::uint32_t mode = (opened.st_mode & 0111) != 0 ? 0755 : 0644;
    auto size = static_cast<std::uint64_t>(opened.st_size);
    if (auto s = writer.addFileFromFd(childRel, mode, fd.get(), size, childPath); !s) return s;
    ++tree.entries;
    tree.unpackedBytes += size;
    if (rel.empty() && mode == 0755) tree.topLevelExecutables.push_back(name);
  }
  return {};
}

}  // namespace

Result<ArchivedTree> archiveDirectory(const std::string& dir, ArchiveWriter& writer) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return err(dir + " is not a directory: give the directory that holds the bundle's files");
  }
  ArchivedTree tree;
  if (auto s = walk(dir, "", writer, tree); !s) return s.error();
  if (auto s = writer.finish(); !s) return s.error();
  return tree;
}

// ---- ArchiveReader -------------------------------------------------------------------------

ArchiveReader::ArchiveReader(int fd, std::uint64_t offset, std::uint64_t length,
                             const ArchiveLimits& limits)
    : fd_(fd), pos_(offset), end_(offset + length), limits_(limits) {}

Checked<std::optional<ArchiveEntry>> ArchiveReader::next() {
  if (done_) return std::optional<ArchiveEntry>();
  pos_ += dataLeft_;  // skip contents nobody read
  dataLeft_ = 0;
  if (!sawMagic_) {
    char magic[8];
    if (end_ - pos_ < sizeof magic) {
      return archiveRefusal(Refusal::kMalformedArchive, "shorter than its magic");
    }
    auto got = preadAll(fd_, magic, sizeof magic, pos_, "the spooled payload");
    if (!got) return refuse(Refusal::kLocalError, got.error().message);
    if (*got != sizeof magic || std::string_view(magic, sizeof magic) != kArchiveMagic) {
      return archiveRefusal(Refusal::kMalformedArchive, "bad magic (not an HMARCHV1 archive)");
    }
    pos_ += sizeof magic;
    sawMagic_ = true;
  }
  return readEntry();
}

Checked<std::optional<ArchiveEntry>> ArchiveReader::readEntry() {
  unsigned char h[kArchiveEntryHeaderBytes];
  if (end_ - pos_ < sizeof h) {
    return archiveRefusal(Refusal::kMalformedArchive,
                          "ends inside an entry header (no end marker)");
  }
  auto got = preadAll(fd_, reinterpret_cast<char*>(h), sizeof h, pos_, "the spooled payload");
  if (!got) return refuse(Refusal::kLocalError, got.error().message);
  if (*got != sizeof h)
    return archiveRefusal(Refusal::kMalformedArchive, "spool shorter than expected");
  pos_ += sizeof h;
  unsigned type = h[0];
  auto mode = static_cast<std::uint32_t>(getLe(h + 1, 2));
  auto pathLen = static_cast<std::size_t>(getLe(h + 3, 2));
  std::uint64_t size = getLe(h + 5, 8);

  if (type == static_cast<unsigned>(EntryType::kEnd)) {
    if (mode != 0 || pathLen != 0 || size != 0) {
      return archiveRefusal(Refusal::kMalformedArchive, "end marker with non-zero fields");
    }
    if (pos_ != end_) {
      return archiveRefusal(Refusal::kMalformedArchive,
                            std::to_string(end_ - pos_) + " bytes after the end marker");
    }
    done_ = true;
    return std::optional<ArchiveEntry>();
  }
  if (type != static_cast<unsigned>(EntryType::kDirectory) &&
      type != static_cast<unsigned>(EntryType::kFile)) {
    return archiveRefusal(Refusal::kUnsupportedEntry,
                          "entry type " + std::to_string(type) +
                              " is refused: only regular files and directories are unpacked "
                              "(no links, devices or FIFOs)");
  }
  if (pathLen == 0 || pathLen > kMaxArchivePathBytes) {
    return archiveRefusal(Refusal::kUnsafePath,
                          "path length " + std::to_string(pathLen) + " is outside 1..1024");
  }
  if (end_ - pos_ < pathLen)
    return archiveRefusal(Refusal::kMalformedArchive, "ends inside a path");
  ArchiveEntry entry;
  entry.type = static_cast<EntryType>(type);
  entry.mode = mode;
  entry.size = size;
  entry.path.resize(pathLen);
  got = preadAll(fd_, entry.path.data(), pathLen, pos_, "the spooled payload");
  if (!got) return refuse(Refusal::kLocalError, got.error().message);
  if (*got != pathLen)
    return archiveRefusal(Refusal::kMalformedArchive, "spool shorter than expected");
  pos_ += pathLen;

  if (std::string problem = archivePathProblem(entry.path); !problem.empty()) {
    return archiveRefusal(Refusal::kUnsafePath, problem);
  }
  if (paths_.count(entry.path) != 0) {
    return archiveRefusal(Refusal::kDuplicatePath, "'" + printable(entry.path) + "' appears twice");
  }
  std::size_t slash = entry.path.rfind('/');
  if (slash != std::string::npos && directories_.count(entry.path.substr(0, slash)) == 0) {
    return archiveRefusal(
        Refusal::kMalformedArchive,
        "the parent directory of '" + printable(entry.path) + "' is not declared before it");
  }
  if (++entries_ > limits_.maxEntries) {
    return archiveRefusal(Refusal::kTooManyFiles,
                          "more than " + std::to_string(limits_.maxEntries) + " entries");
  }
  if (entry.type == EntryType::kDirectory) {
    if (mode != 0755) {
      return archiveRefusal(Refusal::kBadMode, "directory '" + printable(entry.path) +
                                                   "' has mode " + octal(mode) +
                                                   " (directories are 0755)");
    }
    if (size != 0) {
      return archiveRefusal(Refusal::kMalformedArchive,
                            "directory '" + printable(entry.path) + "' declares contents");
    }
    directories_.insert(entry.path);
  } else {
    if (mode != 0644 && mode != 0755) {
      return archiveRefusal(Refusal::kBadMode, "file '" + printable(entry.path) + "' has mode " +
                                                   octal(mode) + " (files are 0644 or 0755)");
    }
    if (size > limits_.maxUnpackedBytes - unpackedBytes_) {
      return archiveRefusal(
          Refusal::kUnpackedTooLarge,
          "files add up to more than " + std::to_string(limits_.maxUnpackedBytes) + " bytes");
    }
    if (size > end_ - pos_) {
      return archiveRefusal(Refusal::kMalformedArchive,
                            "file '" + printable(entry.path) + "' declares " +
                                std::to_string(size) + " bytes but only " +
                                std::to_string(end_ - pos_) + " remain");
    }
    unpackedBytes_ += size;
    dataLeft_ = size;
  }
  paths_.insert(entry.path);
  return std::optional<ArchiveEntry>(std::move(entry));
}

Status ArchiveReader::copyData(const std::function<Status(std::string_view)>& sink) {
  std::string buf(static_cast<std::size_t>(std::min<std::uint64_t>(dataLeft_, kPiece)), '\0');
  while (dataLeft_ > 0) {
    std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(dataLeft_, kPiece));
    auto got = preadAll(fd_, buf.data(), want, pos_, "the spooled payload");
    if (!got) return got.error();
    if (*got != want) return err("the spooled payload is shorter than when it was verified");
    if (auto s = sink({buf.data(), want}); !s) return s;
    pos_ += want;
    dataLeft_ -= want;
  }
  return {};
}

}  // namespace mesh::bundle
