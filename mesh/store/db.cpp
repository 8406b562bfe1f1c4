#include "mesh/store/db.h"

#include "mesh/store/schema.h"

namespace mesh::store {

namespace {
constexpr std::size_t kIdlePerSql = 4;  // a few of each: nested uses of one statement are rare

// "SQLite (FILE): message": an operator with several databases needs to know which one failed.
std::string sqliteError(sqlite3* db, const std::string& message) {
  const char* file = db ? sqlite3_db_filename(db, "main") : nullptr;
  return file && *file ? "SQLite (" + std::string(file) + "): " + message : "SQLite: " + message;
}
}  // namespace

StatementCache::~StatementCache() {
  for (auto& [sql, stmts] : idle) {
    for (sqlite3_stmt* s : stmts) sqlite3_finalize(s);
  }
}

void Statement::release() {
  if (!stmt_) return;
  if (cache_ && !cache_->closed) {
    auto& list = cache_->idle[sql_];
    if (list.size() < kIdlePerSql) {
      sqlite3_reset(stmt_);
      sqlite3_clear_bindings(stmt_);
      list.push_back(stmt_);
      stmt_ = nullptr;
      return;
    }
  }
  sqlite3_finalize(stmt_);
  stmt_ = nullptr;
}

Statement::Statement(Statement&& o) noexcept
    : db_(o.db_), stmt_(o.stmt_), bindError_(o.bindError_), cache_(std::move(o.cache_)), sql_(std::move(o.sql_)) {
  o.stmt_ = nullptr;
}
Statement& Statement::operator=(Statement&& o) noexcept {
  if (this != &o) {
    release();
    db_ = o.db_;
    stmt_ = o.stmt_;
    bindError_ = o.bindError_;
    cache_ = std::move(o.cache_);
    sql_ = std::move(o.sql_);
    o.stmt_ = nullptr;
  }
  return *this;
}
Statement::~Statement() { release(); }

Statement& Statement::bind(int index, std::int64_t value) {
  int rc = sqlite3_bind_int64(stmt_, index, value);
  if (rc != SQLITE_OK) bindError_ = rc;
  return *this;
}
Statement& Statement::bindText(int index, std::string_view value) {
  int rc = sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
  if (rc != SQLITE_OK) bindError_ = rc;
  return *this;
}
Statement& Statement::bindBlob(int index, std::string_view value) {
  int rc = sqlite3_bind_blob64(stmt_, index, value.data() ? value.data() : "", value.size(), SQLITE_TRANSIENT);
  if (rc != SQLITE_OK) bindError_ = rc;
  return *this;
}
Statement& Statement::bindBlobStatic(int index, std::string_view value) {
  int rc = sqlite3_bind_blob64(stmt_, index, value.data() ? value.data() : "", value.size(), SQLITE_STATIC);
  if (rc != SQLITE_OK) bindError_ = rc;
  return *this;
}
Statement& Statement::bindNull(int index) {
  int rc = sqlite3_bind_null(stmt_, index);
  if (rc != SQLITE_OK) bindError_ = rc;
  return *this;
}

util::Result<bool> Statement::step() {
  if (bindError_ != SQLITE_OK) {
    return util::err(std::string("SQLite bind failed: ") + sqlite3_errstr(bindError_));
  }
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return util::err(sqliteError(db_, sqlite3_errmsg(db_)));
}

util::Status Statement::run() {
  for (;;) {
    auto r = step();
    if (!r) return r.error();
    if (!*r) return {};
  }
}

void Statement::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
  bindError_ = SQLITE_OK;
}

std::int64_t Statement::getInt(int column) const { return sqlite3_column_int64(stmt_, column); }
std::string Statement::getText(int column) const {
  const unsigned char* t = sqlite3_column_text(stmt_, column);
  return t ? std::string(reinterpret_cast<const char*>(t), sqlite3_column_bytes(stmt_, column)) : std::string();
}
std::string_view Statement::getBlob(int column) const {
  const void* b = sqlite3_column_blob(stmt_, column);
  return b ? std::string_view(static_cast<const char*>(b), sqlite3_column_bytes(stmt_, column)) : std::string_view();
}
bool Statement::isNull(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }

