// The nexus's work: dispatch, the scheduler's effects, group commits and what follows them,
// map-reduce stages, timers, events.
#include "mesh/node/nexus_impl.h"

namespace mesh::node {

// ---- work ------------------------------------------------------------------------------------

void NexusImpl::dispatch() {
  auto assignments = scheduler_.dispatch(clock_.monotonicMs(), clock_.wallMs());
  for (auto& a : assignments) {
    auto route = nodeRoute_.find(a.node);
    if (route == nodeRoute_.end()) {
      // A node the scheduler has but the nexus cannot reach (a bug: nodes and routes are made and
      // dropped together). Its tasks would wait for their timeout: they go back to the queue now.
      counters_.add("nodes_without_route");
      MESH_ERROR("node %u has no route (a bug): its %zu tasks go back to the queue", a.node, a.tasks.size());
      scheduler_.removeNode(a.node, clock_.wallMs(), "no route to it", /*nodeFault=*/false);
      continue;
    }
    bool failed = !sendAssign(route->second, a.tasks.data(), a.tasks.size());
    counters_.add("tasks_dispatched", a.tasks.size());
    if (failed) dropNode(a.node, "cannot send to it");
  }
}

bool NexusImpl::sendAssign(const std::string& routingId, const routing::Task* const* tasks, std::size_t count) {
  std::size_t start = 0;
  while (start < count) {
    std::size_t end = start, bytes = 0;
    while (end < count && (end == start || bytes + tasks[end]->payload.size() < kAssignFrameBytes)) {
      bytes += tasks[end]->payload.size() + 64;
      ++end;
    }
    wire::Encoder e(0, static_cast<unsigned>(bytes / 8 + 64));
    auto list = e.body().initAssign().initTasks(static_cast<unsigned>(end - start));
    for (std::size_t i = start; i < end; ++i) {
      const routing::Task* t = tasks[i];
      auto out = list[static_cast<unsigned>(i - start)];
      out.setId(t->id);
      out.setAttempt(t->attempts);
      out.setHandler(t->batch->spec.handler);
      out.setPayload(wire::asData(t->payload));
      out.setTimeoutMs(t->batch->spec.timeoutMs);
      out.setPriority(t->batch->spec.priority);
      const auto& spec = t->batch->spec;
      if (spec.mrStage != 0) {
        auto mr = out.initMapreduce();
        mr.setStage(static_cast<proto::MapReduce::Stage>(spec.mrStage));
        mr.setPartitions(spec.mrPartitions);
        mr.setCombiner(spec.mrCombiner);
      }
    }
    if (!sendTo(nodeSocket_, routingId, e.finish())) return false;
    start = end;
  }
  return true;
}

void NexusImpl::collectEffects() {
  routing::Effects fx = scheduler_.takeEffects();
  for (auto& f : fx.finals) {
    if (watchers_.count(f.batch) || inline_.count(f.batch)) keepInline(f);
    auto& c = currentInfo_.finals[f.batch];
    if (f.status == routing::Status::kOk) ++c[0];
    else if (f.status == routing::Status::kCancelled) ++c[2];
    else ++c[1];
    store::ResultRecord r;
    r.task = f.task;
    r.status = static_cast<std::uint8_t>(f.status);
    r.output = std::move(f.output);
    r.error = std::move(f.error);
    r.attempts = f.attempts;
    r.node = std::move(f.node);
    r.assignedMs = f.assignedMs;
    r.startedMs = f.startedMs;
    r.finishedMs = f.finishedMs;
    r.durationUs = f.durationUs;
    r.bundle = std::move(f.bundle);
    r.bundleVersion = f.bundleVersion;
    r.payload = std::move(f.payload);
    current_->results.push_back(std::move(r));
  }
  for (auto& a : fx.attempts) {
    store::AttemptRecord r;
    r.task = a.task;
    r.attempt = a.attempt;
    r.node = std::move(a.node);
    r.assignedMs = a.assignedMs;
    r.endedMs = a.endedMs;
    r.startedMs = a.startedMs;
    r.outcome = std::move(a.outcome);
    r.error = std::move(a.error);
    r.nodeLost = a.nodeLost;
    r.bundle = std::move(a.bundle);
    r.bundleVersion = a.bundleVersion;
    current_->attempts.push_back(std::move(r));
  }
  std::map<routing::NodeId, std::vector<std::uint64_t>> cancels;
  for (auto& [node, task] : fx.cancels) cancels[node].push_back(task);
  for (auto& [node, ids] : cancels) {
    auto route = nodeRoute_.find(node);
    if (route == nodeRoute_.end()) continue;
    wire::Encoder e(0, static_cast<unsigned>(64 + ids.size()));
    auto list = e.body().initCancelTasks().initIds(static_cast<unsigned>(ids.size()));
    for (unsigned i = 0; i < ids.size(); ++i) list.set(i, ids[i]);
    sendTo(nodeSocket_, route->second, e.finish());
  }
  std::int64_t now = clock_.wallMs();
  for (auto batch : fx.finishedBatches) {
    store::BatchUpdate u;
    u.batch = batch;
    u.finishedMs = now;
    // Its final counts, stored with its end (`mesh batches` reads them, never its results): every
    // final result it counts is in this write set or an earlier one.
    if (const routing::Batch* b = scheduler_.batch(batch)) {
      u.finalCounts = store::BatchCounts{b->succeeded, b->failed, b->cancelledCount};
    }
    current_->updates.push_back(u);
    currentInfo_.finishing.push_back(batch);
  }
}

std::int64_t NexusImpl::holdLeftUs() const {
  if (holdSinceUs_ < 0) return 0;
  std::int64_t budget = std::clamp(commitUsAverage_, kCommitHoldMinUs, kCommitHoldMaxUs);
  return std::max<std::int64_t>(0, holdSinceUs_ + budget - clock_.monotonicUs());
}

// A small batch dispatched before its commit (onSubmit) often has its results back before a
// flush would end. Holding the write set that carries its submit until they are in puts the
// submit and its results in one transaction: one flush instead of two before `finished`, for an
// ack later by at most one commit's time. Everything else that arrives meanwhile joins the set.
bool NexusImpl::holdingWrites() {
  if (holdSinceUs_ < 0) return false;
  bool waiting = false;
  for (const auto& ps : currentInfo_.submits) {
    if (ps.early && std::find(currentInfo_.finishing.begin(), currentInfo_.finishing.end(), ps.batch) ==
                        currentInfo_.finishing.end()) {
      waiting = true;
      break;
    }
  }
  if (waiting && holdLeftUs() > 0) return true;
  if (waiting) counters_.add("commit_holds_expired");
  holdSinceUs_ = -1;
  return false;
}

void NexusImpl::flushWrites(bool force) {
  if (current_->empty() && currentInfo_.submits.empty() && currentInfo_.finishing.empty() &&
      currentInfo_.cancels.empty() && currentInfo_.replies.empty()) {
    return;
  }
  if (force) holdSinceUs_ = -1;
  if (holdingWrites()) return;
  std::uint64_t ticket = writer_->submit(std::exchange(current_, std::make_unique<store::WriteSet>()));
  tickets_[ticket] = std::exchange(currentInfo_, TicketInfo{});
  poller_.touched(writer_->socket());
}

void NexusImpl::onCommits() {
  while (auto notice = writer_->receive()) {
    counters_.add("group_commits");
    if (!notice->committed.empty()) commitUsAverage_ += (notice->commitUs - commitUsAverage_) / 8;
    // Chunks the writer did not store (their batch broke on an earlier one): marked first, so
    // that their ticket, committed now or later, refuses them.
    for (const auto& [ticket, batch] : notice->refusedChunks) {
      auto it = tickets_.find(ticket);
      if (it == tickets_.end()) continue;
      for (auto& ps : it->second.submits) {
        if (ps.batch == batch) {
          ps.refused = "not stored, because an earlier chunk of batch " + std::to_string(batch) + " could not be";
        }
      }
    }
    for (std::uint64_t ticket : notice->committed) {
      auto it = tickets_.find(ticket);
      if (it == tickets_.end()) continue;
      TicketInfo info = std::move(it->second);
      tickets_.erase(it);
      for (auto& ps : info.submits) {
        if (!ps.refused.empty()) {
          refuseSubmit(ps, ps.refused);
          continue;
        }
        if (ps.count > 0) durableTaskIdMax_ = std::max(durableTaskIdMax_, ps.firstId + ps.count - 1);
        routing::Batch* b = scheduler_.batch(ps.batch);
        if (ps.retryOf != 0) {
          // Its tasks are in the store: they join the scheduler in steps (loadRetries), which
          // counts them out of pendingSubmitTasks_ and pendingAdds, and seals the batch.
          if (b) retryLoads_.push_back({ps.batch, ps.firstId, ps.count});
        } else if (!ps.early) {
          pendingSubmitTasks_ -= ps.count;
        }
        if (b && !ps.early && ps.retryOf == 0) {
          b->pendingAdds -= ps.count;
          for (std::uint32_t i = 0; i < ps.count; ++i) {
            scheduler_.addTask(*b, ps.firstId + i, ps.firstIndex + i, std::string(ps.payloads[i]));
          }
          b->total = std::max<std::uint64_t>(b->total, ps.firstIndex + ps.count);
          if (ps.seal || (b->sealPending && b->pendingAdds == 0)) {
            b->sealPending = false;
            if (!b->sealed) scheduler_.seal(*b, b->total);
          }
          if (b->cancelled) scheduler_.cancel(*b, clock_.wallMs());
        }
        counters_.add("tasks_submitted", ps.count);
        if (ps.reduceOf != 0) {
          // The reduce stage is stored: its job's map stage is finished for clients now, and
          // they follow it here.
          JobLink& link = jobLinks_[ps.reduceOf];
          link.next = ps.batch;
          link.pending = false;
          reduceRetries_.erase(ps.reduceOf);
          sendProgress(ps.reduceOf, true);
          // Batches held --after the job were woken at its map stage's end, when the link was
          // not made yet: they wait on the reduce stage from now on.
          wakeWaiters(ps.reduceOf);
        }
        if (ps.routingId.empty()) continue;  // made by the nexus itself (a reduce stage)
        wire::Encoder e(ps.requestId, 32);
        if (ps.retryOf != 0) {
          auto ack = e.body().initRetryAck();
          ack.setBatch(ps.batch);
          ack.setFirstTask(ps.firstId);
          ack.setCount(ps.count);
          ack.setRetried(ps.retryOf);
          if (!ps.warning.empty()) ack.setWarning(ps.warning);
        } else {
          auto ack = e.body().initSubmitAck();
          ack.setBatch(ps.batch);
          ack.setFirstTask(ps.firstId);
          ack.setFirstIndex(ps.firstIndex);
          ack.setCount(ps.count);
          if (!ps.warning.empty()) ack.setWarning(ps.warning);
          ack.setDependencies(ps.dependencies);
        }
        sendTo(clientSocket_, ps.routingId, e.finish());
        if (ps.watch) {
          counters_.add("watches_with_submit");
          auto& list = watchers_[ps.batch];
          bool known = false;
          for (auto& w : list) known = known || w.routingId == ps.routingId;
          if (!known) list.push_back({ps.routingId, ps.requestId});
        }
      }
      for (auto& [routingId, reply] : info.replies) sendTo(clientSocket_, routingId, std::move(reply));
      for (const auto& c : info.cancels) {
        if (!c.refused.empty()) {
          replyError(c.routingId, c.requestId, proto::Error::Code::NOT_FOUND, c.refused);
          continue;
        }
        wire::Encoder e(c.requestId, 32);
        auto ack = e.body().initCancelAck();
        ack.setBatch(c.batch);
        ack.setCancelled(c.cancelled);
        sendTo(clientSocket_, c.routingId, e.finish());
      }
      for (const auto& [batch, c] : info.finals) {
        scheduler_.markDurable(batch, routing::Status::kOk, c[0]);
        scheduler_.markDurable(batch, routing::Status::kFailed, c[1]);
        scheduler_.markDurable(batch, routing::Status::kCancelled, c[2]);
      }
      for (std::uint64_t batch : info.finishing) {
        routing::Batch* b = scheduler_.batch(batch);
        if (!b) continue;
        auto p = scheduler_.progress(*b);
        MESH_INFO("batch %llu finished%s: %llu succeeded, %llu failed, %llu cancelled",
                  static_cast<unsigned long long>(batch), b->cancelled ? " (cancelled)" : "",
                  static_cast<unsigned long long>(p.succeeded), static_cast<unsigned long long>(p.failed),
                  static_cast<unsigned long long>(p.cancelled));
        publish(proto::Event::Kind::BATCH_FINISHED, batch, "", b->cancelled ? "cancelled" : "");
        if (b->spec.mrStage == 1) {
          auto rec = readStore_->batch(batch);
          if (rec && *rec) startReduce(**rec);
        }
        // A map stage whose reduce stage waits for its commit keeps its watchers until then.
        sendProgress(batch, b->spec.mrStage != 1 || reduceLinked(batch));
        dropInline(batch);
        scheduler_.forget(batch);
        owners_.erase(batch);
        waitingFor_.erase(batch);
        // Batches held until this one (or the job it ends) finished: released or cancelled now.
        wakeWaiters(batch);
      }
    }
    for (const auto& [ticket, error] : notice->failed) {
      auto it = tickets_.find(ticket);
      if (it == tickets_.end()) continue;
      TicketInfo& info = it->second;  // stays: the writer writes the rest of the set later
      counters_.add("store_errors");
      if (auto n = storeLog_.admit("write")) {
        MESH_ERROR("a write to %s failed: %s; submits are refused, results are kept and written again%s",
                   dbPath_.c_str(), error.c_str(), util::heldBack(*n).c_str());
      }
      for (auto& ps : info.submits) refuseSubmit(ps, error);
      info.submits.clear();
    }
  }
}

void NexusImpl::refuseCancels(std::uint64_t batch, const std::string& why) {
  auto mark = [&](TicketInfo& info) {
    for (auto& c : info.cancels) {
      if (c.batch == batch) c.refused = why;
    }
  };
  for (auto& [ticket, info] : tickets_) mark(info);
  mark(currentInfo_);
}

void NexusImpl::refuseSubmit(PendingSubmit& ps, const std::string& error) {
  if (!ps.early) pendingSubmitTasks_ -= ps.count;
  std::string why = "the nexus could not store the batch (" + error + "); nothing was accepted: retry";
  const std::string never = "batch " + std::to_string(ps.batch) + " was never stored (its submit failed: " + error +
                            "): nothing to cancel";
  if (ps.early) {
    // Its tasks may be running or done: take them back. Their results already queued for
    // the store are skipped there (a result is written only with its task).
    scheduler_.withdraw(ps.batch);
    counters_.add("tasks_withdrawn", ps.count);  // ended ones too: none of them was stored
    owners_.erase(ps.batch);
    dropInline(ps.batch);
    refuseCancels(ps.batch, never);
    waitingFor_.erase(ps.batch);
    wakeWaiters(ps.batch);  // a batch that waited on it: it does not exist (cancelled)
    MESH_WARN("batch %llu withdrawn: its %u tasks were dispatched before the failed commit",
              static_cast<unsigned long long>(ps.batch), ps.count);
  } else if (routing::Batch* b = scheduler_.batch(ps.batch)) {
    b->pendingAdds -= ps.count;
    if (ps.newBatch) {
      // Its row was not stored either. A reduce stage knows its total before its commit.
      if (ps.reduceOf != 0 || (b->total == 0 && b->pendingAdds == 0)) {
        scheduler_.forget(ps.batch);
        owners_.erase(ps.batch);
        refuseCancels(ps.batch, never);
        waitingFor_.erase(ps.batch);
        wakeWaiters(ps.batch);
      }
    } else {
      // A later chunk of a stored batch: the batch can never hold what its client sent (the
      // writer stores no later chunk of it either), so it ends here, cancelled, with the tasks
      // stored before this chunk. Sealed once no chunk of it waits for its commit, so that its
      // end can be reached and recorded (`mesh wait` returns, a restart finds it sealed).
      std::string what = ps.count == 0 ? "the seal" : "tasks " + std::to_string(ps.firstIndex) + "-" +
                                                         std::to_string(ps.firstIndex + ps.count - 1);
      why = "the nexus could not store " + what + " of batch " + std::to_string(ps.batch) + " (" + error +
            "): the batch is cancelled, as it cannot be completed; submit it again";
      std::int64_t now = clock_.wallMs();
      if (!b->cancelled) {
        // Not cancelLive: that would seal it at its total with the chunks still in flight,
        // which the writer refuses too; it is sealed below once none is left.
        b->cancelWhy = "its tasks from index " + std::to_string(ps.firstIndex) + " on could not be stored (" + error +
                       ")";
        const bool wasHeld = b->held;
        std::uint64_t n = scheduler_.cancel(*b, now);
        store::BatchUpdate u;
        u.batch = ps.batch;
        u.cancelledMs = now;
        u.note = b->cancelWhy;
        if (wasHeld) u.held = false;
        current_->updates.push_back(u);
        waitingFor_.erase(ps.batch);
        counters_.add("batches_broken");
        MESH_WARN("batch %llu cancelled: its tasks from index %llu on could not be stored (%s); %llu tasks will not run",
                  static_cast<unsigned long long>(ps.batch), static_cast<unsigned long long>(ps.firstIndex),
                  error.c_str(), static_cast<unsigned long long>(n));
      }
      if (b->pendingAdds == 0 && !b->sealed) {
        b->sealPending = false;
        store::BatchUpdate u;
        u.batch = ps.batch;
        u.total = b->total;
        u.sealed = true;
        current_->updates.push_back(u);
        scheduler_.seal(*b, b->total);
      }
    }
  }
  if (ps.reduceOf != 0) {
    // Nobody to refuse: the job waits, and its reduce stage is made again later (the map rows
    // are stored). A restart finds the job too (its map row links no reduce batch).
    ReduceRetry& r = reduceRetries_[ps.reduceOf];
    r.payloads = ps.owned;
    std::int64_t delay = std::min<std::int64_t>(kReduceRetryMaxMs, kReduceRetryFirstMs << std::min<std::uint32_t>(r.refusals, 5));
    ++r.refusals;
    r.atMono = clock_.monotonicMs() + delay;
    JobLink& link = jobLinks_[ps.reduceOf];
    link.next = 0;
    link.pending = true;
    counters_.add("reduce_stages_refused");
    MESH_WARN("job %llu: its reduce stage (batch %llu) could not be stored (%s); starting it again in %lld ms (refusal %u)",
              static_cast<unsigned long long>(ps.reduceOf), static_cast<unsigned long long>(ps.batch), error.c_str(),
              static_cast<long long>(delay), r.refusals);
  }
  if (!ps.routingId.empty()) replyError(ps.routingId, ps.requestId, proto::Error::Code::INTERNAL, why);
}

bool NexusImpl::reduceLinked(std::uint64_t mapBatch) const {
  auto it = jobLinks_.find(mapBatch);
  return it != jobLinks_.end() && !it->second.pending;
}

void NexusImpl::retryReduces() {
  std::int64_t now = clock_.monotonicMs();
  std::vector<std::uint64_t> due;
  for (auto& [map, r] : reduceRetries_) {
    if (now < r.atMono) continue;
    r.atMono = INT64_MAX;  // until this attempt is committed or refused
    due.push_back(map);
  }
  for (std::uint64_t map : due) {
    ReduceRetry& r = reduceRetries_[map];
    auto rec = readStore_->batch(map);
    if (!rec || !*rec) {
      std::string why = !rec ? rec.error().message : "its row is gone";
      MESH_ERROR("job %llu: cannot read its map stage to start its reduce stage again: %s (trying again)",
                 static_cast<unsigned long long>(map), why.c_str());
      r.atMono = now + kReduceRetryMaxMs;
      continue;
    }
    counters_.add("reduce_stage_retries");
    MESH_INFO("job %llu: starting its reduce stage again (refused %u times)", static_cast<unsigned long long>(map),
              r.refusals);
    startReduce(**rec);  // ends the retry (stop) or hands a new submit to the writer
  }
}

void NexusImpl::loadRetries() {
  std::uint64_t tasks = 0;
  std::size_t bytes = 0;
  while (!retryLoads_.empty() && tasks < kRetryLoadTasks && bytes < kRetryLoadBytes) {
    RetryLoad& load = retryLoads_.front();
    routing::Batch* b = scheduler_.batch(load.batch);
    MESH_ASSERT(b != nullptr, "a retry batch left memory before its tasks were loaded");
    std::vector<store::PendingTask> lost;
    auto n = readStore_->forEachTaskFrom(load.batch, load.nextId, std::min(load.left, kRetryLoadTasks - tasks),
                                         [&](store::PendingTask&& t) {
                                           load.nextId = t.id + 1;
                                           bytes += t.payload.size() + 64;
                                           if (!t.payloadError.empty()) {
                                             lost.push_back(std::move(t));
                                           } else {
                                             scheduler_.addTask(*b, t.id, t.index, std::move(t.payload));
                                           }
                                           return bytes < kRetryLoadBytes;
                                         });
    if (!n) {
      // The tasks are committed: a read that fails now is tried again next turn (and a restart
      // loads them from the store anyway).
      if (auto k = storeLog_.admit("retry-load")) {
        MESH_ERROR("loading the tasks of retry batch %llu failed: %s (trying again)%s",
                   static_cast<unsigned long long>(load.batch), n.error().message.c_str(), util::heldBack(*k).c_str());
      }
      return;
    }
    tasks += *n;
    for (auto& t : lost) {
      // Its bytes are gone (a failure recorded before payloads moved into their rows, whose
      // payload log segment was deleted): it fails with the reason, as at a restart.
      counters_.add("payloads_lost");
      MESH_ERROR("task %llu of retry batch %llu cannot run: %s", static_cast<unsigned long long>(t.id),
                 static_cast<unsigned long long>(t.batch), t.payloadError.c_str());
      scheduler_.addFailedTask(*b, t.id, t.index, "its payload was lost: " + t.payloadError, clock_.wallMs());
    }
    std::uint64_t loaded = std::min<std::uint64_t>(*n, load.left);
    load.left -= loaded;
    b->pendingAdds -= loaded;
    pendingSubmitTasks_ -= loaded;
    b->total += loaded;
    counters_.add("tasks_retried_loaded", loaded);
    bool done = load.left == 0;
    if (!done && *n == 0) {
      MESH_ERROR("retry batch %llu: %llu of its tasks are missing from the store (a bug); it ends without them",
                 static_cast<unsigned long long>(load.batch), static_cast<unsigned long long>(load.left));
      b->pendingAdds -= load.left;
      pendingSubmitTasks_ -= load.left;
      done = true;
    }
    if (done) {
      b->sealPending = false;
      if (!b->sealed) scheduler_.seal(*b, b->total);
      retryLoads_.pop_front();
      payloadReader_->closeAll();  // keep no deleted segment alive
    }
    if (b->cancelled) scheduler_.cancel(*b, clock_.wallMs());
  }
}

void NexusImpl::startReduce(const store::BatchRecord& map) {
  JobLink& link = jobLinks_[map.id];
  auto stop = [&](const std::string& why) {
    MESH_WARN("job %llu: %s", static_cast<unsigned long long>(map.id), why.c_str());
    link.note = why;
    link.pending = false;
    if (reduceRetries_.erase(map.id) > 0) sendProgress(map.id, true);  // its watchers waited for this
    store::BatchUpdate u;
    u.batch = map.id;
    u.note = why;
    current_->updates.push_back(u);
    wakeWaiters(map.id);  // a batch held --after the job is cancelled (--after-done: released)
  };
  if (map.cancelledMs) {
    // Cancelled by a batch it waited for (mesh submit --after): its note says why.
    return stop(map.note.empty() ? "cancelled: the reduce stage did not start"
                                 : map.note + "; the reduce stage did not start");
  }
  const std::uint32_t r = map.mrPartitions;
  std::shared_ptr<std::vector<std::string>> payloads;
  if (auto again = reduceRetries_.find(map.id); again != reduceRetries_.end() && again->second.payloads &&
                                                again->second.payloads->size() == r) {
    payloads = again->second.payloads;  // built for the attempt the store refused
    counters_.add("reduce_stages_reused");
  } else {
    payloads = std::make_shared<std::vector<std::string>>();
    // Counted and sized first, without reading an output: a job with failed map tasks, or with
    // more output than the nexus may hold, stops here (this runs on the loop, and again at every
    // start while the job waits for its reduce stage: reading it all first could run the nexus
    // out of memory on every start).
    auto size = readStore_->outputsSize(map.id);
    if (!size) return stop("cannot read the map outputs: " + size.error().message);
    if (size->count != map.total) {
      return stop(std::to_string(map.total - std::min(map.total, size->count)) + " of " + std::to_string(map.total) +
                  " map tasks failed: the reduce stage did not start (see mesh results " + std::to_string(map.id) + ")");
    }
    if (size->bytes > config_.maxShuffleBytes) {
      counters_.add("reduce_stages_too_large");
      return stop("the map stage's output is " + std::to_string(size->bytes) + " bytes, over the nexus's --max-shuffle of " +
                  std::to_string(config_.maxShuffleBytes) +
                  ": the reduce stage did not start (a combiner shrinks the map output; or raise --max-shuffle)");
    }
    try {
      auto outputs = readStore_->outputs(map.id);
      if (!outputs) return stop("cannot read the map outputs: " + outputs.error().message);
      if (outputs->size() != map.total) {
        return stop(std::to_string(map.total - std::min<std::uint64_t>(map.total, outputs->size())) + " of " +
                    std::to_string(map.total) + " map tasks failed: the reduce stage did not start (see mesh results " +
                    std::to_string(map.id) + ")");
      }
      std::vector<std::vector<std::string_view>> runs(r);
      for (std::size_t i = 0; i < outputs->size(); ++i) {
        auto parts = exec::decodeParts((*outputs)[i]);
        if (!parts || parts->size() != r) {
          return stop("map task " + std::to_string(i) + " returned malformed output: the reduce stage did not start");
        }
        for (std::uint32_t k = 0; k < r; ++k) runs[k].push_back((*parts)[k]);
      }
      for (std::uint32_t k = 0; k < r; ++k) {
        payloads->push_back(exec::encodeParts(runs[k]));
        if (payloads->back().size() > config_.maxFrameBytes / 2) {
          return stop("reduce partition " + std::to_string(k) + " would be " + std::to_string(payloads->back().size()) +
                      " bytes, over the limit of " + std::to_string(config_.maxFrameBytes / 2) + ": use more reducers");
        }
      }
    } catch (const std::bad_alloc&) {
      counters_.add("reduce_stages_too_large");
      return stop("not enough memory to build the reduce stage from " + std::to_string(size->bytes) +
                  " bytes of map output: lower --max-shuffle, or use a combiner");
    }
  }
  routing::BatchSpec s;
  s.handler = map.mrReducer;
  s.priority = map.priority;
  s.requiredTags = map.requiredTags;
  s.timeoutMs = map.timeoutMs;
  s.maxAttempts = map.maxAttempts;
  s.label = map.label.empty() ? "reduce" : map.label + " (reduce)";
  s.clientKey = map.clientKey;
  s.submittedMs = clock_.wallMs();
  s.mrStage = 2;
  s.mrPartitions = r;
  std::uint64_t id = nextBatchId_++;
  routing::Batch& b = scheduler_.addBatch(id, s);
  b.total = r;  // known now: progress shows 0/R, not 0/0, until the tasks are committed
  owners_[id] = map.clientKey;
  current_->newBatches.push_back(batchRecord(id, b.spec, /*sealed=*/true, r));
  PendingSubmit ps;
  ps.batch = id;
  ps.firstId = nextTaskId_;
  ps.firstIndex = 0;
  ps.count = r;
  ps.seal = true;
  ps.newBatch = true;
  ps.reduceOf = map.id;
  ps.owned = payloads;
  ps.payloads.assign(payloads->begin(), payloads->end());
  nextTaskId_ += r;
  b.pendingAdds += r;
  b.sealPending = true;
  store::TaskChunk chunk;
  chunk.batch = id;
  chunk.firstId = ps.firstId;
  chunk.firstIndex = 0;
  for (const auto& p : *payloads) chunk.payloads.push_back(p);
  chunk.keepAlive = payloads;
  current_->chunks.push_back(std::move(chunk));
  store::BatchUpdate u;
  u.batch = map.id;
  u.nextBatch = id;
  current_->updates.push_back(u);
  link.next = 0;  // linked once the reduce batch is stored (onCommits)
  link.pending = true;
  pendingSubmitTasks_ += r;
  currentInfo_.submitTasks += r;
  currentInfo_.submits.push_back(std::move(ps));
  counters_.add("reduce_stages_started");
  MESH_INFO("job %llu: map stage done; reduce stage is batch %llu with %u tasks",
            static_cast<unsigned long long>(map.id), static_cast<unsigned long long>(id), r);
}

void NexusImpl::timers() {
  std::int64_t now = clock_.monotonicMs();
  if (!reduceRetries_.empty()) retryReduces();
  if (now >= nextHeartbeat_ && !rejudge_.empty()) {
    std::set<std::uint64_t> again = std::move(rejudge_);
    rejudge_.clear();
    counters_.add("batches_rejudged", again.size());
    for (std::uint64_t b : again) judgeWaiting(b);
  }
  if (now >= nextHeartbeat_) {
    nextHeartbeat_ = now + config_.heartbeatMs;
    std::vector<routing::NodeId> dead, gone;
    std::int64_t silentLimit = config_.heartbeatMs * config_.missedBeats;
    for (auto& [rid, c] : conns_) {
      if (now - c.lastSeenMono > silentLimit) {
        dead.push_back(c.id);
        continue;
      }
      wire::Encoder e(0, 32);
      e.body().initHeartbeat();
      if (!sendTo(nodeSocket_, rid, e.finish())) gone.push_back(c.id);
    }
    for (auto id : dead) {
      counters_.add("heartbeats_missed");
      dropNode(id, "no heartbeat for " + std::to_string(silentLimit) + " ms");
    }
    for (auto id : gone) {
      // ZeroMQ has closed its connection (the process died, its host closed the socket): known
      // at the next heartbeat, long before the silence limit.
      counters_.add("nodes_disconnected");
      dropNode(id, "its connection closed (the heartbeat could not be sent)");
    }
    // Nodes and routes are made and dropped together; should a node ever be left without its
    // route (a bug), its tasks go back to the queue instead of waiting for their timeout.
    std::vector<routing::NodeId> unreachable;
    for (const auto& [id, n] : scheduler_.nodes()) {
      if (!nodeRoute_.count(id)) unreachable.push_back(id);
    }
    for (auto id : unreachable) {
      counters_.add("nodes_without_route");
      MESH_ERROR("node %u has no route (a bug): dropped, its tasks go back to the queue", id);
      scheduler_.removeNode(id, clock_.wallMs(), "no route to it", /*nodeFault=*/false);
    }
  }
  if (now >= nextProgress_) {
    nextProgress_ = now + kProgressEveryMs;
    std::vector<std::uint64_t> watched;
    for (const auto& [batch, list] : watchers_) watched.push_back(batch);
    for (auto batch : watched) sendProgress(batch, false);
  }
  for (auto it = uploads_.begin(); it != uploads_.end();) {
    if (now - it->second.lastMono > kUploadIdleMs) {
      MESH_WARN("dropped bundle upload %llu: silent for %lld ms", static_cast<unsigned long long>(it->first),
                static_cast<long long>(kUploadIdleMs));
      it->second.rx->discard();
      it = uploads_.erase(it);
    } else {
      ++it;
    }
  }
  if (now >= nextRecallCheck_) {
    nextRecallCheck_ = now + kRecallCheckEveryMs;
    checkRecalls();
  }
  if (now >= nextKeyCheck_) {
    nextKeyCheck_ = now + kKeyCheckEveryMs;
    if (auto s = reloadKeys(); !s) MESH_WARN("reloading keys failed: %s", s.error().message.c_str());
  }
}

void NexusImpl::publish(proto::Event::Kind kind, std::uint64_t batch, const std::string& node, const std::string& text) {
  wire::Encoder e(0, 64);
  auto ev = e.body().initEvent();
  ev.setKind(kind);
  ev.setBatch(batch);
  ev.setNode(node);
  ev.setText(text);
  try {
    eventsSocket_.send(e.finish(), zmq::send_flags::dontwait);
  } catch (const zmq::error_t&) {
    counters_.add("events_dropped");
  }
}

}  // namespace mesh::node
