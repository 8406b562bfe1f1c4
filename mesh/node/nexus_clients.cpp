// The nexus's client port: submit, watch and progress, results, status, nodes, task, cancel.
#include "mesh/node/nexus_impl.h"

#include <ctime>
#include <unordered_set>

namespace mesh::node {

namespace {
void fillIds(capnp::List<std::uint64_t>::Builder out, const std::vector<std::uint64_t>& ids) {
  for (unsigned i = 0; i < ids.size(); ++i) out.set(i, ids[i]);
}

// A batch's dependency lists (protocol section 4.21), into a Progress or a TaskInfo.
template <typename Builder>
void fillWaits(Builder out, const std::vector<std::uint64_t>& after, const std::vector<std::uint64_t>& afterDone) {
  if (!after.empty()) fillIds(out.initAfter(static_cast<unsigned>(after.size())), after);
  if (!afterDone.empty()) fillIds(out.initAfterDone(static_cast<unsigned>(afterDone.size())), afterDone);
}
}  // namespace

// ---- client port -----------------------------------------------------------------------------

void NexusImpl::onClientMessage(const std::string& routingId, zmq::message_t& body) {
  std::string key = transport::userId(body);
  auto decoded = wire::decode(std::move(body), limits_);
  if (!decoded) {
    counters_.add("bad_frames");
    MESH_WARN("dropped a bad frame from client %s: %s", fingerprintOf(key).c_str(), decoded.error().message.c_str());
    replyError(routingId, 0, proto::Error::Code::BAD_REQUEST, "malformed message: " + decoded.error().message);
    return;
  }
  auto role = roleOf(key);
  std::uint64_t requestId = decoded->envelope().getRequestId();
  if (!role || *role == store::Role::kNode) {
    counters_.add("refused_messages");
    replyError(routingId, requestId, proto::Error::Code::FORBIDDEN, "this key is not accepted as a client");
    return;
  }
  try {
    serveClient(routingId, key, requestId, std::move(*decoded));
  } catch (const std::exception& e) {
    counters_.add("internal_errors");
    MESH_ERROR("request from %s failed: %s", fingerprintOf(key).c_str(), e.what());
    replyError(routingId, requestId, proto::Error::Code::INTERNAL, "the nexus failed on this request; see its log");
  } catch (const kj::Exception& e) {
    counters_.add("internal_errors");
    MESH_ERROR("request from %s failed: %s", fingerprintOf(key).c_str(), e.getDescription().cStr());
    replyError(routingId, requestId, proto::Error::Code::INTERNAL, "the nexus failed on this request; see its log");
  }
}

void NexusImpl::serveClient(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                            wire::Decoded decoded) {
  auto b = decoded.envelope().getBody();
  switch (decoded.which()) {
    case Which::SUBMIT:
      onSubmit(routingId, key, requestId, std::make_shared<wire::Decoded>(std::move(decoded)));
      break;
    case Which::WATCH:
      onWatch(routingId, requestId, b.getWatch().getBatch());
      break;
    case Which::FETCH_RESULTS:
      onFetchResults(routingId, requestId, b.getFetchResults());
      break;
    case Which::STATUS_REQUEST:
      onStatus(routingId, requestId);
      break;
    case Which::NODES_REQUEST:
      onNodes(routingId, requestId, /*all=*/false);
      break;
    case Which::NODES_ALL_REQUEST:
      onNodes(routingId, requestId, /*all=*/true);
      break;
    case Which::TASK_REQUEST:
      onTask(routingId, requestId, b.getTaskRequest());
      break;
    case Which::TASK_AT_REQUEST:
      onTaskAt(routingId, requestId, b.getTaskAtRequest());
      break;
    case Which::BATCHES_REQUEST:
      onBatches(routingId, key, requestId, b.getBatchesRequest());
      break;
    case Which::CANCEL_BATCH:
      onCancel(routingId, key, requestId, b.getCancelBatch());
      break;
    case Which::BUNDLE_UPLOAD:
      onBundleUpload(routingId, key, requestId, b.getBundleUpload());
      break;
    case Which::BUNDLES_REQUEST:
      onBundles(routingId, requestId);
      break;
    case Which::RETRY:
      onRetry(routingId, key, requestId, b.getRetry());
      break;
    case Which::DRAIN_REQUEST:
      onDrain(routingId, key, requestId, b.getDrainRequest());
      break;
    default:
      counters_.add("unknown_messages");
      replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST,
                 "unknown request kind " + std::to_string(static_cast<unsigned>(decoded.which())) +
                     ": is this client newer than the nexus?");
  }
}

