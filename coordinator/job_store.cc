#include "coordinator/job_store.h"

#include <sqlite3.h>

#include <algorithm>

#include <fmt/format.h>

#include "common/error.h"

namespace reel {

namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  seq INTEGER NOT NULL,
  state TEXT NOT NULL,
  priority INTEGER NOT NULL,
  model TEXT NOT NULL,
  spec BLOB NOT NULL,               -- reel.v1.JobSpec, serialized (with the image bytes)
  submitted_us INTEGER NOT NULL,
  started_us INTEGER NOT NULL,
  finished_us INTEGER NOT NULL,
  error TEXT NOT NULL,
  output_path TEXT NOT NULL,
  output_bytes INTEGER NOT NULL,
  attempts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, priority, seq);
CREATE INDEX IF NOT EXISTS jobs_by_seq ON jobs (seq);
CREATE TABLE IF NOT EXISTS stages (
  job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  idx INTEGER NOT NULL,
  stage TEXT NOT NULL,
  state TEXT NOT NULL,
  worker TEXT NOT NULL,
  guidance_peer TEXT NOT NULL,
  started_us INTEGER NOT NULL,
  finished_us INTEGER NOT NULL,
  step INTEGER NOT NULL,
  steps INTEGER NOT NULL,
  error TEXT NOT NULL,
  profile TEXT NOT NULL,            -- the worker's StageProfile JSON
  PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS boots (boot INTEGER PRIMARY KEY, started_us INTEGER NOT NULL);
)sql";

class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK) s_ = nullptr;
  }
  ~Stmt() { sqlite3_finalize(s_); }
  bool ok() const { return s_ != nullptr; }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Blob(int i, const std::string& v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  int Step() { return sqlite3_step(s_); }
  int64_t Int(int c) { return sqlite3_column_int64(s_, c); }
  std::string Text(int c) {
    const auto* p = static_cast<const char*>(sqlite3_column_blob(s_, c));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(s_, c))) : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
};

const char* StateName(reel::v1::JobState s) {
  switch (s) {
    case reel::v1::QUEUED: return "queued";
    case reel::v1::RUNNING: return "running";
    case reel::v1::SUCCEEDED: return "succeeded";
    case reel::v1::FAILED: return "failed";
    case reel::v1::CANCELLED: return "cancelled";
    default: return "unspecified";
  }
}

reel::v1::JobState StateOf(const std::string& s) {
  for (auto st : {reel::v1::QUEUED, reel::v1::RUNNING, reel::v1::SUCCEEDED, reel::v1::FAILED, reel::v1::CANCELLED})
    if (s == StateName(st)) return st;
  return reel::v1::JOB_STATE_UNSPECIFIED;
}

}  // namespace

JobStore::JobStore(const std::string& path) : path_(path) {
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    const std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw IoError(fmt::format("job store {}: cannot open: {}", path, msg));
  }
  sqlite3_busy_timeout(db_, 5000);
  Exec("PRAGMA journal_mode=WAL");
  Exec("PRAGMA synchronous=NORMAL");
  Exec("PRAGMA foreign_keys=ON");
  Exec(kSchema);
  // Version 2 added the client's request id (idempotent submission) and the denoiser's dispatch choice.
  bool has_request_id = false;
  {
    Stmt cols(db_, "SELECT name FROM pragma_table_info('jobs')");
    while (cols.ok() && cols.Step() == SQLITE_ROW) has_request_id = has_request_id || cols.Text(0) == "request_id";
  }
  if (!has_request_id) {
    Exec("ALTER TABLE jobs ADD COLUMN request_id TEXT NOT NULL DEFAULT ''");
    Exec("ALTER TABLE jobs ADD COLUMN denoiser_dispatch TEXT NOT NULL DEFAULT ''");
  }
  // Later additions: a sequence-parallel denoise's other ranks, and their guidance peers, one name a line.
  bool has_sequence_peers = false, has_sequence_guidance_peers = false;
  {
    Stmt cols(db_, "SELECT name FROM pragma_table_info('stages')");
    while (cols.ok() && cols.Step() == SQLITE_ROW) {
      has_sequence_peers = has_sequence_peers || cols.Text(0) == "sequence_peers";
      has_sequence_guidance_peers = has_sequence_guidance_peers || cols.Text(0) == "sequence_guidance_peers";
    }
  }
  if (!has_sequence_peers) Exec("ALTER TABLE stages ADD COLUMN sequence_peers TEXT NOT NULL DEFAULT ''");
  if (!has_sequence_guidance_peers)
    Exec("ALTER TABLE stages ADD COLUMN sequence_guidance_peers TEXT NOT NULL DEFAULT ''");
  Exec("CREATE INDEX IF NOT EXISTS jobs_by_request ON jobs (request_id) WHERE request_id != ''");
  Stmt v(db_, "SELECT version FROM schema_version LIMIT 1");
  if (!v.ok()) Fail("reading the schema version");
  if (v.Step() == SQLITE_ROW) {
    const int64_t version = v.Int(0);
    if (version > kSchemaVersion)
      throw IoError(fmt::format("job store {}: schema version {} is newer than this reel's {}; use a newer reel",
                                path, version, kSchemaVersion));
  } else {
    Exec(fmt::format("INSERT INTO schema_version (version) VALUES ({})", kSchemaVersion).c_str());
  }
  Exec(fmt::format("UPDATE schema_version SET version = {}", kSchemaVersion).c_str());
}

