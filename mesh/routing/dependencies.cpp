#include "mesh/routing/dependencies.h"

#include <algorithm>

namespace mesh::routing {

namespace {
std::string plural(std::uint64_t n, const char* what) {
  return std::to_string(n) + " " + what + (n == 1 ? "" : "s");
}

// Why a finished batch did not succeed, or empty when it did.
std::string failure(std::uint64_t id, const BatchEnd& e) {
  std::string name = "batch " + std::to_string(id);
  if (e.cancelled) return name + " was cancelled";
  if (e.failed == 0 && e.cancelledTasks == 0) return "";
  std::string what = e.failed ? plural(e.failed, "failed task") : "";
  if (e.cancelledTasks) what += (what.empty() ? "" : " and ") + plural(e.cancelledTasks, "cancelled task");
  return name + " finished with " + what;
}
}  // namespace

DependencyState resolveDependency(std::uint64_t id, const BatchLookup& lookup) {
  DependencyState s;
  std::uint64_t at = id;
  // A job has two stages: the map batch links to its reduce batch, which links nowhere. The
  // bound only guards against a link that loops (a corrupt store).
  for (int hop = 0; hop < 4; ++hop) {
    BatchEnd e = lookup(at);
    const std::string stage = at == id ? "" : "job " + std::to_string(id) + ": its reduce stage, ";
    if (!e.known) {
      s.kind = DependencyState::Kind::kFailed;
      s.why = stage + "batch " + std::to_string(at) + " does not exist";
      return s;
    }
    if (!e.finished) {
      s.waitOn = at;
      return s;
    }
    if (std::string why = failure(at, e); !why.empty()) {
      s.kind = DependencyState::Kind::kFailed;
      s.why = stage + why;
      return s;
    }
    if (e.mrStage != 1) {
      s.kind = DependencyState::Kind::kSucceeded;
      return s;
    }
    if (e.nextBatch != 0) {
      at = e.nextBatch;
      continue;
    }
    if (!e.note.empty()) {
      s.kind = DependencyState::Kind::kFailed;
      s.why = "job " + std::to_string(id) + " stopped at its map stage: " + e.note;
      return s;
    }
    // Its map stage has finished and the nexus has not linked its reduce stage yet (it does so
    // as the map stage's end is committed): the job is not over.
    s.waitOn = at;
    return s;
  }
  s.kind = DependencyState::Kind::kFailed;
  s.why = "job " + std::to_string(id) + " has stage links that loop (a damaged store)";
  return s;
}

Verdict judgeDependencies(const std::vector<std::uint64_t>& after, const std::vector<std::uint64_t>& afterDone,
                          const BatchLookup& lookup) {
  Verdict v;
  auto pending = [&](std::uint64_t id, const DependencyState& s) {
    v.waitingFor.push_back(id);
    if (std::find(v.wakeOn.begin(), v.wakeOn.end(), s.waitOn) == v.wakeOn.end()) v.wakeOn.push_back(s.waitOn);
  };
  for (std::uint64_t id : after) {
    DependencyState s = resolveDependency(id, lookup);
    if (s.kind == DependencyState::Kind::kFailed) {
      v.kind = Verdict::Kind::kCancel;
      v.why = s.why + "; nothing of this batch ran (--after " + std::to_string(id) + ")";
      v.waitingFor.clear();
      v.wakeOn.clear();
      return v;
    }
    if (s.kind == DependencyState::Kind::kPending) pending(id, s);
  }
  for (std::uint64_t id : afterDone) {
    DependencyState s = resolveDependency(id, lookup);
    if (s.kind == DependencyState::Kind::kPending) pending(id, s);
  }
  std::sort(v.waitingFor.begin(), v.waitingFor.end());
  v.kind = v.waitingFor.empty() ? Verdict::Kind::kRelease : Verdict::Kind::kWait;
  return v;
}

void normalizeDependencies(std::vector<std::uint64_t>& after, std::vector<std::uint64_t>& afterDone) {
  auto clean = [](std::vector<std::uint64_t>& v) {
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
  };
  clean(after);
  clean(afterDone);
  afterDone.erase(std::remove_if(afterDone.begin(), afterDone.end(),
                                 [&](std::uint64_t id) { return std::binary_search(after.begin(), after.end(), id); }),
                  afterDone.end());
}

}  // namespace mesh::routing
