// The spore's workers: running tasks (execute, workerLoop), its queue of tasks and the runs it
// hands to workers, cancels, and the results it sends back. See spore_impl.h.
#include "mesh/node/spore_impl.h"

namespace mesh::node {

// ---- workers ---------------------------------------------------------------------------------

Done SporeImpl::execute(Job& job, exec::ServeProcesses* serve, const std::function<void()>* onLong) {
  const auto& clock = util::systemClock();
  Done done;
  done.id = job.id;
  done.attempt = job.attempt;
  done.startedMs = clock.wallMs();
  job.shared->startedMs.store(done.startedMs, std::memory_order_relaxed);  // the next heartbeat tells the nexus
  std::int64_t t0 = clock.monotonicUs();
  if (job.shared->cancel.load()) {
    done.status = proto::TaskStatus::CANCELLED;
  } else {
    exec::TaskInput input;
    input.taskId = job.id;
    input.attempt = job.attempt;
    input.payload = job.payload;
    input.timeoutMs = job.timeoutMs;
    input.cancel = &job.shared->cancel;
    input.serve = serve;
    input.onLong = onLong;
    exec::TaskOutput result;
    try {
      auto table = registry_.snapshot();
      if (installer_) {  // which version of a bundle runs it (the path is that version's directory)
        if (auto v = installer_->versionOfProgram(table->where(job.handler))) {
          done.bundle = std::move(v->name);
          done.bundleVersion = v->version;
        }
      }
      if (job.stage == proto::MapReduce::Stage::MAP) {
        exec::MapSpec spec{job.handler, job.combiner, job.partitions};
        result = exec::runMapTask(*table, spec, input, programSettings_);
      } else if (job.stage == proto::MapReduce::Stage::REDUCE) {
        result = exec::runReduceTask(*table, job.handler, input, programSettings_);
      } else {
        result = table->run(job.handler, input, programSettings_);
      }
    } catch (const std::exception& e) {
      result.outcome = exec::Outcome::kFailed;
      result.error = std::string("handler threw: ") + e.what();
    }
    done.status = statusOf(result.outcome);
    done.programFault = result.programFault;
    done.faultHandler = std::move(result.faultHandler);
    done.output = std::move(result.output);
    done.error = std::move(result.error);
  }
  done.durationUs = static_cast<std::uint64_t>(clock.monotonicUs() - t0);
  return done;
}

void SporeImpl::workerLoop(unsigned index, std::string endpoint) {
  (void)index;
  zmq::socket_t pipe(ctx_, zmq::socket_type::pair);
  pipe.set(zmq::sockopt::sndhwm, 0);
  pipe.set(zmq::sockopt::rcvhwm, 0);
  pipe.connect(endpoint);
  const auto& clock = util::systemClock();
  // This thread's serve handler processes: used by its tasks only, stopped when idle (the wait
  // for work times out when the next one is due) and when the thread returns.
  exec::ServeProcesses serve;
  for (;;) {
    zmq::message_t m;
    try {
      pipe.set(zmq::sockopt::rcvtimeo, static_cast<int>(serve.msUntilIdle()));
      if (!pipe.recv(m)) {
        serve.stopIdle();
        continue;
      }
    } catch (const zmq::error_t& e) {
      // A stop signal the kernel gave this thread interrupts the wait (the handler passes it on
      // to the main thread): wait again. Returning here left the loop's next send to this
      // worker, and the spore's stop, blocked for ever on a pipe nobody reads.
      if (e.num() == EINTR) continue;
      return;
    }
    if (m.size() == 0) continue;  // a recall that came after the run had ended
    auto work = takePointer<WorkBatch>(m);
    if (work->jobs.empty()) return;
    auto out = std::make_unique<DoneBatch>();
    std::int64_t lastFlushUs = clock.monotonicUs();
    // Passes the results so far to the loop. If the loop has recalled the run (jobs of a higher
    // priority wait), the jobs from `recallFrom` on go back with them and the run ends there;
    // otherwise those from `giveBackFrom` on do (npos: none). A run is only ever sent to an idle
    // worker, so the only other message that can come meanwhile is the stop: false, the thread
    // returns.
    constexpr std::size_t npos = std::string::npos;
    auto report = [&](std::size_t recallFrom, std::size_t giveBackFrom, std::int64_t nowUs) {
      zmq::message_t recall;
      bool recalled = false;
      try {
        recalled = pipe.recv(recall, zmq::recv_flags::dontwait).has_value();
      } catch (const zmq::error_t&) {
        return false;
      }
      if (recalled && recall.size() != 0) {
        takePointer<WorkBatch>(recall);  // the stop
        return false;
      }
      std::size_t from = recalled ? recallFrom : giveBackFrom;
      if (from < work->jobs.size()) {
        for (std::size_t j = from; j < work->jobs.size(); ++j) out->returned.push_back(std::move(work->jobs[j]));
        work->jobs.erase(work->jobs.begin() + static_cast<std::ptrdiff_t>(from), work->jobs.end());
      }
      try {
        pipe.send(pointerMessage(std::move(out)), zmq::send_flags::none);
      } catch (const zmq::error_t&) {
        return false;
      }
      out = std::make_unique<DoneBatch>();
      lastFlushUs = nowUs;
      return true;
    };
    // A task that may be long (any but a microsecond built-in) holds neither the results before
    // it nor the jobs after it in the run: before it starts, the worker hands the results to the
    // loop and gives the rest of the run back (an idle worker takes it). A serve handler's task,
    // which takes microseconds when the handler is quick, does both only once it turns out long
    // (onLong: after 1 ms, or before a process start), so quick ones keep their runs.
    std::size_t running = 0;
    bool stop = false;
    const std::function<void()> onLong = [&] {
      if ((!out->done.empty() || running + 1 < work->jobs.size()) &&
          !report(running + 1, running + 1, clock.monotonicUs())) {
        stop = true;
      }
    };
    for (std::size_t i = 0; i < work->jobs.size(); ++i) {
      Job& job = work->jobs[i];
      bool watched = false;
      if (!job.quick && (!out->done.empty() || i + 1 < work->jobs.size())) {
        watched = job.stage == proto::MapReduce::Stage::NONE && registry_.snapshot()->isServe(job.handler);
        if (!watched && !report(i, i + 1, clock.monotonicUs())) return;
        if (i == work->jobs.size()) break;  // recalled
      }
      running = i;
      Done done = execute(job, &serve, watched ? &onLong : nullptr);
      if (stop) return;
      std::int64_t t1 = clock.monotonicUs();
      out->done.push_back(std::move(done));
      // Microsecond tasks travel together: a report every ~1 ms or 256 results.
      bool last = i + 1 == work->jobs.size();
      if (!last && (t1 - lastFlushUs > 1000 || out->done.size() >= 256) && !report(i + 1, npos, t1)) return;
    }
    out->idle = true;
    try {
      pipe.send(pointerMessage(std::move(out)), zmq::send_flags::none);
    } catch (const zmq::error_t&) {
      return;
    }
  }
}

void SporeImpl::onAssign(proto::Assign::Reader assign) {
  if (leaving_) {
    // Sent before the nexus read our leaving: back at once, never started. An id this spore
    // still runs under an older attempt goes back too: the nexus counts the new attempt only.
    for (auto t : assign.getTasks()) toGiveBack_.emplace_back(t.getId(), t.getAttempt());
    counters_.add("assigned_while_leaving", assign.getTasks().size());
    sendLeaving(false);
    return;
  }
  for (auto t : assign.getTasks()) {
    auto held = jobs_.find(t.getId());
    if (held != jobs_.end()) {
      // A repeat of an attempt this spore runs is a duplicate; one of an attempt it is stopping
      // (cancelled) is not: a restarted nexus that lost the attempt's record asks for it again
      // under the same number, and it runs once the old run has ended (below).
      if (t.getAttempt() <= held->second.attempt && !held->second.shared->cancel.load()) {
        counters_.add("assign_duplicates");
        continue;
      }
      if (!held->second.shared->cancel.load()) {
        // The nexus gave up on the attempt that is still running here (a late reconnect, say)
        // and asks again: its result will be reported under the new attempt.
        held->second.attempt = t.getAttempt();
        held->second.startSent = false;  // its start again, under the new attempt
        counters_.add("assign_attempts_raised");
        continue;
      }
      // The old attempt is still being stopped (a handler slow to die): the new one runs when it
      // has ended, below (dropping it would leave the task waiting for the nexus's deadline).
    }
    Job job;
    job.id = t.getId();
    job.attempt = t.getAttempt();
    job.handler = std::string(wire::view(t.getHandler()));
    job.payload = std::string(wire::view(t.getPayload()));
    job.timeoutMs = t.getTimeoutMs();
    job.priority = t.getPriority();
    if (t.hasMapreduce()) {
      auto mr = t.getMapreduce();
      job.stage = mr.getStage();
      job.partitions = mr.getPartitions();
      job.combiner = std::string(wire::view(mr.getCombiner()));
      if (job.stage == proto::MapReduce::Stage::MAP && (job.partitions < 1 || job.partitions > 10000)) {
        counters_.add("bad_tasks");
        Done bad;
        bad.id = job.id;
        bad.attempt = job.attempt;
        bad.status = proto::TaskStatus::FAILED;
        bad.error = "map task with " + std::to_string(job.partitions) + " partitions (1-10000)";
        outbox_.push_back(std::move(bad));
        continue;
      }
    }
    job.quick = quickTask(job);
    if (held != jobs_.end()) {
      counters_.add("assign_after_stop");
      reassigned_[job.id] = std::move(job);
      continue;
    }
    jobs_[job.id] = JobRef{job.attempt, job.shared, job.handler};
    queue_.push(job.priority, std::move(job));
  }
  feedWorkers();
}

void SporeImpl::onCancel(proto::CancelTasks::Reader cancel) {
  for (auto id : cancel.getIds()) {
    reassigned_.erase(id);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    it->second.shared->cancel.store(true);
    counters_.add("tasks_cancelled");
  }
  // Queued ones never start: drop them now (the nexus no longer wants their result). Those in a
  // worker's run are skipped by the worker, or dropped if it gives them back (takeBack).
  queue_.removeIf([&](const Job& j) {
    if (!j.shared->cancel.load()) return false;
    jobs_.erase(j.id);
    return true;
  });
}

void SporeImpl::onRecall(proto::TaskAttempts::Reader asked) {
  auto ids = asked.getIds();
  auto attempts = asked.getAttempts();
  std::vector<std::pair<std::uint64_t, std::uint8_t>> back;
  if (ids.size() != attempts.size()) {
    counters_.add("bad_recalls");
    MESH_WARN("the nexus recalled %u tasks with %u attempts: answered with none", ids.size(), attempts.size());
    sendHandBack(back);  // an answer all the same: the nexus waits for one
    return;
  }
  counters_.add("recalls");
  if (leaving_) {
    // Everything not started goes back with the leaving messages already.
    sendHandBack(back);
    return;
  }
  // The tasks the nexus wants under the attempt this spore holds them for (a task re-sent
  // under a newer attempt is the nexus's only under that one).
  std::unordered_map<std::uint64_t, std::uint8_t> wanted;
  for (unsigned i = 0; i < ids.size(); ++i) {
    auto held = jobs_.find(ids[i]);
    if (held != jobs_.end() && held->second.attempt == attempts[i] && !held->second.shared->cancel.load()) {
      wanted[ids[i]] = attempts[i];
    } else if (auto next = reassigned_.find(ids[i]); next != reassigned_.end() && next->second.attempt == attempts[i]) {
      // Waiting for its older attempt to be stopped: not started.
      back.emplace_back(ids[i], attempts[i]);
      reassigned_.erase(next);
    }
  }
  queue_.removeIf([&](const Job& j) {
    auto w = wanted.find(j.id);
    if (w == wanted.end()) return false;
    back.emplace_back(j.id, w->second);
    jobs_.erase(j.id);
    wanted.erase(w);
    return true;
  });
  // The rest run, or wait in a worker's run: the runs give back what they have not started at
  // their next report (within about 1 ms), and takeBack hands the wanted ones back.
  if (!wanted.empty()) {
    for (auto& [id, attempt] : wanted) recallWanted_[id] = attempt;
    for (unsigned w = 0; w < workers_.size(); ++w) {
      if (workers_[w].busy && !workers_[w].recalled && workers_[w].left > 1) recall(w);
    }
  }
  counters_.add("tasks_handed_back", back.size());
  if (!back.empty()) MESH_INFO("the nexus recalled %u tasks: handed back %zu not started", ids.size(), back.size());
  sendHandBack(back);
}

void SporeImpl::sendHandBack(const std::vector<std::pair<std::uint64_t, std::uint8_t>>& tasks) {
  wire::Encoder e(0, static_cast<unsigned>(64 + tasks.size() * 2));
  auto h = e.body().initHandBack();
  auto ids = h.initIds(static_cast<unsigned>(tasks.size()));
  auto attempts = h.initAttempts(static_cast<unsigned>(tasks.size()));
  for (unsigned i = 0; i < tasks.size(); ++i) {
    ids.set(i, tasks[i].first);
    attempts.set(i, tasks[i].second);
  }
  if (send(e.finish())) return;
  counters_.add("handbacks_unsent");
  // The tasks are no longer this spore's: the next hello does not name them, so the nexus
  // re-queues them when it replaces this connection. While this one lasts (a send refused by a
  // full queue), they are sent again from the loop, or they would wait for their deadline there.
  if (connected_) handBackUnsent_.insert(handBackUnsent_.end(), tasks.begin(), tasks.end());
}

void SporeImpl::resendHandBack() {
  if (handBackUnsent_.empty() || !welcomed_) return;
  auto tasks = std::move(handBackUnsent_);
  handBackUnsent_.clear();
  sendHandBack(tasks);
}

bool SporeImpl::isInstant(const Job& job) const {
  return job.quick && job.payload.size() <= kInstantPayloadMax &&
         registry_.snapshot()->where(job.handler) == "builtin";  // built-ins are never shadowed
}

void SporeImpl::feedWorkers() {
  // Light load: a built-in that takes microseconds (echo, fail, sha256 of up to 16 KiB) runs
  // here, on the loop, instead of paying two thread hand-offs to a worker and back (~0.12 ms
  // of a one-task batch in the development VM). With a worker busy or more work queued, the
  // workers run everything, in parallel.
  // Only the job that is next in priority order runs here (with nothing running, it is the
  // queue's front), so the fast path keeps the order.
  while (running_ == 0 && !queue_.empty() && queue_.size() <= kInstantQueueMax && isInstant(queue_.front())) {
    Job job = std::move(queue_.takeRun(1).front());
    ++running_;
    counters_.add("tasks_run_inline");
    onDone(execute(job, nullptr));
  }
  unsigned idle = 0;
  for (const auto& w : workers_) idle += w.busy ? 0 : 1;
  for (unsigned w = 0; w < workers_.size() && !queue_.empty(); ++w) {
    if (workers_[w].busy) continue;
    // Share what is queued among the idle workers; short tasks go in runs, the others one by
    // one (runsAlone). A run holds jobs of the highest queued priority only.
    std::size_t take = std::max<std::size_t>(1, std::min<std::size_t>(64, queue_.size() / std::max(1u, idle)));
    auto batch = std::make_unique<WorkBatch>();
    batch->jobs = runsAlone(queue_.front()) ? queue_.takeRun(1)
                                            : queue_.takeRun(take, [this](const Job& j) { return runsAlone(j); });
    running_ += static_cast<unsigned>(batch->jobs.size());
    workers_[w] = WorkerRun{true, batch->jobs.front().priority, batch->jobs.size(), false};
    --idle;
    pipes_[w].send(pointerMessage(std::move(batch)), zmq::send_flags::none);
    poller_.touched(pipes_[w]);
  }
  recallRuns();
}

void SporeImpl::recallRuns() {
  if (queue_.empty()) return;
  // Left queued with every worker busy: recall runs of a lower priority that have jobs not yet
  // started, the lowest first, no more than there are jobs of the top priority waiting (counting
  // the recalls already on their way).
  std::uint8_t top = queue_.topPriority();
  std::size_t waiting = queue_.topCount(), outstanding = 0;
  std::vector<unsigned> candidates;
  for (unsigned w = 0; w < workers_.size(); ++w) {
    const auto& run = workers_[w];
    if (!run.busy) continue;
    if (run.recalled) {
      ++outstanding;
    } else if (run.priority < top && run.left > 1) {
      candidates.push_back(w);
    }
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](unsigned a, unsigned b) { return workers_[a].priority < workers_[b].priority; });
  for (unsigned w : candidates) {
    if (outstanding >= waiting) break;
    ++outstanding;
    recall(w);
  }
}