void NexusImpl::onSubmit(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                         std::shared_ptr<wire::Decoded> frame) {
  auto submit = frame->envelope().getBody().getSubmit();
  auto payloads = submit.getPayloads();
  auto bad = [&](proto::Error::Code code, const std::string& message) {
    counters_.add("submits_refused");
    replyError(routingId, requestId, code, message);
  };
  if (payloads.size() > kMaxTasksPerSubmit) {
    return bad(proto::Error::Code::TOO_LARGE, "at most " + std::to_string(kMaxTasksPerSubmit) + " tasks per message");
  }
  std::vector<std::string_view> views;
  views.reserve(payloads.size());
  // The index in the batch, as `mesh results` numbers its tasks (an append continues a batch).
  std::uint64_t base = 0;
  if (submit.getBatch() != 0) {
    if (const routing::Batch* open = scheduler_.batch(submit.getBatch())) base = open->total + open->pendingAdds;
  }
  for (auto p : payloads) {
    views.push_back(wire::view(p));
    if (views.back().size() > config_.maxPayloadBytes) {
      return bad(proto::Error::Code::TOO_LARGE,
                 "task " + std::to_string(base + views.size() - 1) + " has a payload of " +
                     std::to_string(views.back().size()) + " bytes, over the nexus limit of " +
                     std::to_string(config_.maxPayloadBytes) + " (--max-payload)");
    }
  }
  std::uint64_t unfinished = scheduler_.queuedTotal() + scheduler_.runningTotal() + pendingSubmitTasks_;
  if (unfinished + payloads.size() > config_.maxQueuedTasks) {
    return bad(proto::Error::Code::UNAVAILABLE, "the nexus holds " + std::to_string(unfinished) +
                                                    " unfinished tasks (limit " + std::to_string(config_.maxQueuedTasks) +
                                                    "): wait for some to finish and retry");
  }
  PendingSubmit ps;
  ps.routingId = routingId;
  ps.requestId = requestId;
  ps.count = payloads.size();
  ps.seal = submit.getSeal();
  ps.watch = submit.getWatch();
  routing::Batch* b = nullptr;
  if (submit.getBatch() == 0) {
    auto spec = submit.getSpec();
    std::string handler(wire::view(spec.getHandler()));
    if (!validName(handler, 128)) {
      return bad(proto::Error::Code::BAD_REQUEST, "handler name '" + handler +
                                                      "' is not valid: use letters, digits, '.', '_' and '-'");
    }
    routing::BatchSpec s;
    s.handler = handler;
    for (auto t : spec.getRequires()) {
      std::string tag(wire::view(t));
      if (!validName(tag, 64)) return bad(proto::Error::Code::BAD_REQUEST, "tag '" + tag + "' is not valid");
      s.requiredTags.push_back(tag);
    }
    if (auto refused = checkServable(handler, s.requiredTags, &ps.warning)) {
      return bad(refused->first, refused->second);
    }
    // Batches it waits for (protocol section 4.21). The count first: a hostile list is not walked.
    routing::Verdict waits;
    if (spec.hasAfter() || spec.hasAfterDone()) {
      std::size_t named = spec.getAfter().size() + spec.getAfterDone().size();
      if (named > 0 && waitingFor_.size() >= config_.maxWaitingBatches) {
        counters_.add("submits_after_refused");
        return bad(proto::Error::Code::UNAVAILABLE,
                   "the nexus holds " + std::to_string(waitingFor_.size()) + " batches waiting for others (its --max-waiting " +
                       "is " + std::to_string(config_.maxWaitingBatches) + "): submit more once some have started");
      }
      if (named > routing::kMaxAfter) {
        counters_.add("submits_after_refused");
        return bad(proto::Error::Code::BAD_REQUEST, "a batch waits for at most " + std::to_string(routing::kMaxAfter) +
                                                        " batches (--after and --after-done together), not " +
                                                        std::to_string(named));
      }
      for (auto id : spec.getAfter()) s.after.push_back(id);
      for (auto id : spec.getAfterDone()) s.afterDone.push_back(id);
      routing::normalizeDependencies(s.after, s.afterDone);
      if (auto refused = checkDependencies(s.after, s.afterDone, &waits)) {
        counters_.add("submits_after_refused");
        return bad(refused->first, refused->second);
      }
      ps.dependencies = static_cast<std::uint16_t>(s.after.size() + s.afterDone.size());
    }
    auto mr = spec.getMapreduce();
    if (mr.getStage() == proto::MapReduce::Stage::REDUCE) {
      return bad(proto::Error::Code::BAD_REQUEST, "a reduce stage is started by the nexus, not submitted");
    }
    if (mr.getStage() == proto::MapReduce::Stage::MAP) {
      std::string combiner(wire::view(mr.getCombiner())), reducer(wire::view(mr.getReducer()));
      if (mr.getPartitions() < 1 || mr.getPartitions() > 10000) {
        return bad(proto::Error::Code::BAD_REQUEST, "the number of reducers must be 1-10000");
      }
      if (!validName(reducer, 128) || (!combiner.empty() && !validName(combiner, 128))) {
        return bad(proto::Error::Code::BAD_REQUEST, "reducer and combiner names must be valid handler names");
      }
      for (const auto& h : {reducer, combiner}) {
        if (!h.empty() && !scheduler_.handlerOffered(h)) {
          return bad(proto::Error::Code::UNKNOWN_HANDLER, "no live spore offers handler '" + h + "'");
        }
      }
      s.mrStage = 1;
      s.mrPartitions = mr.getPartitions();
      s.mrCombiner = combiner;
      s.mrReducer = reducer;
      if (!combiner.empty()) s.alsoNeeds.push_back(combiner);
    }
    s.priority = spec.getPriority();
    s.timeoutMs = spec.getTimeoutMs();
    s.maxAttempts = spec.getMaxAttempts();
    s.label = std::string(wire::view(spec.getLabel())).substr(0, kLabelMax);
    s.clientKey = key;
    s.submittedMs = clock_.wallMs();
    ps.batch = nextBatchId_++;
    ps.newBatch = true;
    b = &scheduler_.addBatch(ps.batch, s);
    owners_[ps.batch] = key;
    current_->newBatches.push_back(batchRecord(ps.batch, b->spec, ps.seal, ps.count));
    if (waits.kind == routing::Verdict::Kind::kWait) {
      // Held from the start: its tasks join the scheduler's queue but never its turns.
      b->held = true;
      current_->newBatches.back().held = true;
      holdOn(ps.batch, waits);
      ps.warning = waitingLine(ps.batch) + (ps.warning.empty() ? "" : "; " + ps.warning);
      counters_.add("batches_held");
    }
    ps.firstIndex = 0;
    counters_.add("batches_submitted");
  } else {
    ps.batch = submit.getBatch();
    if (submit.hasSpec() && (submit.getSpec().hasAfter() || submit.getSpec().hasAfterDone())) {
      counters_.add("submits_after_refused");
      return bad(proto::Error::Code::BAD_REQUEST, "--after and --after-done go with a batch's first chunk (Submit.batch 0), "
                                                  "not with tasks appended to batch " + std::to_string(ps.batch));
    }
    b = scheduler_.batch(ps.batch);
    auto owner = owners_.find(ps.batch);
    if (!b || owner == owners_.end()) return bad(proto::Error::Code::NOT_FOUND, "no open batch " + std::to_string(ps.batch));
    if (owner->second != key) return bad(proto::Error::Code::FORBIDDEN, "batch " + std::to_string(ps.batch) + " belongs to another client");
    if (b->sealed || b->sealPending || b->cancelled) {
      return bad(proto::Error::Code::BAD_REQUEST, "batch " + std::to_string(ps.batch) + " is sealed or cancelled: no tasks can be added");
    }
    ps.firstIndex = b->total + b->pendingAdds;
    store::BatchUpdate u;
    u.batch = ps.batch;
    u.total = ps.firstIndex + ps.count;
    u.sealed = ps.seal;
    current_->updates.push_back(u);
  }
  ps.firstId = nextTaskId_;
  nextTaskId_ += ps.count;
  ps.early = ps.newBatch && ps.seal && !b->held && b->spec.mrStage == 0 && ps.count > 0 && ps.count <= kEarlyDispatchMax &&
             ps.firstId + ps.count - 1 <= durableTaskIdMax_ + kEarlyIdWindow;
  if (ps.early) {
    // Runs while the submit is committed. The writer commits in order, so no result of these
    // tasks can be stored before them; the ack still waits for the commit.
    for (std::uint32_t i = 0; i < ps.count; ++i) scheduler_.addTask(*b, ps.firstId + i, i, std::string(views[i]));
    b->total = ps.count;
    scheduler_.seal(*b, ps.count);
    counters_.add("tasks_dispatched_early", ps.count);
    if (holdSinceUs_ < 0) {
      holdSinceUs_ = clock_.monotonicUs();
      counters_.add("commit_holds");
    }
    // Its watcher is registered with the ack; its results may come before that.
    if (ps.watch) inline_.try_emplace(ps.batch);
  } else {
    if (ps.seal) b->sealPending = true;
    b->pendingAdds += ps.count;
  }
  if (ps.count > 0) {
    store::TaskChunk chunk;
    chunk.batch = ps.batch;
    chunk.firstId = ps.firstId;
    chunk.firstIndex = ps.firstIndex;
    chunk.payloads = views;
    chunk.keepAlive = frame;
    current_->chunks.push_back(std::move(chunk));
  }
  ps.payloads = std::move(views);
  ps.frame = std::move(frame);
  if (!ps.early) pendingSubmitTasks_ += ps.count;  // early ones count as queued already
  currentInfo_.submitTasks += ps.count;
  currentInfo_.submits.push_back(std::move(ps));
}

std::optional<std::pair<proto::Error::Code, std::string>> NexusImpl::checkServable(
    const std::string& handler, const std::vector<std::string>& tags, std::string* warning) {
  if (!scheduler_.handlerOffered(handler)) {
    std::set<std::string> offered;
    for (const auto& [id, n] : scheduler_.nodes()) offered.insert(n.info.handlers.begin(), n.info.handlers.end());
    std::string list;
    for (const auto& h : offered) list += (list.empty() ? "" : ", ") + h;
    return std::make_pair(proto::Error::Code::UNKNOWN_HANDLER,
                          scheduler_.nodes().empty()
                              ? "no spore is connected, so no handler '" + handler + "' is offered: start a spore first"
                              : "no live spore offers handler '" + handler + "' (offered: " + list + ")");
  }
  if (!tags.empty()) {
    // Unlike an unknown handler this is allowed (a tagged spore may join later), but a batch
    // no live spore can run must not wait in silence: the ack says so.
    bool served = false;
    for (const auto& [id, n] : scheduler_.nodes()) {
      served = served || (n.info.handlers.count(handler) &&
                          std::all_of(tags.begin(), tags.end(), [&](const std::string& t) { return n.info.tags.count(t) > 0; }));
    }
    if (!served) {
      std::string want;
      for (const auto& t : tags) want += (want.empty() ? "" : ",") + t;
      *warning = "no live spore that offers handler '" + handler + "' has the tags " + want +
                 ": its tasks wait until one joins (a spore gets tags with --tags; see mesh nodes)";
      counters_.add("submits_unservable");
      return std::nullopt;
    }
  }
  // Every spore that could run it is drained (`mesh nodes drain`): allowed, but said.
  bool undrained = false, any = false;
  for (const auto& [id, n] : scheduler_.nodes()) {
    if (!n.info.handlers.count(handler) ||
        !std::all_of(tags.begin(), tags.end(), [&](const std::string& t) { return n.info.tags.count(t) > 0; })) {
      continue;
    }
    any = true;
    undrained = undrained || !n.drained;
  }
  if (any && !undrained) {
    *warning = "every live spore that can run handler '" + handler +
               "' is drained: its tasks wait until one is undrained (mesh nodes undrain NAME) or another joins";
  }
  return std::nullopt;
}

