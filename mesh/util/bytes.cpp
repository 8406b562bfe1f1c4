#include "mesh/util/bytes.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace mesh::util {

std::string toHex(std::string_view bytes) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

Result<std::string> fromHex(std::string_view hex) {
  if (hex.size() % 2 != 0) return err("hex text has an odd number of digits");
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return err("hex text has a character that is not a hex digit");
    out.push_back(static_cast<char>(hi << 4 | lo));
  }
  return out;
}

std::string toBase64(std::string_view bytes) {
  static const char* kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  auto byte = [&](size_t k) { return static_cast<unsigned>(static_cast<unsigned char>(bytes[k])); };
  for (; i + 3 <= bytes.size(); i += 3) {
    unsigned v = byte(i) << 16 | byte(i + 1) << 8 | byte(i + 2);
    out.push_back(kAlphabet[v >> 18 & 63]);
    out.push_back(kAlphabet[v >> 12 & 63]);
    out.push_back(kAlphabet[v >> 6 & 63]);
    out.push_back(kAlphabet[v & 63]);
  }
  if (bytes.size() - i == 1) {
    unsigned v = byte(i) << 16;
    out.push_back(kAlphabet[v >> 18 & 63]);
    out.push_back(kAlphabet[v >> 12 & 63]);
    out += "==";
  } else if (bytes.size() - i == 2) {
    unsigned v = byte(i) << 16 | byte(i + 1) << 8;
    out.push_back(kAlphabet[v >> 18 & 63]);
    out.push_back(kAlphabet[v >> 12 & 63]);
    out.push_back(kAlphabet[v >> 6 & 63]);
    out.push_back('=');
  }
  return out;
}

