// SQLite behind ProfileStore. Every value is bound to a prepared statement; no SQL is built from data.
#include "profiler/profile_store.h"

#include <sqlite3.h>

#include <cmath>
#include <filesystem>

#include "common/error.h"

namespace reel {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stage_profiles (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  stage TEXT NOT NULL,
  stage_digest TEXT NOT NULL,
  device_kind TEXT NOT NULL,
  device_name TEXT NOT NULL,
  device_capacity_bytes INTEGER NOT NULL,
  strategy TEXT NOT NULL,
  dtype TEXT NOT NULL,
  frames INTEGER NOT NULL,
  height INTEGER NOT NULL,
  width INTEGER NOT NULL,
  steps INTEGER NOT NULL,
  batch INTEGER NOT NULL,
  outcome TEXT NOT NULL,
  error TEXT NOT NULL,
  peak_device_bytes INTEGER NOT NULL,
  base_device_bytes INTEGER NOT NULL DEFAULT 0,
  peak_host_rss_bytes INTEGER NOT NULL,
  pinned_host_bytes INTEGER NOT NULL,
  copied_bytes INTEGER NOT NULL,
  load_seconds REAL NOT NULL,
  copy_seconds REAL NOT NULL,
  compute_seconds REAL NOT NULL,
  wall_seconds REAL NOT NULL,
  step_seconds TEXT NOT NULL,
  block_seconds TEXT NOT NULL,
  recorded_at INTEGER NOT NULL
);
-- Lookups by weights and device dominate; the other key fields narrow a handful of rows.
CREATE INDEX IF NOT EXISTS stage_profiles_by_digest ON stage_profiles (stage_digest, device_kind);
-- Sequence parallelism's exchanges (a table of its own: files of schema 2 gain it on open).
CREATE TABLE IF NOT EXISTS link_profiles (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  link TEXT NOT NULL,
  ranks INTEGER NOT NULL,
  bytes_sent INTEGER NOT NULL,
  exchange_seconds REAL NOT NULL,
  recorded_at INTEGER NOT NULL
);
)sql";

constexpr const char* kInsert = R"sql(
INSERT INTO stage_profiles (stage, stage_digest, device_kind, device_name, device_capacity_bytes, strategy, dtype,
  frames, height, width, steps, batch, outcome, error, peak_device_bytes, peak_host_rss_bytes, pinned_host_bytes,
  copied_bytes, load_seconds, copy_seconds, compute_seconds, wall_seconds, step_seconds, block_seconds, recorded_at,
  base_device_bytes)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23,
  ?24, ?25, ?26)
)sql";

// Wildcards are decided by the bound values, so one prepared statement serves every key.
constexpr const char* kFind = R"sql(
SELECT id, stage, stage_digest, device_kind, device_name, device_capacity_bytes, strategy, dtype,
  frames, height, width, steps, batch, outcome, error, peak_device_bytes, peak_host_rss_bytes, pinned_host_bytes,
  copied_bytes, load_seconds, copy_seconds, compute_seconds, wall_seconds, step_seconds, block_seconds, recorded_at,
  base_device_bytes
FROM stage_profiles
WHERE (?1 = '' OR stage_digest = ?1)
  AND (?2 = '' OR device_kind = ?2)
  AND (?3 < 0 OR device_capacity_bytes = ?3)
  AND (?4 < 0 OR frames = ?4)
  AND (?5 < 0 OR height = ?5)
  AND (?6 < 0 OR width = ?6)
  AND (?7 = '' OR dtype = ?7)
  AND (?8 = '' OR strategy = ?8)
ORDER BY recorded_at DESC, id DESC
)sql";

}  // namespace

class ProfileStore::Statement {
 public:
  Statement(const ProfileStore& store, const char* sql) : store_(store) {
    if (sqlite3_prepare_v3(store.db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr) != SQLITE_OK)
      store.Fail("preparing a statement");
  }
  ~Statement() { sqlite3_finalize(stmt_); }

  // Leaves the statement ready for the next use even when a step failed midway.
  void Reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  void Bind(int i, const std::string& v) { Check(sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT)); }
  void Bind(int i, int64_t v) { Check(sqlite3_bind_int64(stmt_, i, v)); }
  void Bind(int i, int v) { Check(sqlite3_bind_int64(stmt_, i, v)); }
  void Bind(int i, double v) { Check(sqlite3_bind_double(stmt_, i, v)); }

  bool Step(const std::string& doing) {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    store_.Fail(doing);
  }
  std::string Text(int col) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
    return p ? std::string(p, sqlite3_column_bytes(stmt_, col)) : std::string();
  }
  bool Null(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  double Real(int col) const { return sqlite3_column_double(stmt_, col); }

 private:
  void Check(int rc) {
    if (rc != SQLITE_OK) store_.Fail("binding a value");
  }
  const ProfileStore& store_;
  sqlite3_stmt* stmt_ = nullptr;
};

