// RAII SQLite: Db (a connection) and Statement (a prepared statement), plus a Transaction guard.
// Every failure is a Result/Status carrying SQLite's message; nothing here aborts.
//
// Db::open sets WAL, synchronous=FULL, a busy timeout, and runs the migrations (schema.cpp)
// keyed by PRAGMA user_version. Several connections (the nexus loop, its writer thread, its ZAP
// thread, the `mesh keys` CLI) may use one file at once: WAL lets readers run beside the writer.
//
// Thread rule: a Db and its Statements belong to one thread.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mesh/util/result.h"

namespace mesh::store {

// Prepared statements a Db keeps for reuse, by SQL text. Shared with the Statements it lends
// out, so that a Statement may outlive a move of its Db (and is finalized if it outlives the Db).
struct StatementCache {
  std::unordered_map<std::string, std::vector<sqlite3_stmt*>> idle;
  bool closed = false;
  ~StatementCache();
};

class Statement {
 public:
  Statement() = default;
  Statement(Statement&&) noexcept;
  Statement& operator=(Statement&&) noexcept;
  ~Statement();

  Statement& bind(int index, std::int64_t value);
  Statement& bindText(int index, std::string_view value);  // copied by SQLite
  Statement& bindBlob(int index, std::string_view value);  // copied by SQLite
  Statement& bindBlobStatic(int index, std::string_view value);  // must outlive the step
  Statement& bindNull(int index);
  // true: a row is ready; false: done. Errors (including bind errors) come back here.
  util::Result<bool> step();
  // Steps until done; for statements that return no rows.
  util::Status run();
  void reset();  // also clears bindings

  std::int64_t getInt(int column) const;
  std::string getText(int column) const;
  std::string_view getBlob(int column) const;  // valid until the next step or reset
  bool isNull(int column) const;

 private:
  friend class Db;
  Statement(sqlite3* db, sqlite3_stmt* stmt, std::shared_ptr<StatementCache> cache, std::string sql)
      : db_(db), stmt_(stmt), cache_(std::move(cache)), sql_(std::move(sql)) {}
  void release();  // back to the cache (reset, bindings cleared), or finalized
  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
  int bindError_ = SQLITE_OK;
  std::shared_ptr<StatementCache> cache_;
  std::string sql_;
};

class Db {
 public:
  Db() = default;
  Db(Db&&) noexcept;
  Db& operator=(Db&&) noexcept;
  ~Db();

  // Opens (creating if needed) and migrates. Refuses a file made by a newer release.
  static util::Result<Db> open(const std::string& path);

  util::Status exec(const std::string& sql);
  // A statement for `sql`: a cached one reset for reuse when there is one, so callers may
  // prepare in their hot loops; it goes back to the cache when the Statement is destroyed.
  util::Result<Statement> prepare(std::string_view sql);
  std::int64_t lastInsertRowid() const { return sqlite3_last_insert_rowid(db_); }
  int changes() const { return sqlite3_changes(db_); }
  // Changes whenever another connection commits: cheap polling for "did the keys change".
  util::Result<std::int64_t> dataVersion();
  const std::string& path() const { return path_; }
  sqlite3* handle() { return db_; }

 private:
  void closeNow();  // finalizes idle statements and closes; the Db is then empty
  sqlite3* db_ = nullptr;
  std::string path_;
  std::shared_ptr<StatementCache> cache_ = std::make_shared<StatementCache>();
};

// BEGIN IMMEDIATE on construction; ROLLBACK on destruction unless commit() succeeded.
class Transaction {
 public:
  explicit Transaction(Db& db);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  const util::Status& begun() const { return begun_; }
  util::Status commit();

 private:
  Db& db_;
  util::Status begun_;
  bool open_ = false;
};

// BEGIN (deferred) on construction; ends on destruction (nothing was written: COMMIT). The reads
// made in between see one snapshot of the file (WAL: from the first read on), whatever other
// connections commit meanwhile: for reads that must agree, such as a batch row and the counts of
// its results while the writer thread deletes them. Not inside a Transaction on the same Db.
class ReadSnapshot {
 public:
  explicit ReadSnapshot(Db& db);
  ~ReadSnapshot();
  ReadSnapshot(const ReadSnapshot&) = delete;
  ReadSnapshot& operator=(const ReadSnapshot&) = delete;
  const util::Status& begun() const { return begun_; }

 private:
  Db& db_;
  util::Status begun_;
};

}  // namespace mesh::store