void NexusImpl::fillProgress(proto::Progress::Builder out, std::uint64_t batchId, const routing::Progress& p) {
  out.setBatch(batchId);
  out.setTotal(p.total);
  out.setSealed(p.sealed);
  out.setQueued(p.queued);
  out.setRunning(p.running);
  out.setSucceeded(p.succeeded);
  out.setFailed(p.failed);
  out.setCancelled(p.cancelled);
  out.setFinished(p.finished);
  out.setBatchCancelled(p.batchCancelled);
  // Only map-reduce stages get a next batch or a note; a batch still in memory needs no read.
  const routing::Batch* b = scheduler_.batch(batchId);
  auto link = jobLinks_.find(batchId);
  bool linked = link != jobLinks_.end();
  if (linked) {
    out.setNextBatch(link->second.next);
    out.setNote(link->second.note);
  }
  if (b) {
    out.setStage(b->spec.mrStage);
    fillWaits(out, b->spec.after, b->spec.afterDone);
    if (b->held) {
      out.setWaiting(true);
      if (auto it = waitingFor_.find(batchId); it != waitingFor_.end()) fillIds(out.initWaitingFor(static_cast<unsigned>(it->second.size())), it->second);
    }
    if (!linked && !b->cancelWhy.empty()) out.setNote(b->cancelWhy);  // cancelled by a dependency
    if (linked || !p.finished || b->spec.mrStage == 0) return;
  }
  auto rec = readStore_->batch(batchId);
  if (!rec || !*rec) return;
  out.setStage((*rec)->mrStage);
  if (!b) fillWaits(out, (*rec)->after, (*rec)->afterDone);
  if ((*rec)->expiredMs) {
    out.setExpiredMs(*(*rec)->expiredMs);
    out.setExpiry(expiryLine(**rec));
  }
  if (!linked && p.finished) {
    out.setNextBatch((*rec)->nextBatch.value_or(0));
    out.setNote((*rec)->note);
  }
}

void NexusImpl::fillStoredProgress(proto::Progress::Builder out, const store::BatchRecord& rec) {
  out.setBatch(rec.id);
  out.setTotal(rec.total);
  out.setSealed(rec.sealed);
  out.setSucceeded(rec.keptSucceeded);
  out.setFailed(rec.keptFailed);
  out.setCancelled(rec.keptCancelled);
  out.setFinished(rec.finishedMs.has_value());
  out.setBatchCancelled(rec.cancelledMs.has_value());
  out.setStage(rec.mrStage);
  out.setNextBatch(rec.nextBatch.value_or(0));
  out.setNote(rec.note);
  out.setExpiredMs(rec.expiredMs.value_or(0));
  fillWaits(out, rec.after, rec.afterDone);
  out.setWaiting(rec.held && !rec.finishedMs && !rec.cancelledMs);
}

NexusImpl::BatchEnd NexusImpl::batchEnd(std::uint64_t batchId) {
  if (routing::Batch* b = scheduler_.batch(batchId)) {
    // As progressOf says: a map stage is finished once its reduce stage is linked.
    bool finished = !(b->spec.mrStage == 1 && !reduceLinked(batchId)) && scheduler_.progress(*b).finished;
    return {finished, b->cancelled};
  }
  auto rec = readStore_->batch(batchId);  // one row, not the count progressOf makes
  if (!rec || !*rec) return {};
  auto link = jobLinks_.find(batchId);
  bool pending = link != jobLinks_.end() && link->second.pending;
  return {(*rec)->finishedMs.has_value() && !pending, (*rec)->cancelledMs.has_value()};
}

std::optional<routing::Progress> NexusImpl::progressOf(std::uint64_t batchId) {
  if (routing::Batch* b = scheduler_.batch(batchId)) {
    routing::Progress p = scheduler_.progress(*b);
    // A map stage is finished for its client only once the reduce stage is linked (or the
    // reason it is not), so that `finished` always comes with nextBatch or a note.
    if (b->spec.mrStage == 1 && !reduceLinked(batchId)) p.finished = false;
    return p;
  }
  // The row and the counts from one snapshot: an expired batch's are its kept (final) counts,
  // however far the writer got in removing its rows.
  auto read = readStore_->progress(batchId);
  if (!read) {
    MESH_ERROR("reading batch %llu failed: %s", static_cast<unsigned long long>(batchId), read.error().message.c_str());
    return std::nullopt;
  }
  if (!*read) return std::nullopt;
  const store::BatchProgress& bp = **read;
  routing::Progress p;
  p.total = bp.record.total;
  p.sealed = bp.record.sealed;
  p.succeeded = bp.counts.succeeded;
  p.failed = bp.counts.failed;
  p.cancelled = bp.counts.cancelled;
  // A map stage whose reduce stage is not stored yet (its commit, or a retry, is pending).
  p.finished = bp.record.finishedMs.has_value() && (bp.record.mrStage != 1 || !jobLinks_.count(batchId) ||
                                                    reduceLinked(batchId));
  p.batchCancelled = bp.record.cancelledMs.has_value();
  return p;
}

std::string NexusImpl::expiryLine(const store::BatchRecord& rec) const {
  auto iso = [](std::int64_t ms) {
    time_t secs = static_cast<time_t>(ms / 1000);
    tm utc{};
    gmtime_r(&secs, &utc);
    char buf[96];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02dZ", utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday,
                  utc.tm_hour, utc.tm_min, utc.tm_sec);
    return std::string(buf);
  };
  // Keeping everything now (0), this nexus did not remove them: an earlier run with a keep did.
  std::string keep = config_.keepFinishedMs > 0
                         ? "the nexus keeps finished batches for --keep-finished " + config_.keepFinishedText
                         : "by an earlier run of the nexus; it now keeps everything, --keep-finished 0";
  return "batch " + std::to_string(rec.id) + " finished at " + iso(rec.finishedMs.value_or(0)) +
         "; its tasks and results were removed at " + iso(rec.expiredMs.value_or(0)) + " (" + keep + ")";
}

void NexusImpl::onWatch(const std::string& routingId, std::uint64_t requestId, std::uint64_t batch) {
  counters_.add("watch_requests");
  auto p = progressOf(batch);
  if (!p) {
    replyError(routingId, requestId, proto::Error::Code::NOT_FOUND, "no batch " + std::to_string(batch));
    return;
  }
  wire::Encoder e(requestId, 64);
  fillProgress(e.body().initProgress(), batch, *p);
  sendTo(clientSocket_, routingId, e.finish());
  if (!p->finished) {
    auto& list = watchers_[batch];
    for (auto& w : list) {
      if (w.routingId == routingId) {
        w.requestId = requestId;
        return;
      }
    }
    list.push_back({routingId, requestId});
  }
}