ProfileKey ProfileKey::Of(const StageProfile& p) {
  return {p.stage_digest, p.device_kind, p.device_capacity_bytes, p.frames, p.height, p.width, p.dtype, p.strategy};
}

void ProfileStore::Fail(const std::string& doing) const {
  const int code = sqlite3_errcode(db_);
  if (code == SQLITE_NOTADB) throw IoError("profile store " + path_ + ": not a SQLite database");
  throw IoError("profile store " + path_ + ": " + doing + " failed: " + sqlite3_errmsg(db_));
}

void ProfileStore::Exec(const char* sql) const {
  if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) Fail(std::string("running ") + sql);
}

ProfileStore::ProfileStore(const std::string& path) : path_(path) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(path).parent_path();
  std::error_code ec;
  // SQLite only says "unable to open database file"; naming the directory tells the user what to create.
  if (!dir.empty() && !fs::is_directory(dir, ec))
    throw IoError("profile store " + path + ": directory " + dir.string() + " does not exist");
  if (fs::is_directory(path, ec)) throw IoError("profile store " + path + ": is a directory, expected a SQLite file");
  // NOMUTEX: mu_ already serialises this connection.
  const int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
  try {
    if (rc != SQLITE_OK) Fail("opening");
    // Another process may be writing (a second `reel generate`); wait for it rather than fail.
    sqlite3_busy_timeout(db_, 10'000);
    // The first read of the file happens here, so this is where a non-SQLite file is detected.
    Exec("PRAGMA journal_mode=WAL");
    Exec("PRAGMA synchronous=NORMAL");  // durable enough for measurements with WAL, and much cheaper
    // IMMEDIATE: two processes creating the schema at once must not both insert a version row.
    Exec("BEGIN IMMEDIATE");
    try {
      Exec(kSchema);
      Statement version(*this, "SELECT MAX(version) FROM schema_version");
      version.Step("reading the schema version");
      if (version.Null(0)) {
        Statement set(*this, "INSERT INTO schema_version (version) VALUES (?1)");
        set.Bind(1, kSchemaVersion);
        set.Step("writing the schema version");
      } else if (version.Int(0) < kSchemaVersion) {
        // Version 1 had no base_device_bytes: its rows read as 0 (the stage's peak taken as its own need).
        Exec("ALTER TABLE stage_profiles ADD COLUMN base_device_bytes INTEGER NOT NULL DEFAULT 0");
        Statement set(*this, "INSERT INTO schema_version (version) VALUES (?1)");
        set.Bind(1, kSchemaVersion);
        set.Step("writing the schema version");
      } else if (version.Int(0) > kSchemaVersion) {
        throw IoError("profile store " + path + ": written with schema version " + std::to_string(version.Int(0)) +
                      ", this reel reads version " + std::to_string(kSchemaVersion) +
                      " (use a newer reel or another --profile-db)");
      }
      Exec("COMMIT");
    } catch (...) {
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
    insert_ = std::make_unique<Statement>(*this, kInsert);
    find_ = std::make_unique<Statement>(*this, kFind);
  } catch (...) {
    insert_.reset();
    find_.reset();
    sqlite3_close_v2(db_);
    db_ = nullptr;
    throw;
  }
}

ProfileStore::~ProfileStore() {
  insert_.reset();
  find_.reset();
  sqlite3_close_v2(db_);
}

int64_t ProfileStore::Insert(const StageProfile& p) {
  p.Validate("profile for " + path_);
  std::lock_guard lock(mu_);
  Exec("BEGIN IMMEDIATE");
  try {
    Statement& s = *insert_;
    s.Reset();
    s.Bind(1, p.stage);
    s.Bind(2, p.stage_digest);
    s.Bind(3, p.device_kind);
    s.Bind(4, p.device_name);
    s.Bind(5, p.device_capacity_bytes);
    s.Bind(6, p.strategy);
    s.Bind(7, p.dtype);
    s.Bind(8, p.frames);
    s.Bind(9, p.height);
    s.Bind(10, p.width);
    s.Bind(11, p.steps);
    s.Bind(12, p.batch);
    s.Bind(13, p.outcome);
    s.Bind(14, p.error);
    s.Bind(15, p.peak_device_bytes);
    s.Bind(16, p.peak_host_rss_bytes);
    s.Bind(17, p.pinned_host_bytes);
    s.Bind(18, p.copied_bytes);
    s.Bind(19, p.load_seconds);
    s.Bind(20, p.copy_seconds);
    s.Bind(21, p.compute_seconds);
    s.Bind(22, p.wall_seconds);
    s.Bind(23, nlohmann::json(p.step_seconds).dump());
    s.Bind(24, nlohmann::json(p.block_seconds).dump());
    s.Bind(25, p.recorded_at);
    s.Bind(26, p.base_device_bytes);
    s.Step("inserting a profile");
    const int64_t id = sqlite3_last_insert_rowid(db_);
    s.Reset();
    Exec("COMMIT");
    return id;
  } catch (...) {
    insert_->Reset();
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

std::vector<StoredProfile> ProfileStore::Find(const ProfileKey& key) const {
  std::lock_guard lock(mu_);
  Statement& s = *find_;
  s.Reset();
  s.Bind(1, key.stage_digest);
  s.Bind(2, key.device_kind);
  s.Bind(3, key.device_capacity_bytes);
  s.Bind(4, key.frames);
  s.Bind(5, key.height);
  s.Bind(6, key.width);
  s.Bind(7, key.dtype);
  s.Bind(8, key.strategy);
  std::vector<StoredProfile> rows;
  try {
    while (s.Step("looking up profiles")) {
      StoredProfile r;
      r.id = s.Int(0);
      StageProfile& p = r.profile;
      p.stage = s.Text(1);
      p.stage_digest = s.Text(2);
      p.device_kind = s.Text(3);
      p.device_name = s.Text(4);
      p.device_capacity_bytes = s.Int(5);
      p.strategy = s.Text(6);
      p.dtype = s.Text(7);
      p.frames = static_cast<int>(s.Int(8));
      p.height = static_cast<int>(s.Int(9));
      p.width = static_cast<int>(s.Int(10));
      p.steps = static_cast<int>(s.Int(11));
      p.batch = static_cast<int>(s.Int(12));
      p.outcome = s.Text(13);
      p.error = s.Text(14);
      p.peak_device_bytes = s.Int(15);
      p.peak_host_rss_bytes = s.Int(16);
      p.pinned_host_bytes = s.Int(17);
      p.copied_bytes = s.Int(18);
      p.load_seconds = s.Real(19);
      p.copy_seconds = s.Real(20);
      p.compute_seconds = s.Real(21);
      p.wall_seconds = s.Real(22);
      p.step_seconds = ParseSeconds(s.Text(23), r.id, "step_seconds");
      p.block_seconds = ParseSeconds(s.Text(24), r.id, "block_seconds");
      p.recorded_at = s.Int(25);
      p.base_device_bytes = s.Int(26);
      rows.push_back(std::move(r));
    }
  } catch (...) {
    s.Reset();
    throw;
  }
  s.Reset();  // releases the read snapshot so the WAL can be checkpointed
  return rows;
}

std::vector<StoredProfile> ProfileStore::All() const { return Find(ProfileKey{}); }

void LinkProfile::Validate(const std::string& what) const {
  if (link.empty()) throw InvalidArgument(what + ": link: accepted a name such as host/gloo");
  if (ranks < 2) throw InvalidArgument(what + ": ranks " + std::to_string(ranks) + ": accepted 2 or more");
  if (bytes_sent <= 0)
    throw InvalidArgument(what + ": bytes_sent " + std::to_string(bytes_sent) + ": accepted more than 0");
  if (!(exchange_seconds > 0) || !std::isfinite(exchange_seconds))
    throw InvalidArgument(what + ": exchange_seconds " + std::to_string(exchange_seconds) +
                          ": accepted a finite number above 0");
}

int64_t ProfileStore::InsertLink(const LinkProfile& p) {
  p.Validate("link profile for " + path_);
  std::lock_guard lock(mu_);
  Statement s(*this, "INSERT INTO link_profiles (link, ranks, bytes_sent, exchange_seconds, recorded_at) "
                     "VALUES (?1, ?2, ?3, ?4, ?5)");
  s.Bind(1, p.link);
  s.Bind(2, p.ranks);
  s.Bind(3, p.bytes_sent);
  s.Bind(4, p.exchange_seconds);
  s.Bind(5, p.recorded_at);
  s.Step("inserting a link profile");
  return sqlite3_last_insert_rowid(db_);
}

std::vector<LinkProfile> ProfileStore::Links(const std::string& link) const {
  std::lock_guard lock(mu_);
  Statement s(*this, "SELECT link, ranks, bytes_sent, exchange_seconds, recorded_at FROM link_profiles "
                     "WHERE (?1 = '' OR link = ?1) ORDER BY recorded_at DESC, id DESC");
  s.Bind(1, link);
  std::vector<LinkProfile> out;
  while (s.Step("looking up link profiles")) {
    LinkProfile p;
    p.link = s.Text(0);
    p.ranks = static_cast<int>(s.Int(1));
    p.bytes_sent = s.Int(2);
    p.exchange_seconds = s.Real(3);
    p.recorded_at = s.Int(4);
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<double> ProfileStore::ParseSeconds(const std::string& text, int64_t id, const char* column) const {
  const auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  std::vector<double> out;
  bool ok = j.is_array();
  if (ok)
    for (const auto& e : j) {
      if (!e.is_number()) ok = false;
      else out.push_back(e.get<double>());
    }
  if (!ok)
    throw IoError("profile store " + path_ + ": row " + std::to_string(id) + " has a corrupt " + column + " column");
  return out;
}

}  // namespace reel
