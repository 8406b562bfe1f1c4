#include "mesh/node/cli.h"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>

#include <sys/stat.h>

#include <dirent.h>

#include "mesh/bundle/release_key.h"
#include "mesh/bundle/sign.h"
#include "mesh/crypto/keys.h"
#include "mesh/exec/mapreduce.h"
#include "mesh/node/client.h"
#include "mesh/node/common.h"
#include "mesh/store/db.h"
#include "mesh/store/key_store.h"
#include "mesh/transport/sockets.h"
#include "mesh/util/bytes.h"
#include "mesh/util/clock.h"

namespace mesh::node {

namespace {

using config::CliCommand;

int fail(const util::Error& e) {
  std::fprintf(stderr, "mesh: %s\n", e.message.c_str());
  return e.code ? e.code : kExitFailed;
}

int usageError(const std::string& message) {
  std::fprintf(stderr, "mesh: %s (see `mesh --help`)\n", message.c_str());
  return kExitUsage;
}

util::Result<std::uint64_t> parseId(const std::vector<std::string>& args, const char* what) {
  if (args.size() != 1) return util::err(std::string("give exactly one ") + what, kExitUsage);
  const std::string& s = args[0];
  if (s.empty() || s.size() > 19 || s.find_first_not_of("0123456789") != std::string::npos) {
    return util::err(std::string("'") + s + "' is not a " + what + " id", kExitUsage);
  }
  return std::stoull(s);
}

// --files-from: the paths in LIST (a file, or - for stdin), each ended by `end` ('\n', or NUL for
// --null); empty entries are skipped. A path with a newline in it needs --null.
util::Result<std::vector<std::string>> readFileList(const std::string& list, char end) {
  std::string text;
  if (list == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    if (std::cin.bad()) return util::err("cannot read the list of files from stdin", kExitUsage);
  } else {
    auto read = util::readFile(list);
    if (!read) return util::err("cannot read the list of files " + list + ": " + read.error().message, kExitUsage);
    text = std::move(*read);
  }
  std::vector<std::string> paths;
  for (std::size_t at = 0; at < text.size();) {
    std::size_t stop = text.find(end, at);
    if (stop == std::string::npos) stop = text.size();
    if (stop > at) paths.emplace_back(text, at, stop - at);
    at = stop + 1;
  }
  return paths;
}

std::vector<std::uint64_t> ids(capnp::List<std::uint64_t>::Reader list) {
  std::vector<std::uint64_t> out;
  for (auto id : list) out.push_back(id);
  return out;
}

// The dependency fields of a batch in --json (protocol section 4.21): ,"after":[..],"after_done":[..]
// and, while it is held, "waiting_for":[..]; nothing for a batch that waits for none.
std::string waitsJson(const ProgressView& v) {
  if (v.after.empty() && v.afterDone.empty()) return "";
  std::string out = ",\"after\":" + jsonIds(v.after) + ",\"after_done\":" + jsonIds(v.afterDone);
  if (v.waiting) out += ",\"waiting_for\":" + jsonIds(v.waitingFor);
  return out;
}

// A time for --json: milliseconds since the epoch, or null when it is unknown or does not apply
// (the wire says 0: an attempt assigned before a nexus restart, a task not finished, ...).
std::string jsonTime(std::int64_t ms) { return ms > 0 ? std::to_string(ms) : "null"; }

std::string isoTime(std::int64_t ms) {
  if (ms <= 0) return "-";
  time_t secs = static_cast<time_t>(ms / 1000);
  tm utc{};
  gmtime_r(&secs, &utc);
  char buf[96];  // room for any year the int holds
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<int>(ms % 1000));
  return buf;
}

// At most `max` bytes of `s` for a table column, cut on a UTF-8 boundary, marked with "~" when cut.
std::string column(std::string s, std::size_t max) {
  if (s.size() <= max) return s;
  std::size_t end = max - 1;
  while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
  return s.substr(0, end) + "~";
}

// Text for a terminal: printable as is, everything else escaped.
std::string escaped(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\\') out += "\\\\";
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else out.push_back(static_cast<char>(c));
  }
  return out;
}

// JSON field for bytes that may not be text: "name": "..." or "name_base64": "...".
void appendBytes(std::string& out, const char* name, std::string_view bytes) {
  if (util::isUtf8(bytes)) {
    out += std::string("\"") + name + "\":";
    util::appendJsonString(out, bytes);
  } else {
    out += std::string("\"") + name + "_base64\":";
    util::appendJsonString(out, util::toBase64(bytes));
  }
}

util::Result<std::unique_ptr<Client>> connectClient(zmq::context_t& ctx, const CliCommand& cmd) {
  if (cmd.client.nexusKey.empty()) return util::err("no nexus key given: set MESH_NEXUS_KEY or --nexus-key", kExitUsage);
  auto key = crypto::loadPublicKey(cmd.client.nexusKey);
  if (!key) return util::err("nexus key: " + key.error().message, kExitUsage);
  if (cmd.client.key.empty()) return util::err("no client key given: set MESH_KEY or --key", kExitUsage);
  ClientOptions o;
  o.endpoint = cmd.client.nexus;
  o.nexusKey = *key;
  o.keyFile = cmd.client.key;
  o.timeoutMs = cmd.client.timeoutMs;
  return Client::connect(ctx, o);
}

// ---- keys ------------------------------------------------------------------------------------

util::Result<store::Db> openNexusDb(const CliCommand& cmd) {
  if (cmd.client.dataDir.empty()) {
    return util::err("`mesh keys` works on the nexus host: give --data-dir (or MESH_DATA_DIR) of the nexus", kExitUsage);
  }
  std::string path = cmd.client.dataDir + "/nexus.db";
  if (access(path.c_str(), F_OK) != 0) {
    return util::err("no nexus database at " + path + ": is --data-dir the nexus data dir?", kExitUsage);
  }
  return store::Db::open(path);
}

int keysCommand(const CliCommand& cmd) {
  const std::string& sub = cmd.words[1];
  const auto& clock = util::systemClock();
  if (sub == "gen") {
    if (cmd.args.size() != 1) return usageError("keys gen takes one FILE");
    if (cmd.release) {
      auto key = bundle::ReleaseKey::generate();
      if (auto s = key.save(cmd.args[0]); !s) return fail(s.error());
      std::string fp = key.publicKey().fingerprint();
      if (cmd.client.json) {
        std::printf("{\"file\":%s,\"public_file\":%s,\"fingerprint\":%s}\n", util::jsonString(cmd.args[0]).c_str(),
                    util::jsonString(cmd.args[0] + ".pub").c_str(), util::jsonString(fp).c_str());
      } else {
        std::printf("wrote release key %s (secret, mode 600: keep it offline) and %s.pub (give it to the nexus and "
                    "spores with --trust)\nfingerprint %s\n",
                    cmd.args[0].c_str(), cmd.args[0].c_str(), fp.c_str());
      }
      return 0;
    }
    auto pair = crypto::KeyPair::generate();
    if (auto s = crypto::saveKeyPair(cmd.args[0], pair); !s) return fail(s.error());
    if (cmd.client.json) {
      std::printf("{\"file\":%s,\"public_key\":%s,\"fingerprint\":%s}\n", util::jsonString(cmd.args[0]).c_str(),
                  util::jsonString(pair.publicKey.z85()).c_str(), util::jsonString(pair.publicKey.fingerprint()).c_str());
    } else {
      std::printf("wrote %s (secret, mode 600) and %s.pub\nfingerprint %s\n", cmd.args[0].c_str(), cmd.args[0].c_str(),
                  pair.publicKey.fingerprint().c_str());
    }
    return 0;
  }
  if (sub == "fingerprint") {
    if (cmd.args.size() != 1) return usageError("keys fingerprint takes one key file (or z85 key)");
    auto key = crypto::loadPublicKey(cmd.args[0]);
    if (!key) return fail(util::err(key.error().message, kExitUsage));  // bad input, as for accept
    if (cmd.client.json) {
      std::printf("{\"public_key\":%s,\"fingerprint\":%s}\n", util::jsonString(key->z85()).c_str(),
                  util::jsonString(key->fingerprint()).c_str());
    } else {
      std::printf("%s\n", key->fingerprint().c_str());
    }
    return 0;
  }
  if (sub != "list" && sub != "pending" && sub != "accept" && sub != "revoke") {
    return usageError("unknown keys subcommand '" + sub + "' (gen, list, pending, accept, revoke or fingerprint)");
  }
  auto db = openNexusDb(cmd);
  if (!db) return fail(db.error());
  store::KeyStore keys(*db);
  if (sub == "list" || sub == "pending") {
    if (!cmd.args.empty()) return usageError("keys " + sub + " takes no arguments, not '" + cmd.args[0] + "'");
    std::optional<store::KeyState> state;
    if (sub == "pending") state = store::KeyState::kPending;
    auto list = keys.list(state);
    if (!list) return fail(list.error());
    if (!cmd.client.json) std::printf("%-19s  %-8s  %-6s  %-24s  %-8s  %s\n", "FINGERPRINT", "STATE", "ROLE", "UPDATED", "REFUSALS", "COMMENT / LAST ADDRESS");
    for (const auto& k : *list) {
      if (cmd.client.json) {
        std::printf("{\"fingerprint\":%s,\"public_key\":%s,\"state\":\"%s\",\"role\":\"%s\",\"comment\":%s,"
                    "\"first_seen_ms\":%" PRId64 ",\"updated_ms\":%" PRId64 ",\"last_address\":%s,\"refusals\":%" PRId64 "}\n",
                    util::jsonString(k.fingerprint).c_str(), util::jsonString(k.publicKey).c_str(),
                    store::keyStateName(k.state), store::roleName(k.role), util::jsonString(k.comment).c_str(),
                    k.firstSeenMs, k.updatedMs, util::jsonString(k.lastAddress).c_str(), k.refusals);
      } else {
        std::printf("%-19s  %-8s  %-6s  %-24s  %-8" PRId64 "  %s\n", k.fingerprint.c_str(), store::keyStateName(k.state),
                    store::roleName(k.role), isoTime(k.updatedMs).c_str(), k.refusals,
                    (k.comment.empty() ? k.lastAddress : k.comment).c_str());
      }
    }
    return 0;
  }
  if (sub == "accept" || sub == "revoke") {
    if (cmd.args.size() != 1) return usageError("keys " + sub + " takes one fingerprint, key or .pub file");
    auto rec = keys.resolve(cmd.args[0], /*wholeFingerprint=*/sub == "accept");
    if (!rec) return fail(util::err(rec.error().message, kExitUsage));
    auto key = crypto::PublicKey::fromZ85(rec->publicKey);
    if (!key) return fail(key.error());
    if (sub == "revoke") {
      if (auto s = keys.revoke(*key, clock.wallMs()); !s) {
        // An unknown key is bad input, as an unknown fingerprint prefix is (exit 2).
        auto known = keys.find(*key);
        if (known && !*known) return fail(util::err(s.error().message, kExitUsage));
        return fail(s.error());
      }
      std::printf("revoked %s\n", key->fingerprint().c_str());
      return 0;
    }
    store::Role role = rec->role;
    if (!cmd.role.empty()) {
      auto r = store::parseRole(cmd.role);
      if (!r) return usageError(r.error().message);
      role = *r;
    } else if (rec->firstSeenMs < 0) {
      return usageError("this key has not tried to connect yet: give its --role (node, client or admin)");
    }
    if (rec->state == store::KeyState::kAccepted && rec->role != role) {
      // Usually a key used on the wrong port, or a spore's key used as a client's: changing the
      // role would shut out whoever uses it now, so it takes a deliberate revoke first.
      return fail(util::err(key->fingerprint() + " is already accepted as " + store::roleName(rec->role) +
                                "; to make it a " + store::roleName(role) + " key, revoke it first (mesh keys revoke " +
                                key->fingerprint() + "), then accept it again",
                            kExitUsage));
    }
    if (rec->state == store::KeyState::kAccepted) {
      std::printf("%s is already accepted as %s\n", key->fingerprint().c_str(), store::roleName(role));
      return 0;
    }
    if (auto s = keys.accept(*key, role, cmd.comment, clock.wallMs()); !s) return fail(s.error());
    std::printf("accepted %s as %s\n", key->fingerprint().c_str(), store::roleName(role));
    return 0;
  }
  return usageError("unknown keys subcommand '" + sub + "'");
}