void NexusImpl::sendProgress(std::uint64_t batch, bool final) {
  auto it = watchers_.find(batch);
  if (it == watchers_.end()) return;
  auto p = progressOf(batch);
  if (!p) return;
  auto held = p->finished ? inline_.find(batch) : inline_.end();
  std::size_t words = 64;
  if (held != inline_.end()) words += held->second.bytes / 8 + 8 * held->second.rows.size();
  for (auto w = it->second.begin(); w != it->second.end();) {
    wire::Encoder e(w->requestId, static_cast<unsigned>(words));
    auto out = e.body().initProgress();
    fillProgress(out, batch, *p);
    if (held != inline_.end()) fillInline(out, batch, p->total);
    if (!sendTo(clientSocket_, w->routingId, e.finish())) {
      w = it->second.erase(w);  // the client went away
    } else {
      ++w;
    }
  }
  if (final || p->finished || it->second.empty()) {
    watchers_.erase(it);
    dropInline(batch);
  }
}

void NexusImpl::keepInline(const routing::FinalResult& f) {
  InlineResults& in = inline_[f.batch];
  if (in.overflow) return;
  std::size_t add = f.output.size() + f.error.size() + f.node.size() + 32;
  // A retry batch's rows name the tasks they retry, which only the store knows: its client pages.
  const routing::Batch* batch = scheduler_.batch(f.batch);
  bool retry = batch && batch->spec.retryOf != 0;
  if (retry || in.rows.size() >= kInlineRowsMax || in.bytes + add > kInlineBatchBytes || inlineBytes_ + add > kInlineTotalBytes) {
    inlineBytes_ -= in.bytes;
    in.bytes = 0;
    in.overflow = true;
    std::vector<InlineRow>().swap(in.rows);
    return;
  }
  in.rows.push_back({f.task, f.index, static_cast<std::uint8_t>(f.status), f.attempts, f.output, f.error, f.node});
  in.bytes += add;
  inlineBytes_ += add;
}

void NexusImpl::dropInline(std::uint64_t batch) {
  auto it = inline_.find(batch);
  if (it == inline_.end()) return;
  inlineBytes_ -= it->second.bytes;
  inline_.erase(it);
}

// Every final result of the batch, in index order, when all of them were kept; else nothing.
void NexusImpl::fillInline(proto::Progress::Builder out, std::uint64_t batch, std::uint64_t total) {
  auto it = inline_.find(batch);
  if (it == inline_.end() || it->second.overflow || it->second.rows.size() != total) return;
  auto& rows = it->second.rows;
  std::sort(rows.begin(), rows.end(), [](const InlineRow& a, const InlineRow& b) { return a.index < b.index; });
  auto list = out.initResults(static_cast<unsigned>(rows.size()));
  for (unsigned i = 0; i < rows.size(); ++i) {
    auto r = list[i];
    r.setTask(rows[i].task);
    r.setIndex(rows[i].index);
    r.setStatus(static_cast<proto::TaskStatus>(rows[i].status));
    r.setOutput(wire::asData(rows[i].output));
    r.setError(rows[i].error);
    r.setAttempts(rows[i].attempts);
    r.setNode(rows[i].node);
  }
  counters_.add("results_with_finished");
}

void NexusImpl::onFetchResults(const std::string& routingId, std::uint64_t requestId, proto::FetchResults::Reader req) {
  counters_.add("result_pages");
  std::uint32_t limit = std::clamp<std::uint32_t>(req.getLimit(), 1, kResultPageMax);
  // Asked before the rows are read: a batch finished by then has every result committed.
  BatchEnd end = batchEnd(req.getBatch());
  auto rows = readStore_->resultsPage(req.getBatch(), req.getFromIndex(), static_cast<int>(limit));
  if (!rows) {
    MESH_ERROR("reading results failed: %s", rows.error().message.c_str());
    replyError(routingId, requestId, proto::Error::Code::INTERNAL, "reading results failed; see the nexus log");
    return;
  }
  if (!scheduler_.batch(req.getBatch())) {
    // Read after the rows: a batch is marked expired in the transaction that starts removing
    // its rows, so unless it is marked now, the rows read were all there.
    auto rec = readStore_->batch(req.getBatch());
    if (rec && *rec && (*rec)->expiredMs) {
      counters_.add("expired_requests");
      replyError(routingId, requestId, proto::Error::Code::EXPIRED, expiryLine(**rec));
      return;
    }
  }
  if (rows->empty() && !progressOf(req.getBatch())) {
    replyError(routingId, requestId, proto::Error::Code::NOT_FOUND, "no batch " + std::to_string(req.getBatch()));
    return;
  }
  // Keep a page under the frame budget.
  std::size_t bytes = 0, n = 0;
  for (; n < rows->size(); ++n) {
    bytes += (*rows)[n].result.output.size() + (*rows)[n].result.error.size() + ((*rows)[n].retryOf ? 96 : 64);
    if (n > 0 && bytes > kResultPageBytes) break;
  }
  wire::Encoder e(requestId, static_cast<unsigned>(bytes / 8 + 256));
  auto page = e.body().initResultPage();
  page.setBatch(req.getBatch());
  auto list = page.initRows(static_cast<unsigned>(n));
  std::uint64_t next = req.getFromIndex();
  for (std::size_t i = 0; i < n; ++i) {
    const auto& r = (*rows)[i];
    auto out = list[static_cast<unsigned>(i)];
    out.setTask(r.task);
    out.setIndex(r.index);
    out.setStatus(static_cast<proto::TaskStatus>(r.result.status));
    out.setOutput(wire::asData(r.result.output));
    out.setError(r.result.error);
    out.setAttempts(r.result.attempts);
    out.setNode(r.result.node);
    if (r.retryOf) {
      auto from = out.initRetryOf();
      from.setBatch(r.retryOf->batch);
      from.setTask(r.retryOf->task);
      from.setIndex(r.retryOf->index);
    }
    next = r.index + 1;
  }
  page.setNextIndex(next);
  page.setEnd(n == rows->size() && rows->size() < limit);
  page.setFinished(end.finished);
  page.setBatchCancelled(end.cancelled);
  sendTo(clientSocket_, routingId, e.finish());
}

void NexusImpl::onStatus(const std::string& routingId, std::uint64_t requestId) {
  wire::Encoder e(requestId, 1024);
  auto s = e.body().initStatusReply();
  s.setNexusName(config_.name);
  s.setSoftwareVersion(kSoftwareVersion);
  s.setUptimeMs(static_cast<std::uint64_t>(clock_.monotonicMs() - startedMono_));
  std::uint32_t slots = 0;
  for (const auto& [id, n] : scheduler_.nodes()) slots += n.info.slots;
  s.setNodesAlive(static_cast<std::uint32_t>(scheduler_.nodes().size()));
  s.setSlotsTotal(slots);
  s.setQueued(scheduler_.queuedTotal());
  s.setRunning(scheduler_.runningTotal());
  // So that a client can keep to them: libzmq drops a message over the frame limit with its
  // connection, unanswered.
  s.setMaxPayloadBytes(config_.maxPayloadBytes);
  s.setMaxFrameBytes(config_.maxFrameBytes);
  // A spore or client waiting to be let in is visible from anywhere, not only on the nexus host.
  if (auto pending = keys_->list(store::KeyState::kPending)) s.setKeysPending(static_cast<std::uint32_t>(pending->size()));
  std::vector<std::uint64_t> shown;
  for (const auto& [id, b] : scheduler_.batches()) shown.push_back(id);
  auto recent = readStore_->recentBatches(5);
  if (recent) {
    for (const auto& r : *recent) {
      if (!scheduler_.batch(r.id)) shown.push_back(r.id);
    }
  }
  std::sort(shown.begin(), shown.end());
  auto list = s.initBatches(static_cast<unsigned>(shown.size()));
  for (unsigned i = 0; i < shown.size(); ++i) {
    auto out = list[i];
    out.setId(shown[i]);
    if (routing::Batch* b = scheduler_.batch(shown[i])) {
      out.setLabel(b->spec.label);
      out.setHandler(b->spec.handler);
      out.setPriority(b->spec.priority);
      out.setSubmittedMs(b->spec.submittedMs);
    } else if (recent) {
      for (const auto& r : *recent) {
        if (r.id != shown[i]) continue;
        out.setLabel(r.label);
        out.setHandler(r.handler);
        out.setPriority(r.priority);
        out.setSubmittedMs(r.submittedMs);
      }
    }
    if (auto p = progressOf(shown[i])) fillProgress(out.initProgress(), shown[i], *p);
  }
  std::map<std::string, std::uint64_t> counters = counters_.all();
  for (const auto& [k, v] : scheduler_.counters().all()) counters[k] += v;
  counters["zap_admitted"] = zap_->admitted();
  counters["zap_refused"] = zap_->refused();
  counters["zap_refusals_unrecorded"] = zapGate_->unrecorded();
  counters["write_queue"] = writer_->queued();
  auto checkpoints = writer_->checkpoints();
  counters["wal_checkpoints"] = checkpoints.done;
  counters["wal_checkpoints_in_line"] = checkpoints.inLine;
  counters["wal_checkpoints_finished_in_line"] = checkpoints.finished;
  counters["wal_checkpoint_errors"] = checkpoints.errors;
  counters["payload_segments_deleted"] = writer_->payloadSegmentsDeleted();
  auto expiry = writer_->expiry();
  counters["batches_expired"] = expiry.batches;
  counters["tasks_expired"] = expiry.tasks;
  counters["expiry_errors"] = expiry.errors;
  counters["tasks_in_memory"] = scheduler_.tasksInMemory();
  // The drained keys that may connect: a revoked key keeps its drain (were it accepted again),
  // but no spore of it can be given work, drained or not.
  std::uint64_t drainedNodes = 0;
  for (const auto& [k, since] : drained_) {
    auto role = accepted_.find(k);
    drainedNodes += role != accepted_.end() && role->second == store::Role::kNode ? 1 : 0;
  }
  counters["nodes_drained"] = drainedNodes;
  auto cl = s.initCounters(static_cast<unsigned>(counters.size()));
  unsigned i = 0;
  for (const auto& [k, v] : counters) {
    cl[i].setName(k);
    cl[i].setValue(v);
    ++i;
  }
  sendTo(clientSocket_, routingId, e.finish());
}

