#include "mesh/store/key_store.h"

#include <unistd.h>

namespace mesh::store {

const char* roleName(Role r) {
  switch (r) {
    case Role::kNode: return "node";
    case Role::kClient: return "client";
    case Role::kAdmin: return "admin";
  }
  return "?";
}

util::Result<Role> parseRole(std::string_view text) {
  if (text == "node") return Role::kNode;
  if (text == "client") return Role::kClient;
  if (text == "admin") return Role::kAdmin;
  return util::err("unknown role '" + std::string(text) + "': use node, client or admin");
}

const char* keyStateName(KeyState s) {
  switch (s) {
    case KeyState::kAccepted: return "accepted";
    case KeyState::kPending: return "pending";
    case KeyState::kRevoked: return "revoked";
  }
  return "?";
}

namespace {
KeyState parseState(const std::string& s) {
  if (s == "accepted") return KeyState::kAccepted;
  if (s == "revoked") return KeyState::kRevoked;
  return KeyState::kPending;
}
const char* kColumns =
    "public_key, fingerprint, role, state, comment, first_seen_ms, updated_ms, last_address, refusals";
KeyRecord readRow(const Statement& st) {
  KeyRecord r;
  r.publicKey = st.getText(0);
  r.fingerprint = st.getText(1);
  auto role = parseRole(st.getText(2));
  r.role = role ? *role : Role::kClient;
  r.state = parseState(st.getText(3));
  r.comment = st.getText(4);
  r.firstSeenMs = st.getInt(5);
  r.updatedMs = st.getInt(6);
  r.lastAddress = st.getText(7);
  r.refusals = st.getInt(8);
  return r;
}
}  // namespace

util::Result<std::optional<KeyRecord>> KeyStore::find(const crypto::PublicKey& key) {
  auto st = db_.prepare(std::string("SELECT ") + kColumns + " FROM keys WHERE public_key = ?");
  if (!st) return st.error();
  st->bindText(1, key.z85());
  auto row = st->step();
  if (!row) return row.error();
  if (!*row) return std::optional<KeyRecord>();
  return std::optional<KeyRecord>(readRow(*st));
}

util::Status KeyStore::accept(const crypto::PublicKey& key, Role role, const std::string& comment,
                              std::int64_t nowMs) {
  auto st = db_.prepare(
      "INSERT INTO keys(public_key, fingerprint, role, state, comment, first_seen_ms, updated_ms) "
      "VALUES(?1, ?2, ?3, 'accepted', ?4, ?5, ?5) "
      "ON CONFLICT(public_key) DO UPDATE SET role = ?3, state = 'accepted', updated_ms = ?5, "
      "comment = CASE WHEN ?4 = '' THEN comment ELSE ?4 END");
  if (!st) return st.error();
  st->bindText(1, key.z85()).bindText(2, key.fingerprint()).bindText(3, roleName(role))
      .bindText(4, comment).bind(5, nowMs);
  return st->run();
}

util::Status KeyStore::recordRefusal(const crypto::PublicKey& key, Role wantedRole,
                                     const std::string& address, std::int64_t nowMs) {
  auto st = db_.prepare(
      "INSERT INTO keys(public_key, fingerprint, role, state, first_seen_ms, updated_ms, last_address, refusals) "
      "VALUES(?1, ?2, ?3, 'pending', ?4, ?4, ?5, 1) "
      "ON CONFLICT(public_key) DO UPDATE SET refusals = refusals + 1, last_address = ?5, "
      "updated_ms = ?4");
  if (!st) return st.error();
  st->bindText(1, key.z85()).bindText(2, key.fingerprint()).bindText(3, roleName(wantedRole))
      .bind(4, nowMs).bindText(5, address);
  if (auto s = st->run(); !s) return s;
  auto trim = db_.prepare(
      "DELETE FROM keys WHERE state = 'pending' AND public_key IN (SELECT public_key FROM keys "
      "WHERE state = 'pending' ORDER BY updated_ms DESC LIMIT -1 OFFSET ?1)");
  if (!trim) return trim.error();
  trim->bind(1, kMaxPending);
  return trim->run();
}

util::Status KeyStore::revoke(const crypto::PublicKey& key, std::int64_t nowMs) {
  auto st = db_.prepare("UPDATE keys SET state = 'revoked', updated_ms = ?2 WHERE public_key = ?1");
  if (!st) return st.error();
  st->bindText(1, key.z85()).bind(2, nowMs);
  if (auto s = st->run(); !s) return s;
  if (db_.changes() == 0) return util::err("no such key: " + key.fingerprint());
  return {};
}

util::Status KeyStore::setDrained(const std::string& z85, std::optional<std::int64_t> sinceMs) {
  auto st = db_.prepare("UPDATE keys SET drained_ms = ?2 WHERE public_key = ?1");
  if (!st) return st.error();
  st->bindText(1, z85);
  if (sinceMs) {
    st->bind(2, *sinceMs);
  } else {
    st->bindNull(2);
  }
  if (auto s = st->run(); !s) return s;
  if (db_.changes() == 0) return util::err("no such key: " + z85);
  return {};
}

util::Result<std::map<std::string, std::int64_t>> KeyStore::drained() {
  auto st = db_.prepare("SELECT public_key, drained_ms FROM keys WHERE drained_ms IS NOT NULL");
  if (!st) return st.error();
  std::map<std::string, std::int64_t> out;
  for (;;) {
    auto row = st->step();
    if (!row) return row.error();
    if (!*row) break;
    out[st->getText(0)] = st->getInt(1);
  }
  return out;
}

util::Result<KeyRecord> KeyStore::resolve(const std::string& text, bool wholeFingerprint) {
  // A full key or a key file first.
  bool isFile = access(text.c_str(), F_OK) == 0;
  if (text.size() == 40 || isFile) {
    auto key = crypto::loadPublicKey(text);
    if (!key && isFile) return util::err("cannot use key file " + text + ": " + key.error().message);
    if (key) {
      auto found = find(*key);
      if (!found) return found.error();
      if (*found) return **found;
      KeyRecord r;
      r.publicKey = key->z85();
      r.fingerprint = key->fingerprint();
      r.state = KeyState::kPending;
      r.role = Role::kClient;
      r.firstSeenMs = -1;  // not in the table yet
      return r;
    }
  }
  std::string want = crypto::normalizeFingerprint(text);
  if (want.size() < 4) return util::err("give at least 4 hex digits of the fingerprint, or the whole key");
  if (wholeFingerprint && want.size() < 16) {
    return util::err("give the whole fingerprint (16 hex digits, as the log and `mesh keys pending` show it) or the key: a "
                     "prefix could name a key somebody made to match it");
  }
  auto all = list();
  if (!all) return all.error();
  std::vector<KeyRecord> matches;
  for (auto& r : *all) {
    if (crypto::normalizeFingerprint(r.fingerprint).rfind(want, 0) == 0) matches.push_back(r);
  }
  if (matches.empty()) return util::err("no key matches '" + text + "': see `mesh keys list` and `mesh keys pending`");
  if (matches.size() > 1) return util::err("'" + text + "' matches " + std::to_string(matches.size()) + " keys: give more digits");
  return matches[0];
}

util::Result<std::vector<KeyRecord>> KeyStore::list(std::optional<KeyState> state) {
  std::string sql = std::string("SELECT ") + kColumns + " FROM keys";
  if (state) sql += std::string(" WHERE state = '") + keyStateName(*state) + "'";
  sql += " ORDER BY first_seen_ms, public_key";
  auto st = db_.prepare(sql);
  if (!st) return st.error();
  std::vector<KeyRecord> out;
  for (;;) {
    auto row = st->step();
    if (!row) return row.error();
    if (!*row) break;
    out.push_back(readRow(*st));
  }
  return out;
}

}  // namespace mesh::store