JobStore::~JobStore() { sqlite3_close(db_); }

void JobStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    const std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    throw IoError(fmt::format("job store {}: {}", path_, msg));
  }
}

void JobStore::Fail(const std::string& doing) {
  throw IoError(fmt::format("job store {}: {}: {}", path_, doing, sqlite3_errmsg(db_)));
}

int64_t JobStore::NextSeq() {
  std::lock_guard lock(mu_);
  Stmt s(db_, "SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs");
  if (!s.ok() || s.Step() != SQLITE_ROW) Fail("reading the next sequence number");
  return s.Int(0);
}

void JobStore::Save(const JobRecord& r) { SaveAll({&r}); }

void JobStore::SaveAll(const std::vector<const JobRecord*>& records) {
  std::lock_guard lock(mu_);
  Exec("BEGIN IMMEDIATE");
  try {
    for (const JobRecord* r : records) Write(*r);
    Exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

int64_t JobStore::Boot() {
  std::lock_guard lock(mu_);
  Stmt s(db_, R"sql(INSERT INTO boots (boot, started_us)
    VALUES ((SELECT COALESCE(MAX(boot), 0) + 1 FROM boots), CAST(strftime('%s', 'now') AS INTEGER) * 1000000)
    RETURNING boot)sql");
  if (!s.ok() || s.Step() != SQLITE_ROW) Fail("counting this start");
  return s.Int(0);
}

void JobStore::Write(const JobRecord& r) {
  const auto& j = r.job;
  Stmt ins(db_, R"sql(INSERT OR REPLACE INTO jobs (id, seq, state, priority, model, spec, submitted_us,
    started_us, finished_us, error, output_path, output_bytes, attempts, request_id, denoiser_dispatch)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15))sql");
  if (!ins.ok()) Fail("preparing a job write");
  ins.Bind(1, j.id()).Bind(2, r.seq).Bind(3, std::string(StateName(j.state()))).Bind(4, int64_t{j.priority()});
  ins.Bind(5, j.spec().model()).Blob(6, j.spec().SerializeAsString()).Bind(7, j.submitted_unix_us());
  ins.Bind(8, j.started_unix_us()).Bind(9, j.finished_unix_us()).Bind(10, j.error()).Bind(11, r.output_path);
  ins.Bind(12, j.output_bytes()).Bind(13, int64_t{j.attempts()}).Bind(14, j.request_id());
  ins.Bind(15, j.denoiser_dispatch());
  if (ins.Step() != SQLITE_DONE) Fail("writing job " + j.id());
  Stmt del(db_, "DELETE FROM stages WHERE job_id = ?1");
  del.Bind(1, j.id());
  if (del.Step() != SQLITE_DONE) Fail("writing the stages of job " + j.id());
  for (int i = 0; i < j.stages_size(); ++i) {
    const auto& s = j.stages(i);
    Stmt st(db_, R"sql(INSERT INTO stages (job_id, idx, stage, state, worker, guidance_peer, started_us,
      finished_us, step, steps, error, profile, sequence_peers, sequence_guidance_peers)
      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14))sql");
    std::string peers, guidance;
    for (const auto& n : s.sequence_peers()) peers += (peers.empty() ? "" : "\n") + n;
    for (const auto& n : s.sequence_guidance_peers()) guidance += (guidance.empty() ? "" : "\n") + n;
    st.Bind(13, peers);
    st.Bind(14, guidance);
    st.Bind(1, j.id()).Bind(2, int64_t{i}).Bind(3, reel::v1::Stage_Name(s.stage())).Bind(4, s.state());
    st.Bind(5, s.worker()).Bind(6, s.guidance_peer()).Bind(7, s.started_unix_us()).Bind(8, s.finished_unix_us());
    st.Bind(9, int64_t{s.step()}).Bind(10, int64_t{s.steps()}).Bind(11, s.error());
    st.Bind(12, i < static_cast<int>(r.stage_profiles.size()) ? r.stage_profiles[i] : std::string());
    if (st.Step() != SQLITE_DONE) Fail("writing the stages of job " + j.id());
  }
}