void SporeImpl::recall(unsigned w) {
  workers_[w].recalled = true;
  counters_.add("runs_recalled");
  pipes_[w].send(zmq::message_t(), zmq::send_flags::none);
  poller_.touched(pipes_[w]);
}

void SporeImpl::onWorker(unsigned index, zmq::message_t& frame) {
  auto done = takePointer<DoneBatch>(frame);
  auto& run = workers_[index];
  run.left -= std::min(run.left, done->done.size() + done->returned.size());
  for (auto& d : done->done) onDone(std::move(d));
  if (!done->returned.empty()) takeBack(std::move(done->returned));
  if (done->idle) run = WorkerRun{};
  if (!recallWanted_.empty() &&
      std::none_of(workers_.begin(), workers_.end(), [](const WorkerRun& r) { return r.busy && r.recalled; })) {
    recallWanted_.clear();  // every recalled run has come back: the wanted tasks not handed back have started
  }
}

void SporeImpl::takeBack(std::vector<Job>&& returned) {
  counters_.add("tasks_given_back", returned.size());
  std::vector<Job> again;
  std::uint8_t priority = returned.front().priority;
  for (auto& job : returned) {
    if (job.shared->cancel.load()) {
      // Cancelled while in the run: ends here as the worker would have ended it (not reported).
      Done d;
      d.id = job.id;
      d.attempt = job.attempt;
      d.status = proto::TaskStatus::CANCELLED;
      onDone(std::move(d));
      continue;
    }
    --running_;
    again.push_back(std::move(job));
  }
  if (leaving_) {
    for (auto& job : again) {
      jobs_.erase(job.id);
      toGiveBack_.emplace_back(job.id, job.attempt);
    }
    sendLeaving(false);
    return;
  }
  if (!recallWanted_.empty()) {
    // Recalled by the nexus while in this run: back to it, not to the queue.
    std::vector<std::pair<std::uint64_t, std::uint8_t>> back;
    std::vector<Job> keep;
    for (auto& job : again) {
      auto w = recallWanted_.find(job.id);
      auto held = jobs_.find(job.id);
      if (w != recallWanted_.end() && held != jobs_.end() && held->second.attempt == w->second) {
        back.emplace_back(job.id, w->second);
        jobs_.erase(held);
        recallWanted_.erase(w);
      } else {
        keep.push_back(std::move(job));
      }
    }
    if (!back.empty()) {
      counters_.add("tasks_handed_back", back.size());
      MESH_INFO("handed back %zu more recalled tasks, not started", back.size());
      sendHandBack(back);
    }
    again = std::move(keep);
    if (again.empty()) return;
  }
  queue_.pushFront(priority, std::move(again));
}

