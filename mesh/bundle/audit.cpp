#include "mesh/bundle/audit.h"

#include <fcntl.h>

#include <cerrno>
#include <ctime>

#include "mesh/util/bytes.h"

namespace mesh::bundle {

using util::err;
using util::Result;
using util::Status;

namespace {

void field(std::string& out, const char* key, std::string_view value) {
  out += ",\"";
  out += key;
  out += "\":";
  util::appendJsonString(out, util::isUtf8(value) ? std::string(value) : printable(value, 4096));
}

}  // namespace

std::string auditLine(const AuditEvent& event, std::int64_t wallMs) {
  std::time_t secs = static_cast<std::time_t>(wallMs / 1000);
  std::tm tm{};
  char iso[32] = "";
  if (gmtime_r(&secs, &tm) != nullptr) std::strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::string line = "{\"time\":";
  util::appendJsonString(line, iso);
  line += ",\"time_ms\":" + std::to_string(wallMs);
  field(line, "event", event.event);
  field(line, "name", event.name);
  line += ",\"version\":" + std::to_string(event.version);
  field(line, "reason", event.reason);
  field(line, "message", event.message);
  field(line, "key", event.keyFingerprint);
  line += "}\n";
  return line;
}

Result<AuditLog> AuditLog::open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640));
  if (!fd.valid()) return err("cannot open the audit log " + path + ": " + errnoText(errno));
  return AuditLog(std::move(fd), path);
}

Status AuditLog::append(const AuditEvent& event, std::int64_t wallMs) {
  std::string line = auditLine(event, wallMs);
  ssize_t n;
  do {
    n = ::write(fd_.get(), line.data(),
                line.size());  // one write per line: O_APPEND keeps it whole
  } while (n < 0 && errno == EINTR);
  if (n < 0) return err("cannot append to the audit log " + path_ + ": " + errnoText(errno));
  if (static_cast<std::size_t>(n) != line.size()) {
    return err("short write to the audit log " + path_ + " (disk full?)");
  }
  return fsyncFd(fd_.get(), path_);
}

}  // namespace mesh::bundle