Db::Db(Db&& o) noexcept : db_(o.db_), path_(std::move(o.path_)), cache_(std::move(o.cache_)) {
  o.db_ = nullptr;
  o.cache_ = std::make_shared<StatementCache>();
}
Db& Db::operator=(Db&& o) noexcept {
  if (this != &o) {
    closeNow();
    db_ = o.db_;
    path_ = std::move(o.path_);
    cache_ = std::move(o.cache_);
    o.db_ = nullptr;
    o.cache_ = std::make_shared<StatementCache>();
  }
  return *this;
}
Db::~Db() { closeNow(); }

void Db::closeNow() {
  if (!cache_) return;
  // Finalize what is idle now, and make Statements still out there finalize themselves;
  // sqlite3_close_v2 waits for those before it really closes.
  for (auto& [sql, stmts] : cache_->idle) {
    for (sqlite3_stmt* s : stmts) sqlite3_finalize(s);
  }
  cache_->idle.clear();
  cache_->closed = true;
  if (db_) sqlite3_close_v2(db_);
  db_ = nullptr;
}

util::Result<Db> Db::open(const std::string& path) {
  Db db;
  db.path_ = path;
  int rc = sqlite3_open_v2(path.c_str(), &db.db_,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    return util::err("cannot open database " + path + ": " +
                     (db.db_ ? sqlite3_errmsg(db.db_) : sqlite3_errstr(rc)));
  }
  sqlite3_busy_timeout(db.db_, 10000);
  // SQLite's default 4 KiB page is kept on purpose: 64 KiB pages halve the cost of storing 4 KiB
  // payloads but add ~0.5 ms to every pair of small commits, the latency of a one-task batch
  // (docs/benchmarks.md, "Page size").
  for (const char* pragma : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
                             "PRAGMA foreign_keys=ON", "PRAGMA temp_store=MEMORY"}) {
    if (auto s = db.exec(pragma); !s) return util::err("database " + path + ": " + s.error().message);
  }
  if (auto s = migrate(db); !s) return util::err("database " + path + ": " + s.error().message);
  return db;
}

util::Status Db::exec(const std::string& sql) {
  char* message = nullptr;
  int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &message);
  if (rc != SQLITE_OK) {
    std::string text = message ? message : sqlite3_errstr(rc);
    sqlite3_free(message);
    return util::err(sqliteError(db_, text));
  }
  return {};
}

util::Result<Statement> Db::prepare(std::string_view sql) {
  std::string key(sql);
  auto it = cache_->idle.find(key);
  if (it != cache_->idle.end() && !it->second.empty()) {
    sqlite3_stmt* stmt = it->second.back();
    it->second.pop_back();
    return Statement(db_, stmt, cache_, std::move(key));
  }
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (rc != SQLITE_OK) return util::err(std::string("SQLite prepare: ") + sqlite3_errmsg(db_));
  return Statement(db_, stmt, cache_, std::move(key));
}

util::Result<std::int64_t> Db::dataVersion() {
  auto st = prepare("PRAGMA data_version");
  if (!st) return st.error();
  auto row = st->step();
  if (!row) return row.error();
  return st->getInt(0);
}

namespace {
// BEGIN and COMMIT through the statement cache: sqlite3_exec would parse them on every call
// (about 10 % of the nexus's instructions for one-task batches).
util::Status runCached(Db& db, const char* sql) {
  auto st = db.prepare(sql);
  if (!st) return st.error();
  return st->run();
}
}  // namespace

Transaction::Transaction(Db& db) : db_(db) {
  begun_ = runCached(db_, "BEGIN IMMEDIATE");
  open_ = begun_.ok();
}

Transaction::~Transaction() {
  if (open_) (void)db_.exec("ROLLBACK");
}

util::Status Transaction::commit() {
  if (!open_) return begun_.ok() ? util::Status(util::err("transaction already ended")) : begun_;
  auto s = runCached(db_, "COMMIT");
  if (s) open_ = false;
  return s;
}

ReadSnapshot::ReadSnapshot(Db& db) : db_(db) { begun_ = runCached(db_, "BEGIN"); }

ReadSnapshot::~ReadSnapshot() {
  if (begun_.ok() && !runCached(db_, "COMMIT")) (void)db_.exec("ROLLBACK");
}

}  // namespace mesh::store
