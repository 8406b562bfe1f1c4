// The nexus's batches that wait for others (`mesh submit --after ID`, `--after-done ID`):
// checking a submit's dependencies, holding the batch, and releasing or cancelling it when the
// batches it waits on finish. Protocol section 4.21; the rules are in mesh/routing/dependencies.h.
#include "mesh/node/nexus_impl.h"

namespace mesh::node {

routing::BatchEnd NexusImpl::endOf(std::uint64_t batch) {
  if (endCache_) {
    if (auto hit = endCache_->find(batch); hit != endCache_->end()) return hit->second;
  }
  const bool before = endReadFailed_;
  endReadFailed_ = false;
  routing::BatchEnd e = readEnd(batch);
  const bool failed = endReadFailed_;
  endReadFailed_ = before || failed;
  if (endCache_ && !failed) endCache_->emplace(batch, e);  // a failed read is tried again
  return e;
}

routing::BatchEnd NexusImpl::readEnd(std::uint64_t batch) {
  routing::BatchEnd e;
  if (const routing::Batch* b = scheduler_.batch(batch)) {
    // Every batch whose end is not committed is in memory, and leaves it once it is.
    e.known = true;
    e.mrStage = b->spec.mrStage;
    return e;
  }
  auto rec = readStore_->batch(batch);
  if (!rec) {
    // Not finished, as far as this answer goes: the batch judged is judged again at the next
    // heartbeat tick (rejudge_), since a batch that has ended wakes nobody again.
    endReadFailed_ = true;
    if (auto n = storeLog_.admit("after-read")) {
      MESH_ERROR("reading batch %llu for the batches that wait on it failed: %s%s",
                 static_cast<unsigned long long>(batch), rec.error().message.c_str(), util::heldBack(*n).c_str());
    }
    e.known = true;
    return e;
  }
  if (!*rec) return e;
  const store::BatchRecord& r = **rec;
  e.known = true;
  e.finished = r.finishedMs.has_value();
  e.cancelled = r.cancelledMs.has_value();
  e.total = r.total;
  e.succeeded = r.keptSucceeded;
  e.failed = r.keptFailed;
  e.cancelledTasks = r.keptCancelled;
  e.mrStage = r.mrStage;
  // The stage link made in this run may not be committed yet.
  if (auto link = jobLinks_.find(batch); link != jobLinks_.end()) {
    e.nextBatch = link->second.next;
    e.note = link->second.note;
  } else {
    e.nextBatch = r.nextBatch.value_or(0);
    e.note = r.note;
  }
  return e;
}

std::optional<std::pair<proto::Error::Code, std::string>> NexusImpl::checkDependencies(
    const std::vector<std::uint64_t>& after, const std::vector<std::uint64_t>& afterDone, routing::Verdict* verdict) {
  const std::uint64_t self = nextBatchId_;  // the id the new batch gets
  for (const auto* list : {&after, &afterDone}) {
    for (std::uint64_t id : *list) {
      // Ids at or above the new batch's name no batch yet: a batch waits only on older ones, so
      // no chain of waits can loop.
      bool exists = id != 0 && id < self && (scheduler_.batch(id) != nullptr);
      if (!exists && id != 0 && id < self) {
        auto rec = readStore_->batch(id);
        if (!rec) {
          MESH_ERROR("reading batch %llu for a submit's --after failed: %s", static_cast<unsigned long long>(id),
                     rec.error().message.c_str());
          return std::make_pair(proto::Error::Code::INTERNAL, std::string("reading the batches to wait for failed; see the nexus log"));
        }
        exists = rec->has_value();
      }
      if (!exists) {
        return std::make_pair(proto::Error::Code::NOT_FOUND,
                              "no batch " + std::to_string(id) + " to wait for: --after and --after-done name batches "
                              "submitted before (mesh batches lists them)");
      }
    }
  }
  auto lookup = [this](std::uint64_t id) { return endOf(id); };
  for (std::uint64_t id : after) {
    routing::DependencyState s = routing::resolveDependency(id, lookup);
    if (s.kind != routing::DependencyState::Kind::kFailed) continue;
    const std::string n = std::to_string(id);
    return std::make_pair(proto::Error::Code::BAD_REQUEST,
                          s.why + ": a batch --after " + n + " would never run; retry its failed tasks (mesh retry " +
                              n + ") and wait for that batch with --after, or use --after-done " + n);
  }
  *verdict = routing::judgeDependencies(after, afterDone, lookup);
  MESH_ASSERT(verdict->kind != routing::Verdict::Kind::kCancel, "a dependency that failed passed the submit's check");
  return std::nullopt;
}

void NexusImpl::holdOn(std::uint64_t batch, const routing::Verdict& v) {
  waitingFor_[batch] = v.waitingFor;
  for (std::uint64_t on : v.wakeOn) waiters_[on].insert(batch);
}

std::string NexusImpl::waitingLine(std::uint64_t batch) {
  const routing::Batch* b = scheduler_.batch(batch);
  auto it = waitingFor_.find(batch);
  if (!b || it == waitingFor_.end()) return "";
  std::string list;
  for (std::size_t i = 0; i < it->second.size(); ++i) {
    std::uint64_t id = it->second[i];
    bool strict = std::binary_search(b->spec.after.begin(), b->spec.after.end(), id);
    list += (i == 0 ? "" : i + 1 == it->second.size() ? " and " : ", ") + std::to_string(id) +
            (strict ? " (--after)" : " (--after-done)");
  }
  return "batch " + std::to_string(batch) + " waits for batch" + (it->second.size() == 1 ? " " : "es ") + list +
         " to finish: none of its tasks runs before";
}

void NexusImpl::judgeWaiting(std::uint64_t batch) {
  routing::Batch* b = scheduler_.batch(batch);
  if (!b || !b->held || b->cancelled) {
    waitingFor_.erase(batch);
    return;
  }
  endReadFailed_ = false;
  routing::Verdict v = routing::judgeDependencies(b->spec.after, b->spec.afterDone,
                                                  [this](std::uint64_t id) { return endOf(id); });
  if (endReadFailed_ && v.kind == routing::Verdict::Kind::kWait) rejudge_.insert(batch);
  switch (v.kind) {
    case routing::Verdict::Kind::kWait:
      holdOn(batch, v);
      return;
    case routing::Verdict::Kind::kRelease: {
      waitingFor_.erase(batch);
      scheduler_.release(*b);
      store::BatchUpdate u;
      u.batch = batch;
      u.held = false;
      current_->updates.push_back(u);
      counters_.add("batches_released");
      MESH_INFO("batch %llu: the batches it waited for have finished; its tasks run now",
                static_cast<unsigned long long>(batch));
      return;
    }
    case routing::Verdict::Kind::kCancel: {
      std::uint64_t n = cancelLive(*b, v.why);
      counters_.add("batches_cancelled_by_dependency");
      MESH_INFO("batch %llu cancelled (%llu tasks): %s", static_cast<unsigned long long>(batch),
                static_cast<unsigned long long>(n), v.why.c_str());
      return;
    }
  }
}

void NexusImpl::wakeWaiters(std::uint64_t ended) {
  auto it = waiters_.find(ended);
  if (it == waiters_.end()) return;
  std::set<std::uint64_t> batches = std::move(it->second);
  waiters_.erase(it);
  // Within this wake, no batch's end changes (a batch released or cancelled here ends later,
  // and wakes its own waiters then): each dependency is looked up once, not once per waiter.
  std::unordered_map<std::uint64_t, routing::BatchEnd> cache;
  auto* outer = endCache_;
  if (!outer) endCache_ = &cache;
  for (std::uint64_t b : batches) judgeWaiting(b);
  endCache_ = outer;
}

std::uint64_t NexusImpl::cancelLive(routing::Batch& b, const std::string& why) {
  const std::int64_t now = clock_.wallMs();
  if (!b.sealed && !b.sealPending) {
    std::uint64_t total = b.total + b.pendingAdds;
    store::BatchUpdate u;
    u.batch = b.id;
    u.total = total;
    u.sealed = true;
    current_->updates.push_back(u);
    if (b.pendingAdds == 0) scheduler_.seal(b, total);
    else b.sealPending = true;
  }
  const bool wasHeld = b.held;
  if (!why.empty()) b.cancelWhy = why;
  std::uint64_t n = scheduler_.cancel(b, now);
  store::BatchUpdate u;
  u.batch = b.id;
  u.cancelledMs = now;
  if (!why.empty()) u.note = why;
  if (wasHeld) u.held = false;
  current_->updates.push_back(u);
  waitingFor_.erase(b.id);
  return n;
}

}  // namespace mesh::node