void SporeImpl::noteDuration(const std::string& handler, std::uint64_t durationUs) {
  // The microsecond built-ins keep their runs: one of them over kSlowTaskUs was preempted.
  if (microBuiltin(handler)) return;
  if (durationUs >= kSlowTaskUs) {
    slowLeft_[handler] = kSlowMemory;
  } else if (auto slow = slowLeft_.find(handler); slow != slowLeft_.end() && --slow->second == 0) {
    slowLeft_.erase(slow);
  }
}

void SporeImpl::onDone(Done&& d) {
  --running_;
  auto it = jobs_.find(d.id);
  bool cancelled = it != jobs_.end() && it->second.shared->cancel.load();
  if (it != jobs_.end() && !cancelled) noteTrialTask(it->second.handler, d);
  if (it != jobs_.end() && !cancelled) d.attempt = std::max(d.attempt, it->second.attempt);
  if (it != jobs_.end()) {
    noteDuration(it->second.handler, d.durationUs);
    jobs_.erase(it);
  }
  if (auto next = reassigned_.find(d.id); next != reassigned_.end()) {
    // The attempt the nexus sent while this one was being stopped: its turn now.
    Job job = std::move(next->second);
    reassigned_.erase(next);
    if (leaving_) {
      toGiveBack_.emplace_back(job.id, job.attempt);
    } else {
      jobs_[job.id] = JobRef{job.attempt, job.shared, job.handler};
      queue_.push(job.priority, std::move(job));  // fed to a worker at the end of this turn
    }
  }
  if (cancelled) return;  // the nexus asked us to stop it; it does not want the result
  outbox_.push_back(std::move(d));
}