std::vector<JobRecord> JobStore::LoadAll() { return Query("ORDER BY seq", {}); }

std::vector<JobRecord> JobStore::LoadForStart(int ended) {
  return Query(R"sql(WHERE state IN ('queued', 'running') OR id IN
    (SELECT id FROM jobs WHERE state NOT IN ('queued', 'running') ORDER BY seq DESC LIMIT ?1) ORDER BY seq)sql",
               {int64_t{ended}});
}

std::optional<JobRecord> JobStore::Load(const std::string& id) {
  auto rows = Query("WHERE id = ?1", {id});
  if (rows.empty()) return std::nullopt;
  return std::move(rows.front());
}

std::vector<JobRecord> JobStore::LoadNewest(int limit) {
  return Query("ORDER BY seq DESC LIMIT ?1", {int64_t{limit}});
}

std::vector<JobRecord> JobStore::LoadPage(int64_t before_seq, int limit) {
  return Query("WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2", {before_seq, int64_t{limit}});
}

std::optional<JobRecord> JobStore::LoadByRequest(const std::string& request_id) {
  auto rows = Query("WHERE request_id = ?1 AND request_id != '' LIMIT 1", {request_id});
  if (rows.empty()) return std::nullopt;
  return std::move(rows.front());
}

std::vector<JobRecord> JobStore::Query(const std::string& tail,
                                       const std::vector<std::variant<int64_t, std::string>>& args) {
  std::lock_guard lock(mu_);
  std::vector<JobRecord> out;
  Stmt s(db_, (R"sql(SELECT id, seq, state, priority, spec, submitted_us, started_us, finished_us, error,
    output_path, output_bytes, attempts, request_id, denoiser_dispatch FROM jobs )sql" + tail).c_str());
  if (!s.ok()) Fail("reading jobs");
  for (size_t i = 0; i < args.size(); ++i)
    std::visit([&](const auto& v) { s.Bind(static_cast<int>(i + 1), v); }, args[i]);
  while (s.Step() == SQLITE_ROW) {
    JobRecord r;
    auto& j = r.job;
    j.set_id(s.Text(0));
    r.seq = s.Int(1);
    j.set_state(StateOf(s.Text(2)));
    j.set_priority(static_cast<int32_t>(s.Int(3)));
    if (!j.mutable_spec()->ParseFromString(s.Text(4)))
      throw IoError(fmt::format("job store {}: job {} has an unreadable spec", path_, j.id()));
    j.set_submitted_unix_us(s.Int(5));
    j.set_started_unix_us(s.Int(6));
    j.set_finished_unix_us(s.Int(7));
    j.set_error(s.Text(8));
    r.output_path = s.Text(9);
    j.set_output_bytes(s.Int(10));
    j.set_attempts(static_cast<int32_t>(s.Int(11)));
    j.set_request_id(s.Text(12));
    j.set_denoiser_dispatch(s.Text(13));
    out.push_back(std::move(r));
  }
  for (auto& r : out) {
    Stmt st(db_, R"sql(SELECT stage, state, worker, guidance_peer, started_us, finished_us, step, steps, error,
      profile, sequence_peers, sequence_guidance_peers FROM stages WHERE job_id = ?1 ORDER BY idx)sql");
    st.Bind(1, r.job.id());
    while (st.Step() == SQLITE_ROW) {
      auto* s2 = r.job.add_stages();
      reel::v1::Stage stage;
      reel::v1::Stage_Parse(st.Text(0), &stage);
      s2->set_stage(stage);
      s2->set_state(st.Text(1));
      s2->set_worker(st.Text(2));
      s2->set_guidance_peer(st.Text(3));
      s2->set_started_unix_us(st.Int(4));
      s2->set_finished_unix_us(st.Int(5));
      s2->set_step(static_cast<int32_t>(st.Int(6)));
      s2->set_steps(static_cast<int32_t>(st.Int(7)));
      s2->set_error(st.Text(8));
      r.stage_profiles.push_back(st.Text(9));
      auto lines = [](const std::string& text, google::protobuf::RepeatedPtrField<std::string>* out) {
        for (size_t at = 0; !text.empty() && at <= text.size();) {
          const size_t nl = std::min(text.find('\n', at), text.size());
          out->Add(text.substr(at, nl - at));
          at = nl + 1;
        }
      };
      lines(st.Text(10), s2->mutable_sequence_peers());
      lines(st.Text(11), s2->mutable_sequence_guidance_peers());
    }
  }
  return out;
}

}  // namespace reel
