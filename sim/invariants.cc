#include "sim/invariants.h"

#include <fmt/format.h>

namespace reel::sim {

namespace {

const char* Name(core::JobState s) {
  static const char* names[] = {"queued", "running", "succeeded", "failed", "cancelled"};
  return names[static_cast<int>(s)];
}

bool Contains(const core::Assignments& a, const std::string& model, StageKind k) {
  auto it = a.find(model);
  if (it == a.end()) return false;
  for (const auto& c : it->second)
    if (c.kind == k) return true;
  return false;
}

}  // namespace

std::string Checker::AfterStep(const core::CoordinatorCore& c) {
  // The core's indexes (what dispatch, leases and name look-ups read) agree with its state.
  if (std::string m = c.IndexMismatch(); !m.empty()) return m;
  for (const auto& [id, j] : c.jobs()) {
    auto seen = ended_.find(id);
    if (core::Terminal(j.state)) {
      if (seen != ended_.end() && seen->second != j.state)
        return fmt::format("job ended twice: {} {} then {}", id, Name(seen->second), Name(j.state));
      if (j.state == core::JobState::kSucceeded && j.output_path.empty())
        return fmt::format("job succeeded without its output: {}", id);
      ended_[id] = j.state;
    } else if (seen != ended_.end()) {
      return fmt::format("job ran again after it ended: {} {} then {}", id, Name(seen->second), Name(j.state));
    }
  }
  std::map<std::pair<std::string, int>, int> running;
  for (const auto& [attempt, run] : c.runs())
    if (!run.superseded && ++running[{run.job, run.stage_index}] > 1)
      return fmt::format("stage runs twice at once: stage {} of {}", run.stage_index, run.job);
  return {};
}

std::string Checker::AtDispatch(const core::CoordinatorCore& c, const core::cmd::RunStage& run) {
  const core::Job* j = c.FindJob(run.job_id);
  if (!j) return fmt::format("dispatch of an unknown job: {}", run.job_id);
  for (const std::string& id : run.Workers()) {
    if (id.empty()) continue;
    const core::Worker& w = c.workers().at(id);
    if (!Contains(w.target, j->shape.model, run.kind))
      return fmt::format("dispatch against the placement: {} of {} on {}, whose plan does not give it that stage",
                         StageKindName(run.kind), run.job_id, w.name);
  }
  // A job's start: no queued job ahead of it in the queue's order could have run on that worker.
  bool starting = true;
  for (size_t i = 0; i < j->stages.size(); ++i)
    starting = starting && (static_cast<int>(i) == run.stage_index || j->stages[i].state == core::StageState::kPending);
  if (!starting || c.draining()) return {};
  const core::Worker& w = c.workers().at(run.worker_id);
  for (const auto& [id, k] : c.jobs()) {
    if (k.state != core::JobState::kQueued || id == j->id) continue;
    const bool ahead = k.priority > j->priority || (k.priority == j->priority && k.seq < j->seq);
    if (ahead && w.holds.count({k.shape.model, k.stages.front().kind}))
      return fmt::format("queue order broken: {} (priority {}) started on {} before {} (priority {})", j->id,
                         j->priority, w.name, id, k.priority);
  }
  return {};
}

std::string Checker::AtPersist(const std::map<std::string, core::Job>& store, const core::Job& j) {
  auto it = store.find(j.id);
  if (it != store.end() && core::Terminal(it->second.state) && it->second.state != j.state)
    return fmt::format("job ended twice in the store: {} {} then {}", j.id, Name(it->second.state), Name(j.state));
  return {};
}

std::string Checker::AtSubmitReply(size_t index, const std::string& request_id, const std::string& job) {
  if (request_id.empty()) return {};
  auto [it, added] = requests_.emplace(request_id, job);
  if (!added && it->second != job)
    return fmt::format("one request, two jobs: submission #{} ({}) answered {} then {}", index, request_id,
                       it->second, job);
  return {};
}

bool Checker::AllEnded(const std::map<size_t, std::string>& submitted) const {
  if (submitted.size() < schedule_.jobs.size()) return false;
  for (const auto& [i, id] : submitted)
    if (!ended_.count(id)) return false;
  return true;
}

std::string Checker::AtEnd(const core::CoordinatorCore* c, const std::map<size_t, std::string>& submitted,
                           const std::vector<Holding>& holdings, bool past_horizon) const {
  for (size_t i = 0; i < schedule_.jobs.size(); ++i) {
    auto it = submitted.find(i);
    if (it == submitted.end()) return fmt::format("job starved: submission #{} never acknowledged", i);
    if (!ended_.count(it->second))
      return fmt::format("job starved: {} not ended{}", it->second, past_horizon ? " by the horizon" : "");
  }
  for (const auto& h : holdings) {
    const core::Job* j = c ? c->FindJob(h.job) : nullptr;
    if (!j || core::Terminal(j->state))
      return fmt::format("tensor outlived its job: {} still holds tensors of {}", h.worker, h.job);
  }
  if (c) {
    std::map<std::string, std::string> by_request;
    for (const auto& [id, j] : c->jobs())
      if (!j.request_id.empty() && !by_request.emplace(j.request_id, id).second)
        return fmt::format("one request, two jobs: {} and {} for {}", by_request[j.request_id], id, j.request_id);
  }
  return {};
}

void Checker::Count(Outcome* out) const {
  for (const auto& [id, s] : ended_) {
    out->succeeded += s == core::JobState::kSucceeded;
    out->failed += s == core::JobState::kFailed;
    out->cancelled += s == core::JobState::kCancelled;
  }
}

}  // namespace reel::sim