void SporeImpl::flushResults() {
  if (outbox_.empty() || !welcomed_) return;
  std::size_t start = 0;
  while (start < outbox_.size()) {
    std::size_t end = start, bytes = 0;
    while (end < outbox_.size() && end - start < kMaxResultsPerFrame &&
           (end == start || bytes + outbox_[end].output.size() < kResultFrameBytes)) {
      bytes += outbox_[end].output.size() + outbox_[end].error.size() + 64;
      ++end;
    }
    wire::Encoder e(0, static_cast<unsigned>(bytes / 8 + 64));
    auto list = e.body().initResults().initResults(static_cast<unsigned>(end - start));
    for (std::size_t i = start; i < end; ++i) {
      const Done& d = outbox_[i];
      auto out = list[static_cast<unsigned>(i - start)];
      out.setId(d.id);
      out.setAttempt(d.attempt);
      out.setStatus(d.status);
      out.setOutput(wire::asData(d.output));
      out.setError(d.error);
      out.setStartedMs(d.startedMs);
      out.setDurationUs(d.durationUs);
      if (!d.bundle.empty()) {
        out.setBundle(d.bundle);
        out.setBundleVersion(d.bundleVersion);
      }
    }
    if (!send(e.finish())) {
      counters_.add("results_unsent");
      break;  // keep the rest; they go after the reconnect
    }
    start = end;
  }
  std::int64_t now = clock_.monotonicMs();
  for (std::size_t i = 0; i < start; ++i) {
    sentLatelyBytes_ += outbox_[i].output.size() + outbox_[i].error.size();
    sentLately_.emplace_back(now, std::move(outbox_[i]));
  }
  outbox_.erase(outbox_.begin(), outbox_.begin() + static_cast<std::ptrdiff_t>(start));
  std::int64_t keepMs = heartbeatMs_ * (missedBeats_ + 2);
  while (!sentLately_.empty() && (sentLately_.size() > kResendMax || sentLatelyBytes_ > kResendBytesMax ||
                                  now - sentLately_.front().first > keepMs)) {
    sentLatelyBytes_ -= sentLately_.front().second.output.size() + sentLately_.front().second.error.size();
    sentLately_.pop_front();
  }
}