// `mesh nodes`: the connected spores by name; with `all` (`mesh nodes --all`), then every
// accepted node key with no spore connected (alive false: offline), by fingerprint. Only a
// client that asks gets those rows: an older one would list them as connected spores.
void NexusImpl::onNodes(const std::string& routingId, std::uint64_t requestId, bool all) {
  std::vector<const NodeConn*> sorted;
  std::unordered_set<std::string> connected;
  for (const auto& [rid, c] : conns_) {
    sorted.push_back(&c);
    connected.insert(c.key);
  }
  std::vector<std::pair<std::string, std::string>> offline;  // fingerprint, key
  for (const auto& [k, role] : accepted_) {
    if (all && role == store::Role::kNode && !connected.count(k)) offline.emplace_back(fingerprintOf(k), k);
  }
  std::sort(offline.begin(), offline.end());
  // An entry for a key that is connected again or no longer accepted is of no more use.
  for (auto g = goneNodes_.begin(); g != goneNodes_.end();) {
    auto a = accepted_.find(g->first);
    g = connected.count(g->first) || a == accepted_.end() || a->second != store::Role::kNode ? goneNodes_.erase(g)
                                                                                              : std::next(g);
  }
  wire::Encoder e(requestId, 1024);
  auto list = e.body().initNodesReply().initNodes(static_cast<unsigned>(conns_.size() + offline.size()));
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name || (a->name == b->name && a->id < b->id); });
  std::int64_t now = clock_.monotonicMs();
  for (unsigned i = 0; i < sorted.size(); ++i) {
    const NodeConn& c = *sorted[i];
    auto out = list[i];
    out.setKey(c.key);
    out.setFingerprint(c.fingerprint);
    out.setName(c.name);
    out.setAddress(c.address);
    out.setFoundBy(c.foundBy);
    out.setSoftwareVersion(c.softwareVersion);
    auto tags = out.initTags(static_cast<unsigned>(c.tags.size()));
    for (unsigned t = 0; t < c.tags.size(); ++t) tags.set(t, c.tags[t]);
    auto handlers = out.initHandlers(static_cast<unsigned>(c.handlers.size()));
    for (unsigned h = 0; h < c.handlers.size(); ++h) handlers.set(h, c.handlers[h]);
    out.setSlots(c.slots);
    out.setConnectedMs(c.connectedWallMs);
    out.setLastBeatMsAgo(static_cast<std::uint64_t>(std::max<std::int64_t>(0, now - c.lastSeenMono)));
    out.setAlive(true);
    if (routing::Node* n = scheduler_.node(c.id)) {
      out.setInFlight(n->inFlight);
      out.setCpuPct(static_cast<float>(n->cpuPct));
      out.setMemPct(static_cast<float>(n->memPct));
      out.setScore(static_cast<float>(scheduler_.score(*n)));
      out.setTasksDone(n->done);
      out.setLeaving(n->leaving);
      out.setDrained(n->drained);
    }
  }
  const std::int64_t nowWall = clock_.wallMs();
  for (unsigned i = 0; i < offline.size(); ++i) {
    auto out = list[static_cast<unsigned>(sorted.size()) + i];
    const std::string& key = offline[i].second;
    out.setKey(key);
    out.setFingerprint(offline[i].first);
    if (auto g = goneNodes_.find(key); g != goneNodes_.end()) {
      out.setName(g->second.name);
      out.setAddress(g->second.address);
      out.setLastBeatMsAgo(static_cast<std::uint64_t>(std::max<std::int64_t>(0, nowWall - g->second.goneWallMs)));
    }
    out.setAlive(false);
    out.setDrained(drained_.count(key) > 0);
  }
  sendTo(clientSocket_, routingId, e.finish());
}

// `mesh batches`: a page of the stored batches, newest first (protocol section 4.19). The rows
// come from the read-only store, a bounded range of ids per request (kBatchesScanIds), never a
// task or result row: a finished batch's counts are the ones stored with its end. A batch the
// scheduler holds (every unfinished one) shows its live progress, as in `mesh status`. Any
// client or admin key may list every batch, as `mesh status` shows them all; `mine` narrows it.
void NexusImpl::onBatches(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                          proto::BatchesRequest::Reader req) {
  auto bad = [&](const std::string& message) {
    counters_.add("batches_requests_refused");
    replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST, message);
  };
  if (req.getLimit() < 1 || req.getLimit() > kBatchesPageMax) {
    return bad("a batch listing takes a limit of 1-" + std::to_string(kBatchesPageMax) + " batches, not " +
               std::to_string(req.getLimit()));
  }
  using State = store::BatchFilter::State;
  using Asked = proto::BatchesRequest::BatchState;
  store::BatchFilter filter;
  switch (req.getState()) {
    case Asked::ALL: filter.state = State::kAll; break;
    case Asked::OPEN: filter.state = State::kOpen; break;
    case Asked::RUNNING: filter.state = State::kRunning; break;
    case Asked::CANCELLING: filter.state = State::kCancelling; break;
    case Asked::FINISHED: filter.state = State::kFinished; break;
    case Asked::CANCELLED: filter.state = State::kCancelled; break;
    case Asked::EXPIRED: filter.state = State::kExpired; break;
    case Asked::WAITING: filter.state = State::kWaiting; break;
    default:
      return bad("unknown batch state " + std::to_string(static_cast<unsigned>(req.getState())) +
                 ": is this client newer than the nexus?");
  }
  if (req.getByLabel()) {
    std::string_view label = wire::view(req.getLabel());
    if (label.size() > kLabelMax) {
      return bad("a label is at most " + std::to_string(kLabelMax) + " bytes, not " + std::to_string(label.size()));
    }
    filter.label = std::string(label);
  }
  if (req.getMine()) filter.clientKey = key;
  filter.failedOnly = req.getFailedOnly();
  counters_.add("batches_requests");
  auto page = readStore_->listBatches(filter, req.getBefore(), req.getLimit(), kBatchesScanIds);
  if (!page) {
    MESH_ERROR("listing batches failed: %s", page.error().message.c_str());
    replyError(routingId, requestId, proto::Error::Code::INTERNAL, "listing batches failed; see the nexus log");
    return;
  }
  std::size_t words = 64;
  for (const auto& r : page->batches) words += 48 + (r.label.size() + r.handler.size() + r.note.size()) / 8;
  wire::Encoder e(requestId, static_cast<unsigned>(words));
  auto reply = e.body().initBatchesReply();
  reply.setNextBefore(page->nextBefore);
  auto list = reply.initBatches(static_cast<unsigned>(page->batches.size()));
  for (unsigned i = 0; i < page->batches.size(); ++i) {
    const store::BatchRecord& rec = page->batches[i];
    auto out = list[i];
    out.setId(rec.id);
    out.setLabel(rec.label);
    out.setHandler(rec.handler);
    out.setPriority(rec.priority);
    out.setSubmittedMs(rec.submittedMs);
    out.setFinishedMs(rec.finishedMs.value_or(0));
    out.setRetryOf(rec.retryOf.value_or(0));
    out.setOwner(rec.clientKey.empty() ? std::string() : fingerprintOf(rec.clientKey));
    std::optional<routing::Progress> live;
    if (scheduler_.batch(rec.id)) live = progressOf(rec.id);
    if (live) fillProgress(out.initProgress(), rec.id, *live);
    else fillStoredProgress(out.initProgress(), rec);
  }
  sendTo(clientSocket_, routingId, e.finish());
}