bool isUtf8(std::string_view text) {
  size_t i = 0, n = text.size();
  auto at = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  while (i < n) {
    unsigned char c = at(i);
    if (c < 0x80) { ++i; continue; }
    size_t len;
    std::uint32_t cp;
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((at(i + k) & 0xC0) != 0x80) return false;
      cp = cp << 6 | (at(i + k) & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

void appendJsonString(std::string& out, std::string_view text) {
  out.push_back('"');
  for (char ch : text) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
}

std::string jsonNumber(double value, int decimals) {
  if (!std::isfinite(value)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", std::clamp(decimals, 0, 17), value);
  return buf;
}

std::string jsonString(std::string_view text) {
  std::string out;
  appendJsonString(out, text);
  return out;
}

namespace {
Result<std::uint64_t> parseNumberPrefix(std::string_view text, size_t* used) {
  std::uint64_t v = 0;
  size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    std::uint64_t d = static_cast<std::uint64_t>(text[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return err("number too large: " + std::string(text));
    v = v * 10 + d;
    ++i;
  }
  if (i == 0) return err("expected a number, got '" + std::string(text) + "'");
  *used = i;
  return v;
}
}  // namespace

bool parseU64(std::string_view text, std::uint64_t* out) {
  size_t used = 0;
  auto n = parseNumberPrefix(text, &used);
  if (!n || used != text.size()) return false;
  *out = *n;
  return true;
}

Result<std::uint64_t> parseSize(std::string_view text) {
  size_t used = 0;
  auto n = parseNumberPrefix(text, &used);
  if (!n) return n.error();
  std::string_view unit = text.substr(used);
  std::uint64_t mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "K" || unit == "KiB" || unit == "k") mult = 1ull << 10;
  else if (unit == "M" || unit == "MiB") mult = 1ull << 20;
  else if (unit == "G" || unit == "GiB") mult = 1ull << 30;
  else return err("unknown size unit in '" + std::string(text) + "': use K, M or G");
  if (*n > UINT64_MAX / mult) return err("size too large: " + std::string(text));
  return *n * mult;
}

Result<std::int64_t> parseDurationMs(std::string_view text) {
  if (!text.empty() && text[0] == '-') return err("a duration cannot be negative: '" + std::string(text) + "'");
  size_t used = 0;
  auto n = parseNumberPrefix(text, &used);
  if (!n) return n.error();
  std::string_view unit = text.substr(used);
  std::int64_t mult;
  if (unit == "ms") mult = 1;
  else if (unit.empty() || unit == "s") mult = 1000;
  else if (unit == "m") mult = 60'000;
  else if (unit == "h") mult = 3'600'000;
  else if (unit == "d") mult = 86'400'000;
  else return err("unknown duration unit in '" + std::string(text) + "': use ms, s, m, h or d");
  if (*n > static_cast<std::uint64_t>(INT64_MAX / mult)) return err("duration too large: " + std::string(text));
  return static_cast<std::int64_t>(*n) * mult;
}

std::vector<std::string> splitList(std::string_view text, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(sep, start);
    if (end == std::string_view::npos) end = text.size();
    if (end > start) out.emplace_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

Result<std::string> readFile(const std::string& path, std::uint64_t maxBytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return err("cannot open " + path + ": " + std::strerror(errno));
  std::string out;
  // One allocation of the file's size (growing the string as it is read would copy and fault in
  // about twice the file: 320 ms instead of ~140 ms for 50 MB on our VMs); a file that grows
  // meanwhile, or a pipe, is still read to its end.
  struct stat st{};
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
      static_cast<std::uint64_t>(st.st_size) <= maxBytes) {
    out.reserve(static_cast<std::size_t>(st.st_size) + 1);
  }
  constexpr std::size_t kGrowBytes = 65536;
  for (;;) {
    // Read straight into the string's spare capacity, growing it only when there is none left
    // (a file of known size needs no growth: its last read, of the one spare byte, sees EOF).
    // Never more than maxBytes + 1: one byte over the limit is enough to refuse the file.
    std::uint64_t room = maxBytes + 1 - out.size();
    if (out.capacity() == out.size()) {
      out.reserve(out.size() + static_cast<std::size_t>(std::min<std::uint64_t>(
                                   std::max(out.size(), kGrowBytes), room)));
    }
    std::size_t old = out.size();
    out.resize(old + static_cast<std::size_t>(std::min<std::uint64_t>(out.capacity() - old, room)));
    ssize_t n = ::read(fd, out.data() + old, out.size() - old);
    out.resize(old + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return err("cannot read " + path + ": " + std::strerror(e));
    }
    if (n == 0) break;
    if (out.size() > maxBytes) {
      ::close(fd);
      return err(path + " is larger than " + std::to_string(maxBytes) + " bytes");
    }
  }
  ::close(fd);
  return out;
}

Status writeFileAtomic(const std::string& path, std::string_view data, unsigned mode) {
  std::string tmp = path + ".tmp";
  ::unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return err("cannot create " + tmp + ": " + std::strerror(errno));
  if (::fchmod(fd, mode) != 0) {
    int e = errno;
    ::close(fd);
    return err("cannot set the mode of " + tmp + ": " + std::strerror(e));
  }
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return err("cannot write " + tmp + ": " + std::strerror(e));
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) return err("cannot flush " + tmp + ": " + std::strerror(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0) return err("cannot rename " + tmp + ": " + std::strerror(errno));
  return {};
}

Result<UniqueFd> lockDir(const std::string& dir, const std::string& what) {
  const std::string path = dir + "/.lock";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd.valid()) return err("cannot open " + path + ": " + std::strerror(errno));
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return err("cannot lock " + path + ": " + std::strerror(errno));
    char holder[32] = {};
    ssize_t n = ::pread(fd.get(), holder, sizeof holder - 1, 0);
    std::string pid = n > 0 ? std::string(holder, static_cast<std::size_t>(n)) : "";
    pid.erase(std::remove_if(pid.begin(), pid.end(), [](char c) { return c < '0' || c > '9'; }), pid.end());
    return err("another " + what + (pid.empty() ? "" : " (process " + pid + ")") + " is using " + dir +
               ": stop it, or give this one another --data-dir");
  }
  const std::string mine = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd.get(), 0) != 0 || ::pwrite(fd.get(), mine.data(), mine.size(), 0) < 0) {
    return err("cannot write " + path + ": " + std::strerror(errno));
  }
  return fd;
}


}  // namespace mesh::util