void SporeImpl::resendLately() {
  if (sentLately_.empty()) return;
  counters_.add("results_resent", sentLately_.size());
  std::vector<Done> again;
  again.reserve(sentLately_.size() + outbox_.size());
  for (auto& [at, d] : sentLately_) again.push_back(std::move(d));
  for (auto& d : outbox_) again.push_back(std::move(d));
  outbox_ = std::move(again);
  sentLately_.clear();
  sentLatelyBytes_ = 0;
}

// ---- leaving ---------------------------------------------------------------------------------

void SporeImpl::beginLeaving(std::int64_t now) {
  leaving_ = true;
  bundleStop_.store(true);  // an install in progress stops before its next file (its spool is kept)
  leaveDeadlineMono_ = now + config_.stopGraceMs;
  // Queued here, not started: back to the nexus now, so other spores run them meanwhile.
  while (!queue_.empty()) {
    for (auto& job : queue_.takeRun(queue_.size())) {
      jobs_.erase(job.id);
      if (!job.shared->cancel.load()) toGiveBack_.emplace_back(job.id, job.attempt);
    }
  }
  for (auto& [id, job] : reassigned_) toGiveBack_.emplace_back(id, job.attempt);
  reassigned_.clear();
  // The jobs of the workers' runs not started yet come back at the workers' next report.
  for (unsigned w = 0; w < workers_.size(); ++w) {
    if (workers_[w].busy && !workers_[w].recalled && workers_[w].left > 1) recall(w);
  }
  MESH_INFO("stopping: %zu queued tasks handed back; waiting up to %.0f s for the %u running (a second "
            "signal stops at once)",
            toGiveBack_.size(), config_.stopGraceMs / 1000.0, running_);
  counters_.add("tasks_handed_back", toGiveBack_.size());
  sendLeaving(false);
}