// `mesh nodes drain|undrain NODE` (admin): NODE is a connected spore's name, or the fingerprint
// (at least 4 hex digits) or z85 key of an accepted node key, connected or not. The state is
// stored by the key first (keys.drained_ms), then applied: a drained spore is given nothing and
// what it holds is recalled now (it hands back what it has not started).
void NexusImpl::onDrain(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                        proto::DrainRequest::Reader req) {
  const bool drain = req.getDrain();
  const char* verb = drain ? "drain" : "undrain";
  auto role = roleOf(key);
  if (!role || *role != store::Role::kAdmin) {
    counters_.add("drains_forbidden");
    replyError(routingId, requestId, proto::Error::Code::FORBIDDEN,
               std::string(drain ? "draining" : "undraining") + " a spore needs an admin key (mesh keys accept FP --role admin)");
    return;
  }
  std::string text(wire::view(req.getNode()));
  if (text.empty() || text.size() > 128) {
    replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST,
               "name the spore to " + std::string(verb) + " by its name or fingerprint (`mesh nodes` lists them)");
    return;
  }
  // A node key by whole key, whole fingerprint or fingerprint prefix, and a connected spore by
  // name. A name is the spore's own word, so it never wins over a key the text names exactly,
  // and a name that is also a prefix of another key's fingerprint is refused as ambiguous.
  const std::string want = crypto::normalizeFingerprint(text);
  std::vector<std::string> byKey;
  bool exact = false;
  auto matchKey = [&](const std::string& k) {
    const std::string fp = crypto::normalizeFingerprint(fingerprintOf(k));
    if (k == text || fp == want) {
      if (!exact) byKey.clear();
      exact = true;
      byKey.push_back(k);
    } else if (!exact && want.size() >= 4 && fp.rfind(want, 0) == 0) {
      byKey.push_back(k);
    }
  };
  for (const auto& [k, r] : accepted_) {
    if (r == store::Role::kNode) matchKey(k);
  }
  // A drained key no longer accepted (revoked since) can still be undrained.
  if (!drain) {
    for (const auto& [k, since] : drained_) {
      if (!accepted_.count(k)) matchKey(k);
    }
  }
  std::vector<std::string> byName;
  if (!exact) {
    for (const auto& [rid, c] : conns_) {
      if (c.name == text && std::find(byName.begin(), byName.end(), c.key) == byName.end()) byName.push_back(c.key);
    }
  }
  if (byName.size() > 1) {
    replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST,
               std::to_string(byName.size()) + " spores are named '" + bundle::printable(text, 128) +
                   "': give the fingerprint of one (`mesh nodes` lists them)");
    return;
  }
  if (byName.size() == 1 && !byKey.empty() && (byKey.size() > 1 || byKey[0] != byName[0])) {
    counters_.add("drains_ambiguous");
    replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST,
               "'" + bundle::printable(text, 128) + "' is the name of spore " + fingerprintOf(byName[0]) +
                   " and the start of another node key's fingerprint: give that spore's whole fingerprint");
    return;
  }
  if (byName.empty() && byKey.size() > 1) {
    replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST,
               "'" + bundle::printable(text, 128) + "' matches " + std::to_string(byKey.size()) +
                   " node keys: give more digits of the fingerprint");
    return;
  }
  if (byName.empty() && byKey.empty()) {
    replyError(routingId, requestId, proto::Error::Code::NOT_FOUND,
               "no connected spore is named '" + bundle::printable(text, 128) +
                   "' and no accepted node key has that fingerprint: see `mesh nodes` and `mesh keys list`");
    return;
  }
  const std::string target = byName.empty() ? byKey[0] : byName[0];
  const std::int64_t now = clock_.wallMs();
  const bool was = drained_.count(target) > 0;
  if (was != drain) {
    // Stored by the writer with the next group commit (never from this loop, which would wait
    // for the writer's lock behind a commit of up to a million tasks); the ack goes once it is
    // durable. It takes effect here at once.
    current_->drains.push_back({target, drain ? std::optional<std::int64_t>(now) : std::nullopt});
    if (drain) {
      drained_[target] = now;
    } else {
      drained_.erase(target);
    }
    counters_.add(drain ? "drains" : "undrains");
  }
  const NodeConn* conn = nullptr;
  for (const auto& [rid, c] : conns_) {
    if (c.key == target) conn = &c;
  }
  std::uint32_t inFlight = 0;
  std::size_t recalled = 0;
  if (conn) {
    scheduler_.setDrained(conn->id, drain);
    if (drain) {
      auto r = scheduler_.recallDrained(conn->id, clock_.monotonicMs());
      recalled = r.tasks.size();
      sendRecall(r);
    }
    if (const routing::Node* n = scheduler_.node(conn->id)) inFlight = n->inFlight;
  }
  std::string who = conn ? conn->name + " (" + conn->fingerprint + ")" : fingerprintOf(target) + " (not connected)";
  if (was != drain) {
    MESH_INFO("node %s %s by %s: %s", who.c_str(), drain ? "drained" : "undrained", fingerprintOf(key).c_str(),
              drain ? "it is given no task; what it has not started comes back, its running tasks finish there"
                    : "it is given tasks again");
  }
  wire::Encoder e(requestId, 64);
  auto ack = e.body().initDrainAck();
  ack.setName(conn ? conn->name : "");
  ack.setFingerprint(fingerprintOf(target));
  ack.setDrained(drain);
  ack.setChanged(was != drain);
  ack.setConnected(conn != nullptr);
  ack.setInFlight(inFlight);
  ack.setRecalled(static_cast<std::uint32_t>(recalled));
  if (was == drain) {
    sendTo(clientSocket_, routingId, e.finish());  // nothing to store
    return;
  }
  currentInfo_.replies.emplace_back(routingId, e.finish());
}

