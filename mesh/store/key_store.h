// The table of Curve public keys the nexus knows: accepted (with a role), pending (refused,
// waiting for `mesh keys accept`), revoked. The ZAP thread reads it on every handshake (through
// its own connection), and the `mesh keys` CLI changes it; the nexus notices changes through
// PRAGMA data_version.
//
// Thread rule: a KeyStore uses one Db and belongs to that Db's thread.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mesh/crypto/keys.h"
#include "mesh/store/db.h"

namespace mesh::store {

enum class Role { kNode, kClient, kAdmin };
enum class KeyState { kAccepted, kPending, kRevoked };

const char* roleName(Role r);
util::Result<Role> parseRole(std::string_view text);
const char* keyStateName(KeyState s);

struct KeyRecord {
  std::string publicKey;  // z85
  std::string fingerprint;
  Role role = Role::kNode;
  KeyState state = KeyState::kPending;
  std::string comment;
  std::int64_t firstSeenMs = 0;
  std::int64_t updatedMs = 0;
  std::string lastAddress;
  std::int64_t refusals = 0;
};

class KeyStore {
 public:
  explicit KeyStore(Db& db) : db_(db) {}

  util::Result<std::optional<KeyRecord>> find(const crypto::PublicKey& key);
  // Adds or re-accepts a key with a role (operator action).
  util::Status accept(const crypto::PublicKey& key, Role role, const std::string& comment, std::int64_t nowMs);
  // Records a refused unknown key as pending (role = the port it tried); counts repeat refusals.
  // Keys already accepted or revoked keep their state. At most kMaxPending keys stay pending: a
  // new one beyond that replaces the one refused longest ago (a flood of made-up keys cannot
  // grow the table).
  static constexpr int kMaxPending = 1000;
  util::Status recordRefusal(const crypto::PublicKey& key, Role wantedRole, const std::string& address,
                             std::int64_t nowMs);
  util::Status revoke(const crypto::PublicKey& key, std::int64_t nowMs);
  // Resolves what an operator typed: a full z85 key, a key file, or a fingerprint (prefix).
  // Errors when nothing or more than one key matches. `wholeFingerprint`: a fingerprint must
  // have all its 16 hex digits (accepting a key: anyone can record a pending key by trying to
  // connect, and can make one whose fingerprint starts with the few digits an operator types).
  util::Result<KeyRecord> resolve(const std::string& text, bool wholeFingerprint = false);
  util::Result<std::vector<KeyRecord>> list(std::optional<KeyState> state = std::nullopt);
  // `mesh nodes drain`: marks the key (z85) drained since sinceMs, or not drained (nullopt).
  // Errors when the table has no such key.
  util::Status setDrained(const std::string& z85, std::optional<std::int64_t> sinceMs);
  // The drained keys (z85) and since when.
  util::Result<std::map<std::string, std::int64_t>> drained();

 private:
  Db& db_;
};

}  // namespace mesh::store
