// The nexus database schema and its migrations, keyed by PRAGMA user_version.
// docs/operations.md describes the tables for operators who back up or inspect the file.
#pragma once

#include "mesh/util/result.h"

namespace mesh::store {

class Db;

constexpr int kSchemaVersion = 12;

// Brings the database to kSchemaVersion in one transaction per step. Refuses a newer file.
util::Status migrate(Db& db);

}  // namespace mesh::store