// `mesh task BATCH:INDEX`: the task's id from the store, then as onTask; when there is none,
// why (no such batch, an index past its end, or its rows were removed).
void NexusImpl::onTaskAt(const std::string& routingId, std::uint64_t requestId, proto::TaskRef::Reader at) {
  auto id = readStore_->taskAt(at.getBatch(), at.getIndex());
  if (!id) {
    replyError(routingId, requestId, proto::Error::Code::INTERNAL, "reading the task failed; see the nexus log");
    return;
  }
  if (*id) {
    onTask(routingId, requestId, **id);
    return;
  }
  auto batch = readStore_->batch(at.getBatch());
  if (batch && *batch && (*batch)->expiredMs) {
    counters_.add("expired_requests");
    replyError(routingId, requestId, proto::Error::Code::EXPIRED,
               "task " + std::to_string(at.getBatch()) + ":" + std::to_string(at.getIndex()) + " was in " +
                   expiryLine(**batch));
  } else if (batch && *batch) {
    replyError(routingId, requestId, proto::Error::Code::NOT_FOUND,
               "batch " + std::to_string(at.getBatch()) + " has no task " + std::to_string(at.getIndex()) +
                   " (its indexes are 0 to " + std::to_string((*batch)->total ? (*batch)->total - 1 : 0) + ")");
  } else {
    replyError(routingId, requestId, proto::Error::Code::NOT_FOUND, "no batch " + std::to_string(at.getBatch()));
  }
}

void NexusImpl::onTask(const std::string& routingId, std::uint64_t requestId, std::uint64_t taskId) {
  auto row = readStore_->task(taskId);
  if (!row) {
    replyError(routingId, requestId, proto::Error::Code::INTERNAL, "reading the task failed; see the nexus log");
    return;
  }
  if (!*row) {
    auto expired = readStore_->expiredBatchOfTask(taskId);
    if (expired && *expired) {
      counters_.add("expired_requests");
      replyError(routingId, requestId, proto::Error::Code::EXPIRED,
                 "task " + std::to_string(taskId) + " was in " + expiryLine(**expired));
      return;
    }
    replyError(routingId, requestId, proto::Error::Code::NOT_FOUND,
               "no task " + std::to_string(taskId) +
                   " (task ids run across batches, not from 1 in each: `mesh results BATCH --json` shows them)");
    return;
  }
  const store::TaskRow& t = **row;
  if (t.batchRecord.expiredMs) {
    // Its batch is being removed (this row goes in one of the next steps): the same answer as
    // for a task whose row is gone already.
    counters_.add("expired_requests");
    replyError(routingId, requestId, proto::Error::Code::EXPIRED,
               "task " + std::to_string(taskId) + " was in " + expiryLine(t.batchRecord));
    return;
  }
  const routing::Task* live = scheduler_.task(taskId);
  wire::Encoder e(requestId, 512);
  auto info = e.body().initTaskReply();
  info.setId(t.id);
  info.setBatch(t.batch);
  info.setIndex(t.index);
  info.setHandler(t.batchRecord.handler);
  info.setPriority(t.batchRecord.priority);
  auto req = info.initRequires(static_cast<unsigned>(t.batchRecord.requiredTags.size()));
  for (unsigned i = 0; i < t.batchRecord.requiredTags.size(); ++i) req.set(i, t.batchRecord.requiredTags[i]);
  info.setSubmittedMs(t.batchRecord.submittedMs);
  fillWaits(info, t.batchRecord.after, t.batchRecord.afterDone);
  if (t.retryOf) {
    auto from = info.initRetryOf();
    from.setBatch(t.retryOf->batch);
    from.setTask(t.retryOf->task);
    from.setIndex(t.retryOf->index);
  }
  std::size_t extra = (live && live->state == routing::Task::State::kRunning) ? 1 : 0;
  // The final result is an attempt of its own only if an attempt produced it: not for a task
  // that never ran (cancelled while queued, payload lost), nor for one cancelled while it
  // waited to retry (its last attempt is in `attempts` already). Those show no attempt that
  // was never made, with a node and times of 0; the end is in state, error and finishedMs.
  bool finalRan = t.result && t.result->attempts > 0 &&
                  !(t.result->status == static_cast<std::uint8_t>(routing::Status::kCancelled) && t.result->node.empty());
  std::size_t final = finalRan ? 1 : 0;
  auto attempts = info.initAttempts(static_cast<unsigned>(t.attempts.size() + extra + final));
  unsigned i = 0;
  for (const auto& a : t.attempts) {
    auto out = attempts[i++];
    out.setNumber(a.attempt);
    out.setNode(a.node);
    out.setAssignedMs(a.assignedMs);
    out.setStartedMs(a.startedMs);
    out.setEndedMs(a.endedMs);
    out.setOutcome(a.outcome);
    out.setError(a.error);
    if (!a.bundle.empty()) {
      out.setBundle(a.bundle);
      out.setBundleVersion(a.bundleVersion);
    }
  }
  if (t.result) {
    if (finalRan) {
      auto out = attempts[i++];
      out.setNumber(t.result->attempts);
      out.setNode(t.result->node);
      out.setAssignedMs(t.result->assignedMs);
      out.setStartedMs(t.result->startedMs);
      out.setEndedMs(t.result->finishedMs);
      out.setOutcome(routing::statusName(static_cast<routing::Status>(t.result->status)));
      out.setError(t.result->error);
      if (!t.result->bundle.empty()) {
        out.setBundle(t.result->bundle);
        out.setBundleVersion(t.result->bundleVersion);
      }
    }
    info.setState(routing::statusName(static_cast<routing::Status>(t.result->status)));
    info.setOutput(wire::asData(t.result->output));
    info.setError(t.result->error);
    info.setFinishedMs(t.result->finishedMs);
  } else if (live) {
    if (live->state == routing::Task::State::kRunning) {
      auto out = attempts[i++];
      out.setNumber(live->attempts);
      auto r = nodeRoute_.find(live->node);
      std::string node = "?";
      if (r != nodeRoute_.end()) {
        if (auto c = conns_.find(r->second); c != conns_.end()) node = c->second.name;
      }
      out.setNode(node);
      out.setAssignedMs(live->assignedWallMs);
      out.setStartedMs(scheduler_.startedOf(live->id));  // 0 until its spore's next heartbeat
      out.setOutcome("running");
      info.setState("running");
    } else {
      info.setState(live->state == routing::Task::State::kWaiting ? "waiting" : "queued");
      std::string held = live->batch->held ? waitingLine(live->batch->id) : std::string();
      info.setWhy(!held.empty() ? held : scheduler_.whyWaiting(*live, clock_.monotonicMs()));
    }
  } else {
    info.setState("finishing");
    info.setWhy("its result is being written");
  }
  sendTo(clientSocket_, routingId, e.finish());
}

void NexusImpl::onCancel(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                         std::uint64_t batchId) {
  routing::Batch* b = scheduler_.batch(batchId);
  auto role = roleOf(key);
  auto mayCancel = [&](const std::string& ownerKey) {
    if (ownerKey.empty() || ownerKey == key || (role && *role == store::Role::kAdmin)) return true;
    replyError(routingId, requestId, proto::Error::Code::FORBIDDEN,
               "batch " + std::to_string(batchId) + " belongs to another client (an admin key can cancel it)");
    return false;
  };
  auto finishedAlready = [&](const std::string& what) {
    replyError(routingId, requestId, proto::Error::Code::ALREADY_FINISHED,
               "batch " + std::to_string(batchId) + " has finished already (" + what +
                   "): nothing was cancelled; its results stand (mesh results " + std::to_string(batchId) + ")");
  };
  if (!b) {
    // Not in memory: finished (every batch that is not is loaded at start), or unknown.
    auto rec = readStore_->batch(batchId);
    if (!rec) {
      replyError(routingId, requestId, proto::Error::Code::INTERNAL, "reading the batch failed; see the nexus log");
    } else if (!*rec) {
      replyError(routingId, requestId, proto::Error::Code::NOT_FOUND, "no batch " + std::to_string(batchId));
    } else if ((*rec)->cancelledMs) {
      // Cancelled already, and that is durable: a second cancel changes nothing and succeeds,
      // as it does while the batch is still in memory.
      if (!mayCancel((*rec)->clientKey)) return;
      wire::Encoder e(requestId, 32);
      auto ack = e.body().initCancelAck();
      ack.setBatch(batchId);
      ack.setCancelled(0);
      sendTo(clientSocket_, routingId, e.finish());
    } else {
      finishedAlready("every one of its " + std::to_string((*rec)->total) + " tasks has a result");
    }
    return;
  }
  auto owner = owners_.find(batchId);
  if (!mayCancel(owner == owners_.end() ? std::string() : owner->second)) return;
  if (!b->cancelled && !b->held && b->sealed && !b->sealPending && b->pendingAdds == 0 &&
      b->succeeded + b->failed + b->cancelledCount >= b->total) {
    // Sealed, and every task has its final result (some may still be being written): there is
    // nothing left to stop and nothing can be added, so the batch is complete, not cancelled.
    // Refused as for a batch whose end is committed, so that the answer does not depend on
    // whether the last commit came before the cancel.
    finishedAlready("every one of its " + std::to_string(b->total) + " tasks has a result");
    return;
  }
  std::uint64_t n = cancelLive(*b, "");
  MESH_INFO("batch %llu cancelled: %llu tasks will not run", static_cast<unsigned long long>(batchId),
            static_cast<unsigned long long>(n));
  // Acknowledged once the cancel is committed (onCommits), so that a nexus crash cannot undo a
  // cancel its client was told about.
  currentInfo_.cancels.push_back({routingId, requestId, batchId, n, {}});
}