// ---- submit / wait / results -----------------------------------------------------------------

class ProgressPrinter {
 public:
  ProgressPrinter(bool quiet) : quiet_(quiet), tty_(isatty(STDERR_FILENO)), start_(util::systemClock().monotonicMs()) {}
  void operator()(const ProgressView& p) {
    if (quiet_) return;
    std::int64_t now = util::systemClock().monotonicMs();
    double secs = static_cast<double>(now - start_) / 1000.0;
    std::uint64_t done = p.succeeded + p.failed + p.cancelled;
    // Held (mesh submit --after): what it waits for, instead of counts that do not move.
    std::string waits;
    if (p.waiting) {
      for (std::size_t i = 0; i < p.waitingFor.size(); ++i) {
        std::uint64_t id = p.waitingFor[i];
        bool strict = std::find(p.after.begin(), p.after.end(), id) != p.after.end();
        waits += (i ? ", " : "") + std::to_string(id) + (strict ? "" : " (done)");
      }
      waits = "waiting for batch" + std::string(p.waitingFor.size() == 1 ? " " : "es ") + waits;
    }
    if (tty_ && p.waiting) {
      std::fprintf(stderr, "\r[%s] %" PRIu64 "/%" PRIu64 "%s  %s  %.1fs ", std::string(30, '.').c_str(), done, p.total,
                   p.sealed ? "" : "+", waits.c_str(), secs);
    } else if (p.waiting) {
      if (now - lastLine_ >= 2000) {
        lastLine_ = now;
        std::fprintf(stderr, "batch %" PRIu64 ": %" PRIu64 " tasks, %s (%.1fs)\n", p.batch, p.total, waits.c_str(), secs);
      }
    } else if (tty_) {
      int width = 30;
      int filled = p.total ? static_cast<int>(width * done / p.total) : 0;
      std::string bar(static_cast<std::size_t>(filled), '#');
      bar.resize(static_cast<std::size_t>(width), '.');
      std::fprintf(stderr, "\r[%s] %" PRIu64 "/%" PRIu64 "%s  ok %" PRIu64 "  failed %" PRIu64 "  running %" PRIu64
                           "  queued %" PRIu64 "  %.1fs%s ",
                   bar.c_str(), done, p.total, p.sealed ? "" : "+", p.succeeded, p.failed, p.running, p.queued, secs,
                   p.batchCancelled ? "  cancelled" : "");
      if (p.finished) std::fprintf(stderr, "\n");
    } else if (p.finished || now - lastLine_ >= 2000) {
      lastLine_ = now;
      std::string cancelled = p.cancelled ? ", " + std::to_string(p.cancelled) + " cancelled" : "";
      std::fprintf(stderr, "batch %" PRIu64 "%s: %" PRIu64 "/%" PRIu64 " done, %" PRIu64 " ok, %" PRIu64 " failed%s, %" PRIu64
                           " running, %" PRIu64 " queued (%.1fs)\n",
                   p.batch, p.batchCancelled ? " (cancelled)" : "", done, p.total, p.succeeded, p.failed,
                   cancelled.c_str(), p.running, p.queued, secs);
    }
  }

 private:
  bool quiet_, tty_;
  std::int64_t start_;
  std::int64_t lastLine_ = 0;
};

// Prints a batch's results (`mesh results`, `mesh submit --results`): one line per task,
// --json objects, or --raw outputs. Returns 1 if any task did not succeed or the batch was
// cancelled, 4 if it has not finished.
int printResults(Client& client, const CliCommand& cmd, std::uint64_t batch) {
  std::uint64_t printed = 0;
  bool anyFailed = false;
  std::string out;
  auto onRow = [&](proto::ResultRow::Reader r) {
    if (cmd.limit && printed >= cmd.limit) return false;
    ++printed;
    anyFailed = anyFailed || r.getStatus() != proto::TaskStatus::OK;
    if (cmd.raw) {
      if (r.getStatus() == proto::TaskStatus::OK) out += wire::view(r.getOutput());
    } else if (cmd.client.json) {
      out += "{\"task\":" + std::to_string(r.getTask()) + ",\"index\":" + std::to_string(r.getIndex()) +
             ",\"status\":\"" + taskStatusName(r.getStatus()) + "\",";
      appendBytes(out, "output", wire::view(r.getOutput()));
      out += ",\"error\":";
      util::appendJsonString(out, wire::view(r.getError()));
      out += ",\"attempts\":" + std::to_string(r.getAttempts()) + ",\"node\":";
      util::appendJsonString(out, wire::view(r.getNode()));
      if (r.hasRetryOf()) {  // a task made by `mesh retry`: the task it runs again
        auto from = r.getRetryOf();
        out += ",\"retry_of\":{\"batch\":" + std::to_string(from.getBatch()) + ",\"index\":" +
               std::to_string(from.getIndex()) + ",\"task\":" + std::to_string(from.getTask()) + "}";
      }
      out += "}\n";
    } else {
      out += std::to_string(r.getIndex()) + "\t" + taskStatusName(r.getStatus()) + "\t" +
             escaped(r.getStatus() == proto::TaskStatus::OK ? wire::view(r.getOutput())
                                                            : std::string_view(wire::view(r.getError())));
      // A retry's row: a fourth column, BATCH:INDEX of the task it runs again.
      if (r.hasRetryOf()) {
        out += "\t" + std::to_string(r.getRetryOf().getBatch()) + ":" + std::to_string(r.getRetryOf().getIndex());
      }
      out += "\n";
    }
    if (out.size() >= (1u << 20)) {  // print as it goes: a batch's results need not fit in memory
      std::fwrite(out.data(), 1, out.size(), stdout);
      out.clear();
    }
    return true;
  };
  bool finished = false, cancelled = false;
  auto s = client.results(batch, onRow, &finished, &cancelled);
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  if (!s) {
    int rc = fail(s.error());
    // Pages came before the error (the batch's removal began, or the nexus went away, in
    // between): what was printed is real but not the whole answer.
    if (printed > 0) {
      std::fprintf(stderr, "mesh: the %" PRIu64 " results printed are not all of batch %" PRIu64 "'s\n", printed,
                   batch);
    }
    return rc;
  }
  if (!finished) {
    // What was printed is real, but not the whole answer: a script must not take it for one.
    std::fprintf(stderr,
                 "mesh: batch %" PRIu64 " has not finished: the %" PRIu64
                 " results printed are those recorded so far (`mesh wait %" PRIu64 "` waits for the rest)\n",
                 batch, printed, batch);
    return kExitUnfinished;
  }
  if (cancelled) {
    // Even if every row is ok: these are not all the tasks the batch was meant to have.
    std::fprintf(stderr, "mesh: batch %" PRIu64 " was cancelled: these are the results of the tasks it had when it "
                         "was cancelled (those the cancel stopped show as cancelled)\n", batch);
    return kExitFailed;
  }
  return anyFailed ? kExitFailed : 0;
}

