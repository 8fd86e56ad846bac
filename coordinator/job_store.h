// The coordinator's durable state: jobs and their stage runs in one SQLite file under the data directory, written
// through on every change so a restarted coordinator finds every job it had accepted.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "reel/v1/coordinator.pb.h"

struct sqlite3;

namespace reel {

struct JobRecord {
  reel::v1::Job job;          // spec here includes the image bytes
  int64_t seq = 0;            // submission order: FIFO within a priority
  std::string output_path;    // the MP4 once it succeeded
  std::vector<std::string> stage_profiles;  // per job.stages index: the worker's profile JSON, empty until run
};

class JobStore {
 public:
  static constexpr int kSchemaVersion = 2;  // 2: request_id, denoiser_dispatch

  // Opens or creates PATH (WAL). Throws IoError naming the path when it cannot, or when the schema is newer.
  explicit JobStore(const std::string& path);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // The next sequence number (1 for an empty store).
  int64_t NextSeq();
  // Inserts or replaces the job and all its stage rows in one transaction.
  void Save(const JobRecord& r);
  // The same for several jobs, all in one transaction (a restart's re-queue, a shutdown).
  void SaveAll(const std::vector<const JobRecord*>& records);
  // Counts this start of the coordinator (1 for a new store) and returns the count, so ids made from it (worker
  // ids, stage attempts) never repeat across restarts.
  int64_t Boot();
  // Every job, oldest first.
  std::vector<JobRecord> LoadAll();
  // What a starting coordinator holds in memory: every job not ended, and the newest `ended` that did; oldest first.
  std::vector<JobRecord> LoadForStart(int ended);
  // One job; none when the store has no such id.
  std::optional<JobRecord> Load(const std::string& id);
  // The newest `limit` jobs, newest first.
  std::vector<JobRecord> LoadNewest(int limit);
  // The newest `limit` jobs older than `before_seq` (a ListJobs page), newest first.
  std::vector<JobRecord> LoadPage(int64_t before_seq, int limit);
  // The job a SubmitJob with this request id queued (AIP-155), if any.
  std::optional<JobRecord> LoadByRequest(const std::string& request_id);

  const std::string& path() const { return path_; }

 private:
  void Exec(const char* sql);
  void Write(const JobRecord& r);  // mu_ held, inside a transaction
  // Jobs selected by `tail` (WHERE/ORDER BY/LIMIT, binding `args` as ?1, ?2, ...), with their stages.
  std::vector<JobRecord> Query(const std::string& tail, const std::vector<std::variant<int64_t, std::string>>& args);
  [[noreturn]] void Fail(const std::string& doing);

  std::string path_;
  sqlite3* db_ = nullptr;
  std::mutex mu_;
};

}  // namespace reel