// `mesh retry`: a new batch holding a copy of every failed task of a finished batch. The copy is
// made by the store writer inside the group commit (TaskChunk::retryOf), one payload in memory
// at a time; the ack follows the commit, as a Submit's does; the tasks then go to the scheduler
// in steps (loadRetries). Protocol section 4.17.
void NexusImpl::onRetry(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                        proto::Retry::Reader req) {
  const std::uint64_t original = req.getBatch();
  const std::string name = "batch " + std::to_string(original);
  auto bad = [&](proto::Error::Code code, const std::string& message) {
    counters_.add("retries_refused");
    replyError(routingId, requestId, code, message);
  };
  if (req.getPriority() < -1 || req.getPriority() > 255) {
    return bad(proto::Error::Code::BAD_REQUEST, "priority " + std::to_string(req.getPriority()) + " is not 0-255");
  }
  if (routing::Batch* b = scheduler_.batch(original)) {
    auto p = scheduler_.progress(*b);
    return bad(proto::Error::Code::NOT_FINISHED,
               name + " has not finished (" + std::to_string(p.succeeded + p.failed + p.cancelled) + " of " +
                   std::to_string(p.total) + " tasks ended" + (p.sealed ? "" : ", still open") +
                   "): wait for it first (mesh wait " + std::to_string(original) + "), then retry its failed tasks");
  }
  auto rec = original == 0 ? util::Result<std::optional<store::BatchRecord>>(std::optional<store::BatchRecord>())
                           : readStore_->batch(original);
  if (!rec) {
    MESH_ERROR("reading %s for a retry failed: %s", name.c_str(), rec.error().message.c_str());
    return bad(proto::Error::Code::INTERNAL, "reading the batch failed; see the nexus log");
  }
  if (!*rec) return bad(proto::Error::Code::NOT_FOUND, "no " + name);
  const store::BatchRecord& from = **rec;
  if (!from.finishedMs) {
    // Every unfinished batch is in memory; a row without it is being written: not finished yet.
    return bad(proto::Error::Code::NOT_FINISHED,
               name + " has not finished: wait for it first (mesh wait " + std::to_string(original) + ")");
  }
  if (from.expiredMs) {
    counters_.add("expired_requests");
    return bad(proto::Error::Code::EXPIRED, expiryLine(from) + ": its failed tasks cannot be retried");
  }
  if (from.mrStage != 0) {
    return bad(proto::Error::Code::BAD_REQUEST,
               name + " is the " + (from.mrStage == 1 ? "map" : "reduce") +
                   " stage of a map-reduce job, which is retried as a whole: submit the job again "
                   "(mesh mapreduce, or scripts/mapreduce.sh) once its cause is fixed");
  }
  auto role = roleOf(key);
  if (from.clientKey != key && !(role && *role == store::Role::kAdmin)) {
    return bad(proto::Error::Code::FORBIDDEN, name + " belongs to another client (an admin key can retry it)");
  }
  // Its final counts were stored with its end (schema 8): no result row is read on this loop.
  const std::uint64_t n = from.keptFailed;
  if (n == 0) {
    // Nothing to run again: no batch is made, and the ack says so (batch 0).
    counters_.add("retries_empty");
    wire::Encoder e(requestId, 32);
    auto ack = e.body().initRetryAck();
    ack.setRetried(original);
    sendTo(clientSocket_, routingId, e.finish());
    return;
  }
  if (n > kMaxTasksPerSubmit) {
    return bad(proto::Error::Code::TOO_LARGE, name + " has " + std::to_string(n) + " failed tasks, over the " +
                                                  std::to_string(kMaxTasksPerSubmit) + " a retry (like one Submit) takes");
  }
  std::uint64_t unfinished = scheduler_.queuedTotal() + scheduler_.runningTotal() + pendingSubmitTasks_;
  if (unfinished + n > config_.maxQueuedTasks) {
    return bad(proto::Error::Code::UNAVAILABLE, "the nexus holds " + std::to_string(unfinished) +
                                                    " unfinished tasks (limit " + std::to_string(config_.maxQueuedTasks) +
                                                    ") and " + name + " has " + std::to_string(n) +
                                                    " failed tasks: wait for some to finish and retry");
  }
  PendingSubmit ps;
  if (auto refused = checkServable(from.handler, from.requiredTags, &ps.warning)) {
    return bad(refused->first, refused->second + ": the retry needs it as its batch did");
  }
  routing::BatchSpec s;
  s.handler = from.handler;
  s.requiredTags = from.requiredTags;
  s.priority = req.getPriority() >= 0 ? static_cast<std::uint8_t>(req.getPriority()) : from.priority;
  s.timeoutMs = req.getTimeoutMs() != 0 ? req.getTimeoutMs() : from.timeoutMs;
  s.maxAttempts = req.getMaxAttempts() != 0 ? req.getMaxAttempts() : from.maxAttempts;
  std::string label(wire::view(req.getLabel()));
  if (label.empty()) label = from.label.empty() ? "retry of " + name : from.label + " (retry of " + name + ")";
  s.label = label.substr(0, kLabelMax);
  s.clientKey = key;
  s.submittedMs = clock_.wallMs();
  s.retryOf = original;
  ps.routingId = routingId;
  ps.requestId = requestId;
  ps.batch = nextBatchId_++;
  ps.newBatch = true;
  ps.seal = true;
  ps.watch = req.getWatch();
  ps.count = static_cast<std::uint32_t>(n);
  ps.firstId = nextTaskId_;
  ps.firstIndex = 0;
  ps.retryOf = original;
  nextTaskId_ += n;
  routing::Batch& b = scheduler_.addBatch(ps.batch, s);
  b.pendingAdds = n;
  b.sealPending = true;
  owners_[ps.batch] = key;
  current_->newBatches.push_back(batchRecord(ps.batch, b.spec, /*sealed=*/true, n));
  store::TaskChunk chunk;
  chunk.batch = ps.batch;
  chunk.firstId = ps.firstId;
  chunk.firstIndex = 0;
  chunk.retryOf = original;
  chunk.retryCount = n;
  current_->chunks.push_back(std::move(chunk));
  pendingSubmitTasks_ += n;
  currentInfo_.submitTasks += n;
  counters_.add("retries");
  MESH_INFO("batch %llu: a retry of the %llu failed tasks of batch %llu", static_cast<unsigned long long>(ps.batch),
            static_cast<unsigned long long>(n), static_cast<unsigned long long>(original));
  currentInfo_.submits.push_back(std::move(ps));
}

}  // namespace mesh::node