// The end of `mesh wait` and `mesh submit --wait`: 0 only for a batch that finished with every
// task succeeded; 1 for failed tasks, and for a cancelled batch even if the cancel found every
// task it had done (a submit cut short, or stopped by `mesh cancel`: not a clean success).
int finishWait(const CliCommand& cmd, const ProgressView& p) {
  // A batch whose tasks and results were removed still reports its final counts (and exits on
  // them as any finished batch does); say that its results are gone.
  if (p.expiredMs > 0) std::fprintf(stderr, "mesh: %s\n", p.expiry.c_str());
  if (cmd.client.json) {
    // expired_ms only for a batch that has expired.
    std::string expired = p.expiredMs > 0 ? ",\"expired_ms\":" + std::to_string(p.expiredMs) : std::string();
    // after and after_done only for a batch submitted with them (protocol section 4.21).
    if (!p.after.empty() || !p.afterDone.empty()) {
      expired += ",\"after\":" + jsonIds(p.after) + ",\"after_done\":" + jsonIds(p.afterDone);
    }
    std::printf("{\"batch\":%" PRIu64 ",\"total\":%" PRIu64 ",\"succeeded\":%" PRIu64 ",\"failed\":%" PRIu64
                ",\"cancelled\":%" PRIu64 ",\"finished\":%s,\"state\":\"%s\"%s}\n",
                p.batch, p.total, p.succeeded, p.failed, p.cancelled, p.finished ? "true" : "false", batchState(p),
                expired.c_str());
  }
  if (p.batchCancelled) {
    if (!p.note.empty() && p.stage == 0) {
      // Cancelled because a batch it waited for failed (mesh submit --after): the note says which.
      std::fprintf(stderr, "mesh: batch %" PRIu64 " was cancelled: %s\n", p.batch, p.note.c_str());
    } else {
      std::fprintf(stderr, "mesh: batch %" PRIu64 " was cancelled: %" PRIu64 " of its %" PRIu64 " tasks succeeded\n",
                   p.batch, p.succeeded, p.total);
    }
    return kExitFailed;
  }
  return p.failed == 0 && p.cancelled == 0 ? 0 : kExitFailed;
}

int submitCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  const auto& s = cmd.submit;
  if (s.handler.empty()) return usageError("submit needs --handler NAME");
  int sources = !s.linesFrom.empty() + !s.files.empty() + !s.filesFrom.empty();
  if (sources != 1) return usageError("submit needs exactly one of --lines FILE|-, --files F... and --files-from LIST|-");
  if (!cmd.args.empty()) return usageError("unexpected argument '" + cmd.args[0] + "' (use --files for files)");
  if (s.null && s.filesFrom.empty()) return usageError("--null is for --files-from (a list of paths that end with NUL)");
  std::vector<std::string> files = s.files;
  if (!s.filesFrom.empty()) {
    auto listed = readFileList(s.filesFrom, s.null ? '\0' : '\n');
    if (!listed) return fail(listed.error());
    files = std::move(*listed);  // none: an empty batch, as --lines of an empty input
  }
  if (s.timeoutMs < 0 || s.timeoutMs > UINT32_MAX) return usageError("--task-timeout is out of range");
  PayloadSource source;
  std::ifstream file;
  std::istream* in = nullptr;
  std::size_t nextFile = 0;
  std::vector<std::uint64_t> fileSizes;
  std::uint64_t lines = 0;
  if (!s.linesFrom.empty()) {
    if (s.linesFrom == "-") {
      in = &std::cin;
    } else {
      struct stat st {};
      if (stat(s.linesFrom.c_str(), &st) != 0) return usageError("cannot read " + s.linesFrom + ": " + std::strerror(errno));
      if (S_ISDIR(st.st_mode)) return usageError(s.linesFrom + " is a directory (--lines takes a file, one task per line)");
      file.open(s.linesFrom, std::ios::binary);
      if (!file) return usageError("cannot read " + s.linesFrom + ": " + std::strerror(errno));
      in = &file;
    }
    std::string name = s.linesFrom == "-" ? std::string("stdin") : s.linesFrom;
    source = [in, name, &lines](std::string* out) -> util::Result<bool> {
      errno = 0;
      if (!std::getline(*in, *out)) {
        // The end of the input, or a read error: never taken for the end.
        if (in->bad()) return util::err("cannot read " + name + ": " + std::strerror(errno ? errno : EIO), kExitUsage);
        return false;
      }
      ++lines;
      return true;
    };
  } else {
    for (const auto& f : files) {
      struct stat st {};
      if (access(f.c_str(), R_OK) != 0 || stat(f.c_str(), &st) != 0) {
        return usageError("cannot read " + f + ": " + std::strerror(errno));
      }
      if (S_ISDIR(st.st_mode)) return usageError(f + " is a directory (--files takes files, one task each)");
      fileSizes.push_back(static_cast<std::uint64_t>(st.st_size));  // 0 for a pipe: read to its end
    }
    source = [&](std::string* out) -> util::Result<bool> {
      if (nextFile >= files.size()) return false;
      auto data = util::readFile(files[nextFile++], 1ull << 30);
      if (!data) return util::err(data.error().message, kExitUsage);
      *out = std::move(*data);
      return true;
    };
  }
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  if (!fileSizes.empty() && *std::max_element(fileSizes.begin(), fileSizes.end()) > kAskLimitsAbove) {
    // A file too large for the nexus is refused by its size, before any file is read or sent.
    auto limits = (*client)->limits();
    if (!limits) return fail(limits.error());
    std::string why;
    std::size_t over = 0;
    for (std::size_t i = 0; i < fileSizes.size(); ++i) {
      std::string w = payloadRefusal(i, fileSizes[i], *limits, files[i]);
      if (w.empty()) continue;
      if (over++ == 0) why = w;
    }
    if (over > 0) {
      if (over > 1) why += "; " + std::to_string(over - 1) + " more of the files are over the limit too";
      return fail(util::err(why + ": nothing was submitted", kExitFailed));
    }
  }
  BatchOptions o;
  o.handler = s.handler;
  o.priority = static_cast<std::uint8_t>(s.priority);
  o.requiredTags = s.requiredTags;
  o.timeoutMs = static_cast<std::uint32_t>(s.timeoutMs);
  o.maxAttempts = static_cast<std::uint8_t>(s.attempts);
  o.label = s.label;
  o.watch = s.wait || s.results;  // the wait listens to the progress its submit asked for
  o.after = s.after;
  o.afterDone = s.afterDone;
  auto batch = (*client)->submit(o, source);
  if (!batch) return fail(batch.error());
  if (!(*client)->submitWarning().empty()) {
    std::fprintf(stderr, "mesh: batch %" PRIu64 ": %s\n", *batch, (*client)->submitWarning().c_str());
  }
  if (!s.linesFrom.empty() && lines == 0) {
    std::fprintf(stderr, "mesh: batch %" PRIu64 " has no tasks: %s was empty\n", *batch,
                 s.linesFrom == "-" ? "stdin" : s.linesFrom.c_str());
  }
  if (s.results) {
    // stdout carries the results alone; the batch id still reaches a person (or a log), with
    // -q too: -q silences progress, and without the id a script could not look the batch up.
    std::fprintf(stderr, "batch %" PRIu64 "\n", *batch);
  } else if (cmd.client.json) {
    std::printf("{\"batch\":%" PRIu64 "}\n", *batch);
  } else {
    std::printf("%" PRIu64 "\n", *batch);
  }
  std::fflush(stdout);
  if (!s.wait && !s.results) return 0;
  ProgressPrinter printer(cmd.quiet);
  auto p = (*client)->wait(*batch, std::ref(printer), std::max<std::int64_t>(cmd.client.timeoutMs, 60000));
  if (!p) return fail(p.error());
  if (s.results) return printResults(**client, cmd, *batch);
  return finishWait(cmd, *p);
}

int waitCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  auto id = parseId(cmd.args, "batch");
  if (!id) return fail(id.error());
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  std::uint64_t batch = *id;
  for (int stage = 0; stage < 2; ++stage) {
    ProgressPrinter printer(cmd.quiet || cmd.client.json);
    auto p = (*client)->wait(batch, std::ref(printer), std::max<std::int64_t>(cmd.client.timeoutMs, 60000));
    if (!p) return fail(p.error());
    // A job's note says why it stopped early; a plain batch's why a batch it waited for cancelled
    // it, which finishWait says.
    if (!p->note.empty() && p->stage != 0) std::fprintf(stderr, "mesh: job %" PRIu64 ": %s\n", batch, p->note.c_str());
    // A map-reduce job: the map stage is done; follow it into its reduce stage.
    if (p->nextBatch == 0 || p->failed || p->cancelled || p->batchCancelled) return finishWait(cmd, *p);
    if (!cmd.quiet && !cmd.client.json) {
      std::fprintf(stderr, "map stage %" PRIu64 " done; reduce stage is batch %" PRIu64 "\n", batch, p->nextBatch);
    }
    batch = p->nextBatch;
  }
  return kExitFailed;
}

int resultsCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  auto id = parseId(cmd.args, "batch");
  if (!id) return fail(id.error());
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  return printResults(**client, cmd, *id);
}

// ---- status / nodes / task / cancel ----------------------------------------------------------

int statusCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  wire::Encoder e;
  e.body().setStatusRequest();
  auto reply = (*client)->call(e);
  if (!reply) return fail(reply.error());
  auto s = reply->envelope().getBody().getStatusReply();
  if (cmd.client.json) {
    std::string out = "{\"nexus\":" + util::jsonString(wire::view(s.getNexusName())) +
                      ",\"version\":" + util::jsonString(wire::view(s.getSoftwareVersion())) +
                      ",\"uptime_ms\":" + std::to_string(s.getUptimeMs()) +
                      ",\"nodes_alive\":" + std::to_string(s.getNodesAlive()) +
                      ",\"slots\":" + std::to_string(s.getSlotsTotal()) + ",\"queued\":" + std::to_string(s.getQueued()) +
                      ",\"running\":" + std::to_string(s.getRunning()) +
                      ",\"max_payload_bytes\":" + std::to_string(s.getMaxPayloadBytes()) +
                      ",\"max_frame_bytes\":" + std::to_string(s.getMaxFrameBytes()) +
                      ",\"keys_pending\":" + std::to_string(s.getKeysPending()) + ",\"batches\":[";
    bool first = true;
    for (auto b : s.getBatches()) {
      auto p = b.getProgress();
      out += std::string(first ? "" : ",") + "{\"batch\":" + std::to_string(b.getId()) +
             ",\"label\":" + util::jsonString(wire::view(b.getLabel())) +
             ",\"handler\":" + util::jsonString(wire::view(b.getHandler())) +
             ",\"priority\":" + std::to_string(b.getPriority()) + ",\"total\":" + std::to_string(p.getTotal()) +
             ",\"queued\":" + std::to_string(p.getQueued()) + ",\"running\":" + std::to_string(p.getRunning()) +
             ",\"succeeded\":" + std::to_string(p.getSucceeded()) + ",\"failed\":" + std::to_string(p.getFailed()) +
             ",\"cancelled\":" + std::to_string(p.getCancelled()) +
             ",\"finished\":" + (p.getFinished() ? "true" : "false") + ",\"state\":\"" + batchState(progressView(p)) +
             "\",\"expired_ms\":" + std::to_string(p.getExpiredMs()) + waitsJson(progressView(p)) + "}";
      first = false;
    }
    out += "],\"counters\":{";
    first = true;
    for (auto c : s.getCounters()) {
      out += std::string(first ? "" : ",") + util::jsonString(wire::view(c.getName())) + ":" + std::to_string(c.getValue());
      first = false;
    }
    out += "}}\n";
    std::fputs(out.c_str(), stdout);
    return 0;
  }
  std::printf("nexus %s (version %s), up %" PRIu64 " s\n", std::string(wire::view(s.getNexusName())).c_str(),
              std::string(wire::view(s.getSoftwareVersion())).c_str(), s.getUptimeMs() / 1000);
  std::printf("spores %u alive, %u slots; tasks %" PRIu64 " queued, %" PRIu64 " running\n", s.getNodesAlive(),
              s.getSlotsTotal(), s.getQueued(), s.getRunning());
  if (s.getMaxPayloadBytes() > 0) {
    std::printf("limits: payload %" PRIu64 " bytes per task (--max-payload), message %" PRIu64 " bytes (--max-frame)\n",
                s.getMaxPayloadBytes(), s.getMaxFrameBytes());
  }
  if (s.getKeysPending() > 0) {
    std::printf("keys: %u waiting to be let in (on the nexus host: mesh keys pending --data-dir DIR)\n", s.getKeysPending());
  }
  std::printf("\n%-8s %-16s %-20s %4s %9s %9s %9s %9s %8s  %s\n", "BATCH", "HANDLER", "LABEL", "PRIO", "TOTAL", "OK",
              "FAILED", "RUNNING", "QUEUED", "STATE");
  for (auto b : s.getBatches()) {
    auto p = b.getProgress();
    std::string label(wire::view(b.getLabel()));
    // Cut to their columns, as `mesh batches` does, so that a long label keeps the table straight.
    std::printf("%-8" PRIu64 " %-16s %-20s %4u %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %8" PRIu64 "  %s\n",
                b.getId(), column(std::string(wire::view(b.getHandler())), 16).c_str(),
                label.empty() ? "-" : column(escaped(label), 20).c_str(),
                b.getPriority(), p.getTotal(), p.getSucceeded(), p.getFailed(), p.getRunning(), p.getQueued(),
                batchState(progressView(p)));
  }
  std::printf("\ncounters:\n");
  int width = 0;  // the longest name, so the values line up
  for (auto c : s.getCounters()) width = std::max(width, static_cast<int>(c.getName().size()));
  for (auto c : s.getCounters()) {
    std::printf("  %-*s %" PRIu64 "\n", width, std::string(wire::view(c.getName())).c_str(), c.getValue());
  }
  return 0;
}

// ---- batches ---------------------------------------------------------------------------------

// A local time to the second, for a table: 2026-11-22 10:21:55.
std::string localTime(std::int64_t ms) {
  if (ms <= 0) return "-";
  time_t secs = static_cast<time_t>(ms / 1000);
  tm local{};
  localtime_r(&secs, &local);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:%02d", local.tm_year + 1900, local.tm_mon + 1,
                local.tm_mday, local.tm_hour, local.tm_min, local.tm_sec);
  return buf;
}

// A duration for a table, in its two largest units: 40ms, 12.3s, 4m05s, 2h05m, 3d04h.
std::string shortDuration(std::int64_t ms) {
  if (ms < 0) ms = 0;
  char buf[64];
  std::int64_t s = ms / 1000;
  if (ms < 1000) std::snprintf(buf, sizeof buf, "%" PRId64 "ms", ms);
  else if (ms < 60'000) std::snprintf(buf, sizeof buf, "%.1fs", static_cast<double>(ms) / 1000.0);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
  else if (s < 86400) std::snprintf(buf, sizeof buf, "%" PRId64 "h%02" PRId64 "m", s / 3600, s / 60 % 60);
  else std::snprintf(buf, sizeof buf, "%" PRId64 "d%02" PRId64 "h", s / 86400, s / 3600 % 24);
  return buf;
}

std::string shellQuoted(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:=,+@") ==
                        std::string::npos) {
    return s;
  }
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// `mesh batches`: the stored batches, newest first (protocol section 4.19). Asks page after page
// until it has --limit batches and knows whether one more exists (the nexus looks at a bounded
// range of ids per request, so one page may hold fewer than asked).
int batchesCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  const auto& o = cmd.batches;
  using State = proto::BatchesRequest::BatchState;
  const std::pair<const char*, State> states[] = {
      {"all", State::ALL},           {"open", State::OPEN},           {"running", State::RUNNING},
      {"cancelling", State::CANCELLING}, {"finished", State::FINISHED}, {"cancelled", State::CANCELLED},
      {"expired", State::EXPIRED},   {"waiting", State::WAITING}};
  std::optional<State> state;
  for (const auto& [name, value] : states) {
    if (o.state == name) state = value;
  }
  if (!state) {
    return usageError("unknown --state '" + o.state +
                      "': use waiting, open, running, cancelling, finished, cancelled, expired or all");
  }
  std::uint64_t limit = o.limitGiven ? cmd.limit : 20;
  if (limit < 1 || limit > 1000) return usageError("--limit for batches must be 1-1000, not " + std::to_string(limit));
  if (o.beforeGiven && o.before == 0) return usageError("--before takes a batch id (1 or more): batches below it are listed");
  if (o.labelGiven && cmd.submit.label.size() > 256) {
    return usageError("--label is at most 256 bytes (a batch's label is cut to 256 when it is submitted)");
  }
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  if (!cmd.client.json) {
    std::printf("%-8s %-20s %-16s %4s %-19s %9s %9s %9s  %-10s %s\n", "BATCH", "LABEL", "HANDLER", "PRIO", "SUBMITTED",
                "TOTAL", "OK", "FAILED", "STATE", "TOOK");
  }
  std::uint64_t shown = 0, last = 0, before = o.before;
  bool more = false;
  for (;;) {
    wire::Encoder e((*client)->nextRequestId(), 32);
    auto req = e.body().initBatchesRequest();
    req.setState(*state);
    if (o.labelGiven) {
      req.setByLabel(true);
      req.setLabel(cmd.submit.label);
    }
    req.setMine(o.mine);
    req.setFailedOnly(o.failed);
    req.setBefore(before);
    // One more than the batches still to show: whether it comes says whether there are more.
    req.setLimit(static_cast<std::uint32_t>(std::min<std::uint64_t>(1000, limit + 1 - shown)));
    auto reply = (*client)->call(e);
    if (!reply) return fail(reply.error());
    auto page = reply->envelope().getBody().getBatchesReply();
    for (auto b : page.getBatches()) {
      if (shown == limit) {
        more = true;
        break;
      }
      auto p = b.getProgress();
      ProgressView v = progressView(p);
      const char* stage = v.stage == 1 ? "map" : v.stage == 2 ? "reduce" : nullptr;
      std::int64_t took = b.getFinishedMs() > 0 ? b.getFinishedMs() - b.getSubmittedMs() : -1;
      if (cmd.client.json) {
        std::string out = "{\"batch\":" + std::to_string(b.getId()) + ",\"label\":" + util::jsonString(wire::view(b.getLabel())) +
                          ",\"handler\":" + util::jsonString(wire::view(b.getHandler())) +
                          ",\"stage\":" + (stage ? std::string("\"") + stage + "\"" : std::string("null")) +
                          ",\"priority\":" + std::to_string(b.getPriority()) +
                          ",\"owner\":" + util::jsonString(wire::view(b.getOwner())) +
                          ",\"submitted_ms\":" + jsonTime(b.getSubmittedMs()) + ",\"finished_ms\":" + jsonTime(b.getFinishedMs()) +
                          ",\"duration_ms\":" + (took >= 0 ? std::to_string(took) : std::string("null")) +
                          ",\"total\":" + std::to_string(v.total) + ",\"succeeded\":" + std::to_string(v.succeeded) +
                          ",\"failed\":" + std::to_string(v.failed) + ",\"cancelled\":" + std::to_string(v.cancelled) +
                          ",\"queued\":" + std::to_string(v.queued) + ",\"running\":" + std::to_string(v.running) +
                          ",\"state\":\"" + batchState(v) + "\",\"expired_ms\":" + jsonTime(v.expiredMs) +
                          ",\"retry_of\":" + (b.getRetryOf() ? std::to_string(b.getRetryOf()) : std::string("null")) +
                          ",\"next_batch\":" + (v.nextBatch ? std::to_string(v.nextBatch) : std::string("null")) +
                          waitsJson(v) + "}\n";
        std::fputs(out.c_str(), stdout);
      } else {
        std::string label(wire::view(b.getLabel()));
        std::string handler(wire::view(b.getHandler()));
        if (stage) handler += std::string(":") + stage;
        std::printf("%-8" PRIu64 " %-20s %-16s %4u %-19s %9" PRIu64 " %9" PRIu64 " %9" PRIu64 "  %-10s %s\n", b.getId(),
                    label.empty() ? "-" : column(escaped(label), 20).c_str(), column(handler, 16).c_str(), b.getPriority(),
                    localTime(b.getSubmittedMs()).c_str(), v.total, v.succeeded, v.failed, batchState(v),
                    took >= 0 ? shortDuration(took).c_str() : "-");
      }
      ++shown;
      last = b.getId();
    }
    if (more || page.getNextBefore() == 0) break;
    before = page.getNextBefore();
  }
  std::fflush(stdout);
  if (cmd.client.json) return 0;
  if (more) {
    std::string again = "mesh batches --before " + std::to_string(last);
    if (o.state != "all") again += " --state " + o.state;
    if (o.labelGiven) again += " --label " + shellQuoted(cmd.submit.label);
    if (o.mine) again += " --mine";
    if (o.failed) again += " --failed";
    if (o.limitGiven) again += " --limit " + std::to_string(limit);
    std::fprintf(stderr, "mesh: more batches: %s\n", again.c_str());
  } else if (shown == 0) {
    std::fprintf(stderr, "mesh: no batch%s\n",
                 o.state != "all" || o.labelGiven || o.mine || o.failed || o.beforeGiven ? " matches" : " has been submitted yet");
  }
  return 0;
}

int nodesCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  wire::Encoder e;
  if (cmd.allNodes) {
    e.body().setNodesAllRequest();
  } else {
    e.body().setNodesRequest();
  }
  auto reply = (*client)->call(e);
  if (!reply) {
    if (cmd.allNodes && reply.error().message.find("unknown request kind") != std::string::npos) {
      return fail(util::err(reply.error().message + " (a nexus older than `mesh nodes --all` does not know it: upgrade "
                                                    "the nexus, or use mesh nodes)",
                            reply.error().code));
    }
    return fail(reply.error());
  }
  auto nodes = reply->envelope().getBody().getNodesReply().getNodes();
  if (!cmd.client.json) {
    std::printf("%-16s %-19s %-22s %-6s %5s %6s %5s %5s %6s %8s %7s  %s\n", "NAME", "FINGERPRINT", "ADDRESS", "FOUND",
                "SLOTS", "FLIGHT", "CPU%", "MEM%", "SCORE", "DONE", "BEAT", "TAGS");
  }
  for (auto n : nodes) {
    // An accepted node key with no spore connected (a nexus before --all sends none).
    const bool offline = !n.getAlive();
    if (offline && !cmd.allNodes) continue;
    std::string tags;
    for (auto t : n.getTags()) tags += (tags.empty() ? "" : ",") + std::string(wire::view(t));
    // offline, stopping (leaving), draining (drained, tasks still in flight), drained (none), or active.
    const char* state = offline && n.getDrained()              ? "offline, drained"
                        : offline                               ? "offline"
                        : n.getLeaving()                        ? "stopping"
                        : n.getDrained() && n.getInFlight() > 0 ? "draining"
                        : n.getDrained()                        ? "drained"
                                                                : "active";
    if (cmd.client.json) {
      std::string handlers;
      for (auto h : n.getHandlers()) handlers += std::string(handlers.empty() ? "" : ",") + util::jsonString(wire::view(h));
      std::string tagsJson;
      for (auto t : n.getTags()) tagsJson += std::string(tagsJson.empty() ? "" : ",") + util::jsonString(wire::view(t));
      std::printf("{\"name\":%s,\"fingerprint\":%s,\"key\":%s,\"address\":%s,\"found_by\":%s,\"slots\":%u,"
                  "\"in_flight\":%u,\"cpu_pct\":%s,\"mem_pct\":%s,\"score\":%s,\"tasks_done\":%" PRIu64
                  ",\"last_heartbeat_ms_ago\":%" PRIu64 ",\"connected_ms\":%" PRId64 ",\"version\":%s,\"tags\":[%s],\"handlers\":[%s],"
                  "\"leaving\":%s,\"drained\":%s,\"connected\":%s,\"state\":\"%s\"}\n",
                  util::jsonString(wire::view(n.getName())).c_str(), util::jsonString(wire::view(n.getFingerprint())).c_str(),
                  util::jsonString(wire::view(n.getKey())).c_str(), util::jsonString(wire::view(n.getAddress())).c_str(),
                  util::jsonString(wire::view(n.getFoundBy())).c_str(), n.getSlots(), n.getInFlight(),
                  util::jsonNumber(n.getCpuPct(), 1).c_str(), util::jsonNumber(n.getMemPct(), 1).c_str(),
                  util::jsonNumber(n.getScore(), 3).c_str(), n.getTasksDone(), n.getLastBeatMsAgo(), n.getConnectedMs(),
                  util::jsonString(wire::view(n.getSoftwareVersion())).c_str(), tagsJson.c_str(), handlers.c_str(),
                  n.getLeaving() ? "true" : "false", n.getDrained() ? "true" : "false", offline ? "false" : "true",
                  offline ? "offline" : state);
    } else {
      std::printf("%-16s %-19s %-22s %-6s %5u %6u %5.1f %5.1f %6.3f %8" PRIu64 " %5" PRIu64 "ms  %s\n",
                  n.getName().size() ? std::string(wire::view(n.getName())).c_str() : "-",
                  std::string(wire::view(n.getFingerprint())).c_str(),
                  n.getAddress().size() ? std::string(wire::view(n.getAddress())).c_str() : "-",
                  n.getFoundBy().size() ? std::string(wire::view(n.getFoundBy())).c_str() : "-",
                  n.getSlots(), n.getInFlight(), n.getCpuPct(), n.getMemPct(), n.getScore(), n.getTasksDone(),
                  n.getLastBeatMsAgo(),
                  (tags + (std::strcmp(state, "active") == 0 ? "" : (tags.empty() ? "(" : " (") + std::string(state) + ")"))
                      .c_str());
    }
  }
  return 0;
}

// `mesh nodes drain|undrain NODE`: NODE is a spore's name or fingerprint (admin key).
int drainCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  const bool drain = cmd.args[0] == "drain";
  if (cmd.args.size() != 2) {
    return usageError("`mesh nodes " + cmd.args[0] + "` takes one spore: its name or fingerprint (`mesh nodes` lists them)");
  }
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  wire::Encoder e;
  auto req = e.body().initDrainRequest();
  req.setNode(cmd.args[1]);
  req.setDrain(drain);
  auto reply = (*client)->call(e);
  if (!reply) return fail(reply.error());
  if (reply->which() != proto::Envelope::Body::DRAIN_ACK) return fail(util::err("unexpected reply to a drain request", kExitFailed));
  auto ack = reply->envelope().getBody().getDrainAck();
  std::string name(wire::view(ack.getName())), fp(wire::view(ack.getFingerprint()));
  if (cmd.client.json) {
    std::printf("{\"name\":%s,\"fingerprint\":%s,\"drained\":%s,\"changed\":%s,\"connected\":%s,\"in_flight\":%u,"
                "\"recalled\":%u}\n",
                name.empty() ? "null" : util::jsonString(name).c_str(), util::jsonString(fp).c_str(),
                ack.getDrained() ? "true" : "false", ack.getChanged() ? "true" : "false",
                ack.getConnected() ? "true" : "false", ack.getInFlight(), ack.getRecalled());
    return 0;
  }
  std::string who = name.empty() ? fp : escaped(name) + " (" + fp + ")";
  if (!ack.getChanged()) {
    std::printf("%s was already %s\n", who.c_str(), drain ? "drained" : "not drained");
  } else if (!drain) {
    std::printf("%s undrained: it is given tasks again\n", who.c_str());
  } else if (!ack.getConnected()) {
    std::printf("%s drained: it is not connected; it gets no task when it comes back (until `mesh nodes undrain`)\n",
                who.c_str());
  } else {
    std::printf("%s drained: it gets no new task; %u in flight, %u of them recalled (those not started come back; "
                "running ones finish there). `mesh nodes` shows it drained once it holds none\n",
                who.c_str(), ack.getInFlight(), ack.getRecalled());
  }
  return 0;
}

int taskCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  // TASK, or BATCH:INDEX (the index `mesh results` prints: a task still queued has no row there).
  std::optional<std::pair<std::uint64_t, std::uint64_t>> at;
  util::Result<std::uint64_t> id = std::uint64_t{0};
  if (cmd.args.size() == 1 && cmd.args[0].find(':') != std::string::npos) {
    const std::string& arg = cmd.args[0];
    auto colon = arg.find(':');
    auto batch = parseId({arg.substr(0, colon)}, "batch");
    auto index = parseId({arg.substr(colon + 1)}, "task index");
    if (!batch || !index) return fail(util::err("'" + arg + "' is not TASK or BATCH:INDEX", kExitUsage));
    at = std::make_pair(*batch, *index);
  } else {
    id = parseId(cmd.args, "task");
    if (!id) return fail(id.error());
  }
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  wire::Encoder e;
  if (at) {
    auto ref = e.body().initTaskAtRequest();
    ref.setBatch(at->first);
    ref.setIndex(at->second);
  } else {
    e.body().setTaskRequest(*id);
  }
  auto reply = (*client)->call(e);
  if (!reply) return fail(reply.error());
  auto t = reply->envelope().getBody().getTaskReply();
  std::string tags;
  for (auto r : t.getRequires()) tags += (tags.empty() ? "" : ",") + std::string(wire::view(r));
  if (cmd.client.json) {
    std::string out = "{\"task\":" + std::to_string(t.getId()) + ",\"batch\":" + std::to_string(t.getBatch()) +
                      ",\"index\":" + std::to_string(t.getIndex()) + ",\"handler\":" + util::jsonString(wire::view(t.getHandler())) +
                      ",\"state\":" + util::jsonString(wire::view(t.getState())) +
                      ",\"priority\":" + std::to_string(t.getPriority()) + ",\"requires\":" + util::jsonString(tags) +
                      ",\"submitted_ms\":" + jsonTime(t.getSubmittedMs()) +
                      ",\"finished_ms\":" + jsonTime(t.getFinishedMs()) + ",\"why\":" + util::jsonString(wire::view(t.getWhy())) + ",";
    if (t.getAfter().size() > 0 || t.getAfterDone().size() > 0) {
      out += "\"after\":" + jsonIds(ids(t.getAfter())) + ",\"after_done\":" + jsonIds(ids(t.getAfterDone())) + ",";
    }
    if (t.hasRetryOf()) {
      out += "\"retry_of\":{\"batch\":" + std::to_string(t.getRetryOf().getBatch()) + ",\"index\":" +
             std::to_string(t.getRetryOf().getIndex()) + ",\"task\":" + std::to_string(t.getRetryOf().getTask()) + "},";
    }
    appendBytes(out, "output", wire::view(t.getOutput()));
    out += ",\"error\":" + util::jsonString(wire::view(t.getError())) + ",\"attempts\":[";
    bool first = true;
    for (auto a : t.getAttempts()) {
      out += std::string(first ? "" : ",") + "{\"attempt\":" + std::to_string(a.getNumber()) +
             ",\"node\":" + util::jsonString(wire::view(a.getNode())) + ",\"assigned_ms\":" + jsonTime(a.getAssignedMs()) +
             ",\"started_ms\":" + jsonTime(a.getStartedMs()) + ",\"ended_ms\":" + jsonTime(a.getEndedMs()) +
             ",\"outcome\":" + util::jsonString(wire::view(a.getOutcome())) +
             ",\"error\":" + util::jsonString(wire::view(a.getError())) + ",\"bundle\":" +
             (a.getBundle().size() == 0 ? std::string("null")
                                        : "{\"name\":" + util::jsonString(wire::view(a.getBundle())) +
                                              ",\"version\":" + std::to_string(a.getBundleVersion()) + "}") +
             "}";
      first = false;
    }
    out += "]}\n";
    std::fputs(out.c_str(), stdout);
    return 0;
  }
  std::printf("task %" PRIu64 " (batch %" PRIu64 ", index %" PRIu64 "), handler %s, priority %u%s%s\n", t.getId(),
              t.getBatch(), t.getIndex(), std::string(wire::view(t.getHandler())).c_str(), t.getPriority(),
              tags.empty() ? "" : ", requires ", tags.c_str());
  if (t.hasRetryOf()) {
    std::printf("retry of task %" PRIu64 " (batch %" PRIu64 ", index %" PRIu64 ")\n", t.getRetryOf().getTask(),
                t.getRetryOf().getBatch(), t.getRetryOf().getIndex());
  }
  if (t.getAfter().size() > 0 || t.getAfterDone().size() > 0) {
    auto list = [](const std::vector<std::uint64_t>& v) {
      std::string out;
      for (auto id : v) out += (out.empty() ? "" : ",") + std::to_string(id);
      return out;
    };
    std::string after = list(ids(t.getAfter())), done = list(ids(t.getAfterDone()));
    std::printf("its batch waits for: %s%s%s%s%s\n", after.empty() ? "" : "--after ", after.c_str(),
                after.empty() || done.empty() ? "" : " ", done.empty() ? "" : "--after-done ", done.c_str());
  }
  std::printf("state: %s\n", std::string(wire::view(t.getState())).c_str());
  if (t.getWhy().size()) std::printf("why: %s\n", std::string(wire::view(t.getWhy())).c_str());
  std::printf("%s  submitted\n", isoTime(t.getSubmittedMs()).c_str());
  bool endShown = false;  // the final result was shown as the end of an attempt
  for (auto a : t.getAttempts()) {
    if (a.getAssignedMs() > 0) {
      std::printf("%s  attempt %u assigned to %s\n", isoTime(a.getAssignedMs()).c_str(), a.getNumber(),
                  std::string(wire::view(a.getNode())).c_str());
    } else {  // it ran across a nexus restart: the nexus that assigned it kept no time
      std::printf("%*s  attempt %u assigned to %s before a nexus restart (time not recorded)\n", 24, "", a.getNumber(),
                  std::string(wire::view(a.getNode())).c_str());
    }
    if (a.getStartedMs() > 0) std::printf("%s  attempt %u started\n", isoTime(a.getStartedMs()).c_str(), a.getNumber());
    if (a.getEndedMs() > 0) {
      std::string err(wire::view(a.getError()));
      // The signed bundle version that ran it, as its spore reported (what a rollout changed).
      std::string ran = a.getBundle().size() == 0 ? std::string()
                                                   : " (bundle " + escaped(wire::view(a.getBundle())) + " version " +
                                                         std::to_string(a.getBundleVersion()) + ")";
      std::printf("%s  attempt %u ended: %s%s%s%s\n", isoTime(a.getEndedMs()).c_str(), a.getNumber(),
                  std::string(wire::view(a.getOutcome())).c_str(), ran.c_str(), err.empty() ? "" : ": ",
                  escaped(err).c_str());
      endShown = a.getEndedMs() == t.getFinishedMs() && a.getOutcome() == t.getState();
    } else {
      std::printf("%*s  attempt %u %s\n", 24, "", a.getNumber(), std::string(wire::view(a.getOutcome())).c_str());
    }
  }
  if (t.getFinishedMs() > 0 && !endShown) {
    // Ended by no attempt of its own: cancelled before it ran or while it waited to retry, or
    // its payload lost.
    std::string err(wire::view(t.getError()));
    std::printf("%s  %s%s%s\n", isoTime(t.getFinishedMs()).c_str(), std::string(wire::view(t.getState())).c_str(),
                err.empty() ? "" : ": ", escaped(err).c_str());
  }
  // A success's output, even empty; another end's only when it left one.
  if (t.getFinishedMs() > 0 && (t.getOutput().size() > 0 || wire::view(t.getState()) == "ok")) {
    std::printf("output: %s\n", escaped(wire::view(t.getOutput())).c_str());
  }
  return 0;
}

int cancelCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  auto id = parseId(cmd.args, "batch");
  if (!id) return fail(id.error());
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  wire::Encoder e;
  e.body().setCancelBatch(*id);
  auto reply = (*client)->call(e);
  if (!reply) return fail(reply.error());
  auto ack = reply->envelope().getBody().getCancelAck();
  if (cmd.client.json) std::printf("{\"batch\":%" PRIu64 ",\"cancelled\":%" PRIu64 "}\n", ack.getBatch(), ack.getCancelled());
  else std::printf("batch %" PRIu64 ": %" PRIu64 " task%s cancelled\n", ack.getBatch(), ack.getCancelled(), ack.getCancelled() == 1 ? "" : "s");
  return 0;
}

// `mesh retry BATCH`: a new batch of the failed tasks of a finished batch (protocol section
// 4.17). Prints the new id as submit does; --wait and --results as submit's.
int retryCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  const auto& s = cmd.submit;
  auto id = parseId(cmd.args, "batch");
  if (!id) return fail(id.error());
  // What retry keeps from the batch cannot be given.
  const char* kept = !s.handler.empty()             ? "--handler"
                     : !s.requiredTags.empty()      ? "--requires"
                     : !s.linesFrom.empty()         ? "--lines"
                     : !s.files.empty()             ? "--files"
                     : !s.filesFrom.empty()         ? "--files-from"
                                                    : nullptr;
  if (kept) return usageError(std::string("retry keeps the handler, requirements and payloads of the batch: ") + kept +
                              " is for submit");
  if (!s.after.empty() || !s.afterDone.empty()) {
    return usageError("--after and --after-done are for submit and mapreduce: a retry runs once it is made");
  }
  if (s.timeoutMs < 0 || s.timeoutMs > UINT32_MAX) return usageError("--task-timeout is out of range");
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  RetryOptions o;
  o.batch = *id;
  o.priority = s.priorityGiven ? static_cast<int>(s.priority) : -1;
  o.timeoutMs = static_cast<std::uint32_t>(s.timeoutMs);
  o.maxAttempts = static_cast<std::uint8_t>(s.attempts);
  o.label = s.label;
  o.watch = s.wait || s.results;
  auto r = (*client)->retry(o);
  if (!r) return fail(r.error());
  if (r->batch == 0) {
    std::fprintf(stderr, "mesh: batch %" PRIu64 " has no failed tasks: nothing to retry\n", *id);
    return 0;
  }
  if (!r->warning.empty()) std::fprintf(stderr, "mesh: batch %" PRIu64 ": %s\n", r->batch, r->warning.c_str());
  if (!cmd.quiet && !s.results) {
    std::fprintf(stderr, "batch %" PRIu64 " runs the %" PRIu64 " failed task%s of batch %" PRIu64 " again\n", r->batch,
                 r->count, r->count == 1 ? "" : "s", *id);
  }
  if (s.results) {
    std::fprintf(stderr, "batch %" PRIu64 "\n", r->batch);
  } else if (cmd.client.json) {
    std::printf("{\"batch\":%" PRIu64 ",\"retry_of\":%" PRIu64 ",\"tasks\":%" PRIu64 "}\n", r->batch, *id, r->count);
  } else {
    std::printf("%" PRIu64 "\n", r->batch);
  }
  std::fflush(stdout);
  if (!s.wait && !s.results) return 0;
  ProgressPrinter printer(cmd.quiet);
  auto p = (*client)->wait(r->batch, std::ref(printer), std::max<std::int64_t>(cmd.client.timeoutMs, 60000));
  if (!p) return fail(p.error());
  if (s.results) return printResults(**client, cmd, r->batch);
  return finishWait(cmd, *p);
}

// ---- mapreduce -------------------------------------------------------------------------------

