// The measurements every run leaves behind, kept in one SQLite file so later runs (and the planner) can look
// up how a stage behaved on a device with a given strategy instead of guessing.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "profiler/stage_profile.h"

struct sqlite3;
struct sqlite3_stmt;

namespace reel {

// What a lookup matches on; an empty string or -1 matches anything.
struct ProfileKey {
  std::string stage_digest;
  std::string device_kind;
  int64_t device_capacity_bytes = -1;
  int frames = -1;
  int height = -1;
  int width = -1;
  std::string dtype;
  std::string strategy;

  // The exact key of a profile: every field set from it.
  static ProfileKey Of(const StageProfile& p);
};

struct StoredProfile {
  int64_t id = 0;
  StageProfile profile;
};

// One measurement of the link between the ranks of a sequence-parallel denoise (docs/SEQUENCE_PARALLEL.md): the
// bytes one rank sent in the group's all-to-alls and the seconds its collectives took, from the rank that waited
// least on the others, so the time is the exchange rather than a slower peer's compute.
struct LinkProfile {
  std::string link;              // what it was measured on: "host/gloo", "host/nccl", "network/gloo", ...
  int ranks = 0;
  int64_t bytes_sent = 0;
  double exchange_seconds = 0;
  int64_t recorded_at = 0;       // unix seconds
  double bytes_per_second() const { return exchange_seconds > 0 ? bytes_sent / exchange_seconds : 0; }
  // Throws InvalidArgument naming the field for an empty link, fewer than 2 ranks, or no bytes or time measured.
  void Validate(const std::string& what) const;
};

class ProfileStore {
 public:
  static constexpr int kSchemaVersion = 2;

  // Opens or creates the file (WAL, so readers in other processes never block a writer). Throws IoError
  // ("profile store <path>: ...") for a missing directory, a file that is not SQLite, or a newer schema.
  explicit ProfileStore(const std::string& path);
  ~ProfileStore();
  ProfileStore(const ProfileStore&) = delete;
  ProfileStore& operator=(const ProfileStore&) = delete;

  // Validates, then stores in one transaction; returns the row id. Throws InvalidArgument for a bad profile,
  // IoError when SQLite fails.
  int64_t Insert(const StageProfile& p);
  // Matching rows, newest (recorded_at, then id) first.
  std::vector<StoredProfile> Find(const ProfileKey& key) const;
  std::vector<StoredProfile> All() const;

  // Validates, then stores; returns the row id. The measurements of `link` (every link when empty), newest first.
  int64_t InsertLink(const LinkProfile& p);
  std::vector<LinkProfile> Links(const std::string& link = "") const;

  const std::string& path() const { return path_; }

 private:
  class Statement;
  void Exec(const char* sql) const;
  [[noreturn]] void Fail(const std::string& doing) const;
  std::vector<double> ParseSeconds(const std::string& text, int64_t id, const char* column) const;

  std::string path_;
  sqlite3* db_ = nullptr;
  mutable std::mutex mu_;  // one connection, shared by the threads of this process
  std::unique_ptr<Statement> insert_;
  std::unique_ptr<Statement> find_;
};

}  // namespace reel