void SporeImpl::sendLeaving(bool final) {
  if (!welcomed_) return;  // a new nexus run learns it after its welcome (kept until then)
  std::size_t n = toGiveBack_.size();
  wire::Encoder e(0, static_cast<unsigned>(64 + n * 2));
  auto l = e.body().initLeaving();
  l.setGraceMs(static_cast<std::uint32_t>(std::clamp<std::int64_t>(config_.stopGraceMs, 0, UINT32_MAX)));
  l.setFinal(final);
  auto ids = l.initGiveBack(static_cast<unsigned>(n));
  auto attempts = l.initGiveBackAttempts(static_cast<unsigned>(n));
  for (unsigned i = 0; i < n; ++i) {
    ids.set(i, toGiveBack_[i].first);
    attempts.set(i, toGiveBack_[i].second);
  }
  if (send(e.finish())) toGiveBack_.clear();
}

void SporeImpl::finishLeaving(const std::atomic<int>& stops) {
  if (running_ > 0) {
    MESH_WARN("stop grace (%.0f s) over: %u running tasks go back to the queue and are stopped here",
              config_.stopGraceMs / 1000.0, running_);
  }
  flushResults();
  if (!welcomed_) {
    if (jobs_.empty() && outbox_.empty()) {
      MESH_INFO("stopping (not connected to a nexus; this spore holds no task)");
    } else {
      MESH_WARN("stopping without a word to the nexus (not connected): it re-queues this spore's %zu tasks when it "
                "finds it gone",
                jobs_.size() + outbox_.size());
    }
    return;
  }
  sendLeaving(true);
  // Everything sent before the final leaving has reached the nexus when it answers (one
  // connection keeps the order); wait a little for that, no more.
  std::int64_t deadline = clock_.monotonicMs() + 2000;
  for (int i = 0; i < 100 && connected_; ++i) {
    std::int64_t left = deadline - clock_.monotonicMs();
    if (left <= 0) break;
    if (stops.load() >= 2) {
      MESH_WARN("stopping at once (second signal) without the nexus's answer to this spore's leave");
      return;
    }
    zmq::pollitem_t item{dealer_.handle(), 0, ZMQ_POLLIN, 0};
    try {
      zmq::poll(&item, 1, std::chrono::milliseconds(left));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) throw;
      continue;  // a signal: the second one stops the wait above
    }
    zmq::message_t m;
    while (dealer_.recv(m, zmq::recv_flags::dontwait)) {
      auto d = wire::decode(std::move(m), limits_);
      if (d && d->which() == Which::LEFT_ACK) {
        MESH_INFO("the nexus took this spore's leave");
        return;
      }
    }
  }
  MESH_WARN("the nexus did not answer this spore's leave within 2 s: it re-queues what this spore had when it "
            "finds it gone");
}

}  // namespace mesh::node