bool emptyOrMissingDir(const std::string& path, std::string* why) {
  DIR* d = opendir(path.c_str());
  if (!d) {
    if (errno == ENOENT) return true;
    *why = "cannot open " + path + ": " + std::strerror(errno);
    return false;
  }
  bool empty = true;
  while (dirent* e = readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) empty = false;
  }
  closedir(d);
  if (!empty) *why = "output directory " + path + " is not empty: choose a new one";
  return empty;
}

int mapreduceCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  const auto& m = cmd.mapreduce;
  const auto& clock = util::systemClock();
  std::int64_t start = clock.monotonicMs();
  if (m.output.empty()) return usageError("mapreduce needs --output DIR");
  std::string why;
  if (!emptyOrMissingDir(m.output, &why)) return usageError(why);
  std::uint64_t job = m.job;
  std::vector<std::string> inputs;       // the files, read whole
  std::vector<std::string_view> chunks;  // line-aligned pieces of them, copied one at a time on submit
  std::vector<std::size_t> chunkInput;   // the input of each chunk (an index into cmd.args)
  if (job == 0) {
    if (m.mapper.empty() || m.reducer.empty()) return usageError("mapreduce needs --mapper and --reducer");
    if (m.reducers < 1 || m.reducers > 10000) return usageError("--reducers must be 1-10000");
    if (m.chunkBytes < 1) return usageError("--chunk-size must be at least 1 byte");
    if (cmd.args.empty()) return usageError("mapreduce needs at least one INPUT file (- for stdin)");
    inputs.reserve(cmd.args.size());  // never reallocated: the chunks point into its strings
    for (const auto& input : cmd.args) {
      util::Result<std::string> data = std::string();
      if (input == "-") {
        std::string all((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
        data = std::move(all);
      } else {
        data = util::readFile(input, 1ull << 34);
      }
      if (!data) return usageError(data.error().message);
      inputs.push_back(std::move(*data));
      // A chunk never spans two inputs.
      std::string_view whole = inputs.back();
      for (auto [b, e] : exec::chunkLines(whole, m.chunkBytes)) {
        chunks.push_back(whole.substr(b, e - b));
        chunkInput.push_back(inputs.size() - 1);
      }
    }
  }
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  auto longest = std::max_element(chunks.begin(), chunks.end(),
                                  [](std::string_view a, std::string_view b) { return a.size() < b.size(); });
  if (longest != chunks.end() && longest->size() > kAskLimitsAbove) {
    // A map task too large for the nexus is refused here, before the job is submitted.
    auto limits = (*client)->limits();
    if (!limits) return fail(limits.error());
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      const std::string& input = cmd.args[chunkInput[i]];
      std::string why = payloadRefusal(i, chunks[i].size(), *limits, "a chunk of " + (input == "-" ? "stdin" : input));
      if (why.empty()) continue;
      return fail(util::err(why + ": give a smaller --chunk-size (a single line longer than the limit cannot be split); "
                                  "nothing was submitted",
                            kExitFailed));
    }
  }
  if (job == 0) {
    BatchOptions o;
    o.handler = m.mapper;
    o.label = "mapreduce";
    o.priority = static_cast<std::uint8_t>(cmd.submit.priority);
    o.requiredTags = cmd.submit.requiredTags;
    o.timeoutMs = static_cast<std::uint32_t>(cmd.submit.timeoutMs);
    o.maxAttempts = static_cast<std::uint8_t>(cmd.submit.attempts);
    o.mapStage = true;
    o.partitions = m.reducers;
    o.combiner = m.combiner;
    o.reducer = m.reducer;
    o.watch = true;
    o.after = cmd.submit.after;
    o.afterDone = cmd.submit.afterDone;
    std::size_t next = 0;
    auto id = (*client)->submit(o, [&](std::string* out) -> util::Result<bool> {
      if (next >= chunks.size()) return false;
      out->assign(chunks[next++]);
      return true;
    });
    if (!id) return fail(id.error());
    job = *id;
    std::fprintf(stderr, "job %" PRIu64 ": %zu map tasks, %u reducers (resume with: mesh mapreduce --job %" PRIu64
                         " --output DIR)\n", job, next, m.reducers, job);
  }
  if (m.job != 0) {
    // Resuming: say at once when the batch is not a job, instead of after waiting for it.
    auto now = (*client)->progress(job);
    if (!now) return fail(now.error());
    if (now->stage != 1) {
      return fail(util::err("batch " + std::to_string(job) +
                                (now->stage == 2 ? " is the reduce stage of a job: give the job's id (its map batch, "
                                                   "`mesh status` lists it)"
                                                 : " is not a map-reduce job (it was made by mesh submit): follow it "
                                                   "with `mesh wait " + std::to_string(job) + "`"),
                            kExitUsage));
    }
  }
  ProgressPrinter mapPrinter(cmd.quiet);
  if (!cmd.quiet) std::fprintf(stderr, "map stage (batch %" PRIu64 "):\n", job);
  auto mp = (*client)->wait(job, std::ref(mapPrinter), std::max<std::int64_t>(cmd.client.timeoutMs, 60000));
  if (!mp) return fail(mp.error());
  if (mp->nextBatch == 0) {
    return fail(util::err("job " + std::to_string(job) + " has no reduce stage: " +
                              (mp->note.empty() ? "is it a map-reduce job?" : mp->note),
                          kExitFailed));
  }
  std::uint64_t reduce = mp->nextBatch;
  ProgressPrinter reducePrinter(cmd.quiet);
  if (!cmd.quiet) std::fprintf(stderr, "reduce stage (batch %" PRIu64 "):\n", reduce);
  auto rp = (*client)->wait(reduce, std::ref(reducePrinter), std::max<std::int64_t>(cmd.client.timeoutMs, 60000));
  if (!rp) return fail(rp.error());
  if (mkdir(m.output.c_str(), 0755) != 0 && errno != EEXIST) {
    return fail(util::err("cannot create " + m.output + ": " + std::strerror(errno), kExitUsage));
  }
  std::vector<std::string> parts;
  std::uint64_t from = 0;
  bool failed = false;
  for (;;) {
    wire::Encoder e((*client)->nextRequestId(), 32);
    auto req = e.body().initFetchResults();
    req.setBatch(reduce);
    req.setFromIndex(from);
    req.setLimit(100);
    auto reply = (*client)->call(e);
    if (!reply) return fail(reply.error());
    auto page = reply->envelope().getBody().getResultPage();
    for (auto r : page.getRows()) {
      char name[32];
      std::snprintf(name, sizeof name, "/part-%05" PRIu64, r.getIndex());
      std::string path = m.output + name;
      if (r.getStatus() != proto::TaskStatus::OK) {
        failed = true;
        std::fprintf(stderr, "mesh: reduce task %" PRIu64 " %s: %s\n", r.getIndex(), taskStatusName(r.getStatus()),
                     std::string(wire::view(r.getError())).c_str());
        continue;
      }
      if (auto s = util::writeFileAtomic(path, wire::view(r.getOutput()), 0644); !s) return fail(s.error());
      parts.push_back(path);
    }
    if (page.getEnd() || page.getRows().size() == 0) break;
    from = page.getNextIndex();
  }
  if (failed || parts.size() != rp->total) {
    return fail(util::err("job " + std::to_string(job) + ": " + std::to_string(rp->total - parts.size()) +
                              " reduce tasks failed; the parts that succeeded are in " + m.output,
                          kExitFailed));
  }
  if (m.merge) {
    std::vector<std::string> texts;
    for (const auto& p : parts) {
      auto t = util::readFile(p, 1ull << 34);
      if (!t) return fail(t.error());
      texts.push_back(std::move(*t));
    }
    std::vector<std::string_view> runs(texts.begin(), texts.end());
    if (auto s = util::writeFileAtomic(m.output + "/merged", exec::mergeSorted(runs), 0644); !s) return fail(s.error());
  }
  double secs = static_cast<double>(clock.monotonicMs() - start) / 1000.0;
  if (cmd.client.json) {
    std::printf("{\"job\":%" PRIu64 ",\"map_batch\":%" PRIu64 ",\"reduce_batch\":%" PRIu64
                ",\"map_tasks\":%" PRIu64 ",\"reducers\":%zu,\"output\":%s,\"seconds\":%.3f}\n",
                job, job, reduce, mp->total, parts.size(), util::jsonString(m.output).c_str(), secs);
  } else {
    std::printf("job %" PRIu64 ": %" PRIu64 " map tasks, %zu reduce tasks, %.2f s; output in %s/part-*%s\n", job,
                mp->total, parts.size(), secs, m.output.c_str(), m.merge ? " and merged" : "");
  }
  return 0;
}

// ---- bundles ---------------------------------------------------------------------------------

int bundleSignCommand(const CliCommand& cmd) {
  const auto& b = cmd.bundle;
  if (cmd.args.size() != 1) return usageError("bundle sign takes one DIR");
  if (b.name.empty()) return usageError("bundle sign needs --name NAME");
  if (b.version == 0) return usageError("bundle sign needs --version N (1 or more, increasing per name)");
  if (!cmd.keyGiven) return usageError("bundle sign needs --key RELEASE_KEY (made by `mesh keys gen --release`)");
  if (cmd.mapreduce.output.empty()) return usageError("bundle sign needs -o FILE");
  auto expires = util::parseDurationMs(b.expires);
  if (!expires || *expires <= 0) return usageError("--expires takes a duration such as 30d or 12h");
  auto key = bundle::ReleaseKey::load(cmd.client.key);
  if (!key) return fail(util::err(key.error().message, kExitUsage));
  bundle::SignOptions o;
  o.name = b.name;
  o.version = b.version;
  o.createdMs = util::systemClock().wallMs();
  o.expiresMs = o.createdMs + *expires;
  o.handlers = b.handlers;
  auto signedBundle = bundle::signBundle(cmd.args[0], o, *key, cmd.mapreduce.output);
  if (!signedBundle) return fail(util::err(signedBundle.error().message, kExitUsage));
  std::string handlers;
  for (const auto& h : signedBundle->manifest.handlers) handlers += (handlers.empty() ? "" : ",") + h;
  if (cmd.client.json) {
    std::printf("{\"file\":%s,\"name\":%s,\"version\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"key\":%s,\"handlers\":%s}\n",
                util::jsonString(cmd.mapreduce.output).c_str(), util::jsonString(b.name).c_str(), b.version,
                signedBundle->bundleBytes, util::jsonString(signedBundle->keyFingerprint).c_str(),
                util::jsonString(handlers).c_str());
  } else {
    std::printf("wrote %s: bundle %s version %" PRIu64 ", %" PRIu64 " bytes, handlers %s, signed by %s\n",
                cmd.mapreduce.output.c_str(), b.name.c_str(), b.version, signedBundle->bundleBytes, handlers.c_str(),
                signedBundle->keyFingerprint.c_str());
  }
  return 0;
}

int bundlePublishCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  if (cmd.args.size() != 1) return usageError("bundle publish takes one FILE");
  std::ifstream in(cmd.args[0], std::ios::binary);
  if (!in) return usageError("cannot read " + cmd.args[0] + ": " + std::strerror(errno));
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  constexpr std::size_t kChunk = 1u << 20;  // the nexus's limit per upload message
  std::string buf(kChunk, '\0'), next(kChunk, '\0');
  in.read(buf.data(), static_cast<std::streamsize>(kChunk));
  std::size_t n = static_cast<std::size_t>(in.gcount());
  std::uint64_t upload = 0, offset = 0;
  for (;;) {
    // Read one chunk ahead so that the last chunk carries `last`.
    std::size_t m = 0;
    if (in) {
      in.read(next.data(), static_cast<std::streamsize>(kChunk));
      m = static_cast<std::size_t>(in.gcount());
    }
    bool last = m == 0;
    wire::Encoder e((*client)->nextRequestId(), static_cast<unsigned>(n / 8 + 64));
    auto up = e.body().initBundleUpload();
    up.setUpload(upload);
    up.setOffset(offset);
    up.setData(wire::asData(std::string_view(buf.data(), n)));
    up.setLast(last);
    auto reply = (*client)->call(e);  // credit of one chunk: the ack lets the next one go
    if (!reply) return fail(reply.error());
    auto ack = reply->envelope().getBody().getBundleUploadAck();
    upload = ack.getUpload();
    offset += n;
    if (ack.getDone()) {
      auto ref = ack.getBundle();
      if (cmd.client.json) {
        std::printf("{\"name\":%s,\"version\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"manifest_sha256\":%s}\n",
                    util::jsonString(wire::view(ref.getName())).c_str(), ref.getVersion(), ref.getSize(),
                    util::jsonString(wire::view(ref.getManifestSha256())).c_str());
      } else {
        std::printf("published bundle %s version %" PRIu64 " (%" PRIu64 " bytes); spores fetch it now (see mesh bundles)\n",
                    std::string(wire::view(ref.getName())).c_str(), ref.getVersion(), ref.getSize());
      }
      return 0;
    }
    if (last) return fail(util::err("the nexus did not confirm the publish", kExitFailed));
    if (ack.getReceived() != offset) return fail(util::err("the nexus lost track of the upload: publish again", kExitFailed));
    std::swap(buf, next);
    n = m;
  }
}

int bundlesCommand(zmq::context_t& ctx, const CliCommand& cmd) {
  auto client = connectClient(ctx, cmd);
  if (!client) return fail(client.error());
  wire::Encoder e;
  e.body().setBundlesRequest();
  auto reply = (*client)->call(e);
  if (!reply) return fail(reply.error());
  auto r = reply->envelope().getBody().getBundlesReply();
  if (!cmd.client.json && r.getBundles().size() == 0 && r.getRefusals().size() == 0) {
    std::printf("no bundle has been published (mesh bundle publish FILE; docs/bundles.md)\n");
  }
  for (auto b : r.getBundles()) {
    auto ref = b.getBundle();
    if (cmd.client.json) {
      std::string out = "{\"name\":" + util::jsonString(wire::view(ref.getName())) +
                        ",\"version\":" + std::to_string(ref.getVersion()) + ",\"size\":" + std::to_string(ref.getSize()) +
                        ",\"manifest_sha256\":" + util::jsonString(wire::view(ref.getManifestSha256())) +
                        ",\"published_ms\":" + std::to_string(ref.getPublishedMs()) + ",\"spores\":[";
      bool first = true;
      for (auto s : b.getSpores()) {
        out += std::string(first ? "" : ",") + "{\"spore\":" + util::jsonString(wire::view(s.getSpore())) +
               ",\"fingerprint\":" + util::jsonString(wire::view(s.getFingerprint())) +
               ",\"running\":" + std::to_string(s.getRunning()) + ",\"event\":" + util::jsonString(wire::view(s.getEvent())) +
               ",\"version\":" + std::to_string(s.getVersion()) + ",\"reason\":" + util::jsonString(wire::view(s.getReason())) +
               ",\"message\":" + util::jsonString(wire::view(s.getMessage())) +
               ",\"rollbacks\":" + std::to_string(s.getRollbacks()) + ",\"connected\":" + (s.getConnected() ? "true" : "false") + "}";
        first = false;
      }
      out += "]}\n";
      std::fputs(out.c_str(), stdout);
      continue;
    }
    std::printf("bundle %s: published version %" PRIu64 ", %" PRIu64 " bytes, %s\n",
                std::string(wire::view(ref.getName())).c_str(), ref.getVersion(), ref.getSize(),
                isoTime(ref.getPublishedMs()).c_str());
    std::printf("  %-16s %-19s %7s  %-12s %7s  %9s  %s\n", "SPORE", "FINGERPRINT", "RUNNING", "LAST EVENT", "OF", "ROLLBACKS",
                "REASON");
    std::size_t spores = 0, rolledBack = 0;
    for (auto s : b.getSpores()) {
      std::string reason(wire::view(s.getReason()));
      std::string message(wire::view(s.getMessage()));
      // A message that starts with its reason ("trial-failed: 3 of ...") is shown once.
      if (!reason.empty() && message.rfind(reason + ": ", 0) == 0) message.erase(0, reason.size() + 2);
      std::printf("  %-16s %-19s %7" PRIu64 "  %-12s %7" PRIu64 "  %9u  %s%s%s\n", std::string(wire::view(s.getSpore())).c_str(),
                  std::string(wire::view(s.getFingerprint())).c_str(), s.getRunning(),
                  std::string(wire::view(s.getEvent())).c_str(), s.getVersion(), s.getRollbacks(),
                  escaped(reason).c_str(), message.empty() || reason == message ? "" : ": ",
                  message.empty() || reason == message ? "" : escaped(message).c_str());
      ++spores;
      if (wire::view(s.getEvent()) == "rolled-back" && s.getVersion() == ref.getVersion()) ++rolledBack;
    }
    if (rolledBack > 0) {
      // The nexus still serves it (a spore's word alone does not withdraw a signed release): a
      // spore that joins now installs it with no older version to go back to.
      std::printf("  warning: version %" PRIu64 " was rolled back on %zu of %zu spores; spores that join now still install "
                  "it: publish a fixed, higher version\n",
                  ref.getVersion(), rolledBack, spores);
    }
  }
  for (auto x : r.getRefusals()) {
    if (cmd.client.json) {
      std::printf("{\"refused_publish\":{\"name\":%s,\"version\":%" PRIu64 ",\"reason\":%s,\"message\":%s}}\n",
                  util::jsonString(wire::view(x.getName())).c_str(), x.getVersion(),
                  util::jsonString(wire::view(x.getReason())).c_str(), util::jsonString(wire::view(x.getMessage())).c_str());
    } else {
      std::printf("refused publish: %s version %" PRIu64 ": %s: %s\n", escaped(wire::view(x.getName())).c_str(),
                  x.getVersion(), std::string(wire::view(x.getReason())).c_str(), escaped(wire::view(x.getMessage())).c_str());
    }
  }
  return 0;
}

}  // namespace

int runCli(const config::CliCommand& cmd) {
  const std::string& verb = cmd.words[0];
  if (verb == "nodes" && !cmd.args.empty() && (cmd.args[0] == "drain" || cmd.args[0] == "undrain")) {
    auto ctx = transport::makeContext();
    return drainCommand(ctx, cmd);
  }
  if ((verb == "status" || verb == "nodes" || verb == "bundles" || verb == "batches") && !cmd.args.empty()) {
    return usageError("`mesh " + verb + "` takes no arguments, not '" + cmd.args[0] + "'");
  }
  if (verb == "keys") return keysCommand(cmd);
  if (verb == "bundle" && cmd.words[1] == "sign") return bundleSignCommand(cmd);
  auto ctx = transport::makeContext();
  int rc;
  if (verb == "submit") rc = submitCommand(ctx, cmd);
  else if (verb == "wait") rc = waitCommand(ctx, cmd);
  else if (verb == "results") rc = resultsCommand(ctx, cmd);
  else if (verb == "status") rc = statusCommand(ctx, cmd);
  else if (verb == "batches") rc = batchesCommand(ctx, cmd);
  else if (verb == "nodes") rc = nodesCommand(ctx, cmd);
  else if (verb == "task") rc = taskCommand(ctx, cmd);
  else if (verb == "cancel") rc = cancelCommand(ctx, cmd);
  else if (verb == "retry") rc = retryCommand(ctx, cmd);
  else if (verb == "mapreduce") rc = mapreduceCommand(ctx, cmd);
  else if (verb == "bundle" && cmd.words[1] == "publish") rc = bundlePublishCommand(ctx, cmd);
  else if (verb == "bundle") rc = usageError("unknown bundle subcommand '" + cmd.words[1] + "' (sign or publish)");
  else if (verb == "bundles") rc = bundlesCommand(ctx, cmd);
  else rc = usageError("unknown command '" + verb + "'");
  return rc;
}

}  // namespace mesh::node
