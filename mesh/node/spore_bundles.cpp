// The spore's signed bundles: fetching, verifying and installing them, trials and rollbacks.
// See spore_impl.h.
#include "mesh/node/spore_impl.h"

namespace mesh::node {

// ---- bundles ---------------------------------------------------------------------------------
//
// The spore learns of bundles from Welcome, from the BundleList it asks for every 10 s and
// whenever a bundleAvailable hint arrives on PUB. It fetches one bundle at a time over its
// DEALER with kFetchWindow chunk requests outstanding, feeding a BundleReceiver whose spool
// (DATA_DIR/bundles/.incoming/NAME-VERSION) survives reconnects and restarts, then hands it to
// the bundle thread, which verifies and installs it (seconds for a bundle of many files: unpack
// and fsync of each file) while the loop goes on beating, running tasks and sending results.
// Rollbacks run on that thread too, in order with installs. The next fetch waits for the install.

util::Status SporeImpl::openBundles() {
  if (config_.trust.empty()) return {};
  for (const auto& f : config_.trust) {
    if (auto s = trusted_.addFile(f); !s) return util::err("--trust " + f + ": " + s.error().message, 2);
  }
  auto installer = bundle::Installer::open(config_.dataDir + "/bundles", clock_);
  if (!installer) return util::err("bundles: " + installer.error().message);
  installer_ = std::make_unique<bundle::Installer>(std::move(*installer));
  refreshBundleHandlers();
  std::string endpoint = "inproc://spore-bundles-" + std::to_string(reinterpret_cast<std::uintptr_t>(this));
  bundlePipe_ = zmq::socket_t(ctx_, zmq::socket_type::pair);
  bundlePipe_.set(zmq::sockopt::sndhwm, 0);
  bundlePipe_.set(zmq::sockopt::rcvhwm, 0);
  bundlePipe_.bind(endpoint);
  bundleThread_ = std::thread(bundleWorker, std::ref(ctx_), std::ref(*installer_), std::cref(bundleStop_), endpoint);
  MESH_INFO("bundles: %zu trusted release keys; %zu bundle handlers installed", trusted_.size(),
            handlerBundle_.size());
  return {};
}

void SporeImpl::refreshBundleHandlers() {
  auto handlers = installer_->installedHandlers();
  if (!handlers) {
    MESH_ERROR("cannot list installed bundle handlers: %s", handlers.error().message.c_str());
    return;
  }
  registry_.setPrograms(exec::Source::kBundle, std::move(*handlers));
  // A handler's tasks count in the trial of the bundle whose program the registry runs for that
  // name: never a built-in's, nor another bundle's, nor a one-shot file that its .serve replaced.
  handlerBundle_.clear();
  auto table = registry_.snapshot();
  if (auto list = installer_->list()) {
    for (const auto& b : *list) {
      for (const auto& h : b.handlers) {
        const std::string handler = exec::programName(h).handler;
        if (table->where(handler) == b.path + "/" + h) handlerBundle_[handler] = b.name;
      }
    }
  }
}

void SporeImpl::onBundleOffers(capnp::List<proto::BundleRef>::Reader list) {
  offers_.clear();
  for (auto r : list) {
    BundleOffer o;
    o.name = std::string(wire::view(r.getName()));
    o.version = r.getVersion();
    o.size = r.getSize();
    o.manifestSha256 = std::string(wire::view(r.getManifestSha256()));
    if (!bundle::isValidBundleName(o.name) || o.version == 0) {
      counters_.add("bad_bundle_offers");
      continue;
    }
    offers_[o.name] = std::move(o);
  }
  maybeFetchBundle();
}

void SporeImpl::maybeFetchBundle() {
  if (fetch_ || installing_ || !welcomed_ || leaving_) return;  // leaving: the next start fetches
  pruneSpools();
  for (const auto& [name, offer] : offers_) {
    if (givenUp_.count({name, offer.version})) continue;
    // Each offer on its own: a bug one of them meets must not keep the others from installing.
    try {
      if (startFetch(offer)) return;
    } catch (const std::exception& e) {
      MESH_ERROR("bundle %s version %llu: internal error, not fetched until the spore restarts: %s",
                 name.c_str(), static_cast<unsigned long long>(offer.version), e.what());
      counters_.add("bundle_offer_errors");
      givenUp_.insert({name, offer.version});
      if (fetch_) return;
    }
  }
}

// Runs between fetches and installs (no receiver is open), so after each install and each list of
// offers, the one that follows a `missing` answer included: keeps the spools of the offers not
// installed yet, at most kMaxSpools of them (the most recently written), and deletes the rest.
void SporeImpl::pruneSpools() {
  std::set<std::string> wanted;
  for (const auto& [name, offer] : offers_) {
    if (givenUp_.count({name, offer.version})) continue;
    auto seen = installer_->seen(name);
    if (seen && *seen && (*seen)->version >= offer.version && (*seen)->installed) continue;
    wanted.insert(bundle::Installer::spoolId(name, offer.version));
  }
  auto removed = installer_->pruneSpools(wanted, kMaxSpools);
  if (!removed) {
    MESH_WARN("bundle spools: %s", removed.error().message.c_str());
  } else if (*removed > 0) {
    counters_.add("bundle_spools_removed", *removed);
  }
}

// Starts fetching `offer` unless it is installed already; true when fetch_ is now set.
bool SporeImpl::startFetch(const BundleOffer& offer) {
  const std::string& name = offer.name;
  auto seen = installer_->seen(name);
  if (!seen) {
    MESH_WARN("bundle %s: cannot read its version state: %s", name.c_str(), seen.error().message.c_str());
    return false;
  }
  if (*seen && (*seen)->version >= offer.version && (*seen)->installed) return false;
  std::string scratch = installer_->incomingDir(bundle::Installer::spoolId(name, offer.version));
  auto rx = bundle::BundleReceiver::open(scratch, bundle::ReceiveLimits{}, trusted_, clock_);
  if (!rx) {
    MESH_ERROR("bundle %s: cannot start receiving: %s", name.c_str(), rx.error().message.c_str());
    givenUp_.insert({name, offer.version});
    return false;
  }
  BundleFetchState f;
  f.offer = offer;
  f.rx = std::make_unique<bundle::BundleReceiver>(std::move(*rx));
  f.requested = f.rx->offset();
  f.lastMono = clock_.monotonicMs();
  MESH_INFO("fetching bundle %s version %llu (%llu bytes%s)", name.c_str(),
            static_cast<unsigned long long>(offer.version), static_cast<unsigned long long>(offer.size),
            f.requested ? (", resuming at " + std::to_string(f.requested)).c_str() : "");
  fetch_ = std::move(f);
  pumpFetch();
  return true;
}

void SporeImpl::pumpFetch() {
  BundleFetchState& f = *fetch_;
  if (f.rx->refused() || f.rx->complete() || (f.outstanding == 0 && f.rx->offset() >= f.offer.size)) {
    if (f.outstanding == 0) finishFetch();
    return;
  }
  while (f.outstanding < kFetchWindow && f.requested < f.offer.size) {
    wire::Encoder e(0, 32);
    auto req = e.body().initBundleFetch();
    req.setName(f.offer.name);
    req.setVersion(f.offer.version);
    req.setOffset(f.requested);
    req.setMaxBytes(kFetchChunkBytes);
    if (!send(e.finish())) return;
    f.requested = std::min<std::uint64_t>(f.offer.size, f.requested + kFetchChunkBytes);
    ++f.outstanding;
  }
}

void SporeImpl::onBundleChunk(proto::BundleChunk::Reader chunk) {
  if (!fetch_) return;
  BundleFetchState& f = *fetch_;
  if (wire::view(chunk.getName()) != f.offer.name || chunk.getVersion() != f.offer.version) return;
  if (f.outstanding > 0) --f.outstanding;
  f.lastMono = clock_.monotonicMs();
  if (chunk.getMissing()) {
    // The nexus no longer serves this version (a newer one replaced it): ask again. The spool is
    // kept while the new list still offers this version, deleted otherwise (pruneSpools).
    MESH_INFO("bundle %s version %llu is no longer served", f.offer.name.c_str(),
              static_cast<unsigned long long>(f.offer.version));
    if (f.outstanding == 0) {
      fetch_.reset();
      nextBundleCheck_ = 0;
    }
    return;
  }
  if (chunk.getOffset() != f.rx->offset() || f.rx->refused() || f.rx->complete()) {
    // Not the next bytes (an answer to a request made before a reset): re-ask from the spool's end.
    if (f.outstanding == 0) {
      f.requested = f.rx->offset();
      pumpFetch();
    }
    return;
  }
  bool ok = f.rx->feed(wire::view(chunk.getData()));
  if (ok && !f.rx->manifestSha256().empty() && !f.offer.manifestSha256.empty() &&
      f.rx->manifestSha256() != f.offer.manifestSha256) {
    // A spool of another release of the same name and version: start again from zero.
    MESH_WARN("bundle %s: the spooled bundle is not the one announced; fetching it again", f.offer.name.c_str());
    f.rx->discard();
    fetch_.reset();
    nextBundleCheck_ = 0;
    return;
  }
  if (!ok || f.rx->complete()) {
    if (f.outstanding == 0) finishFetch();
    return;  // the answers still in flight are dropped by the checks above, then finish
  }
  pumpFetch();
}

void SporeImpl::finishFetch() {
  auto job = std::make_unique<BundleJob>();
  job->kind = BundleJob::Kind::kInstall;
  job->offer = fetch_->offer;
  job->rx = std::move(fetch_->rx);
  fetch_.reset();
  installing_ = true;
  bundlePipe_.send(pointerMessage(std::move(job)), zmq::send_flags::none);
  poller_.touched(bundlePipe_);
}

void SporeImpl::startRollback(const std::string& name, std::uint64_t version, const std::string& reason) {
  auto job = std::make_unique<BundleJob>();
  job->kind = BundleJob::Kind::kRollback;
  job->name = name;
  job->version = version;
  job->reason = reason;
  bundlePipe_.send(pointerMessage(std::move(job)), zmq::send_flags::none);
  poller_.touched(bundlePipe_);
}

void SporeImpl::bundleWorker(zmq::context_t& ctx, bundle::Installer& installer, const std::atomic<bool>& stop,
                             const std::string& endpoint) {
  zmq::socket_t pipe(ctx, zmq::socket_type::pair);
  pipe.set(zmq::sockopt::sndhwm, 0);
  pipe.set(zmq::sockopt::rcvhwm, 0);
  pipe.connect(endpoint);
  const auto& clock = util::systemClock();
  for (;;) {
    zmq::message_t m;
    try {
      if (!pipe.recv(m)) continue;
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;  // a stop signal that landed on this thread (see workerLoop)
      return;
    }
    auto job = takePointer<BundleJob>(m);
    if (job->kind == BundleJob::Kind::kStop) return;
    auto done = std::make_unique<BundleJobDone>();
    done->kind = job->kind;
    done->offer = job->offer;
    done->name = job->name;
    done->version = job->version;
    done->reason = job->reason;
    std::int64_t t0 = clock.monotonicMs();
    try {
      if (job->kind == BundleJob::Kind::kInstall) {
        done->outcome.emplace(installer.install(*job->rx, &stop));
      } else {
        // Queued behind an install, the trial's version may have been replaced meanwhile: a
        // rollback now would mark the new version bad. Only the version on trial is rolled back.
        std::optional<std::uint64_t> current;
        bool hasPrevious = false;
        auto list = installer.list();
        if (list) {
          for (const auto& b : *list) {
            if (b.name != job->name) continue;
            current = b.current;
            hasPrevious = b.previous.has_value();
          }
        }
        if (!list || !current) {
          // Not "superseded": the version on trial may still be current; say why nothing was done.
          done->rolledBack = util::err("cannot read which version of " + job->name + " is current" +
                                       (list ? std::string(" (not listed)") : ": " + list.error().message));
        } else if (*current != job->version) {
          done->superseded = true;
        } else if (hasPrevious) {
          done->rolledBack = installer.rollback(job->name, job->reason);
        } else {
          // A first install of the name: nothing to return to, so its handlers go.
          done->withdrawn = true;
          done->rolledBack = installer.withdraw(job->name, job->reason);
        }
      }
    } catch (const std::exception& e) {
      // A bug (an assertion): the job fails, the thread goes on.
      MESH_ERROR("internal error in the bundle thread: %s", e.what());
      if (job->kind == BundleJob::Kind::kInstall) {
        done->outcome.emplace(bundle::refuse(bundle::Refusal::kLocalError, std::string("internal error: ") + e.what()));
      } else {
        done->rolledBack = util::err(std::string("internal error: ") + e.what());
      }
    }
    done->tookMs = clock.monotonicMs() - t0;
    try {
      pipe.send(pointerMessage(std::move(done)), zmq::send_flags::none);
    } catch (const zmq::error_t&) {
      return;
    }
  }
}

void SporeImpl::stopBundleWorker() {
  if (!bundleThread_.joinable()) return;
  bundleStop_.store(true);  // an install in progress stops before its next file
  sendStop<BundleJob>(bundlePipe_);
  bundleThread_.join();
  zmq::message_t m;
  while (bundlePipe_.recv(m, zmq::recv_flags::dontwait)) takePointer<BundleJobDone>(m);
}

void SporeImpl::onBundleDone(std::unique_ptr<BundleJobDone> done) {
  if (done->kind == BundleJob::Kind::kRollback) {
    if (done->superseded) {
      MESH_INFO("bundle %s: version %llu is no longer current; not rolled back", done->name.c_str(),
                static_cast<unsigned long long>(done->version));
      return;
    }
    if (!done->rolledBack) {
      MESH_ERROR("cannot roll bundle %s back: %s", done->name.c_str(), done->rolledBack.error().message.c_str());
      return;
    }
    MESH_WARN("%s bundle %s %s version %llu: %s", done->withdrawn ? "withdrew" : "rolled", done->name.c_str(),
              done->withdrawn ? "(no previous version: its handlers are gone from this spore)" : "back from",
              static_cast<unsigned long long>(done->version), done->reason.c_str());
    refreshBundleHandlers();
    sendBundleReport(done->name, done->version, "rolled-back", "trial-failed", done->reason);
    sendHello();
    return;
  }
  installing_ = false;
  const BundleOffer& offer = done->offer;
  const auto& outcome = *done->outcome;
  if (!outcome) {
    const bundle::Refused& r = outcome.refused();
    MESH_WARN("refused bundle %s version %llu: %s", offer.name.c_str(), static_cast<unsigned long long>(offer.version),
              r.describe().c_str());
    givenUp_.insert({offer.name, offer.version});
    sendBundleReport(offer.name, offer.version, "refused", bundle::refusalName(r.reason), r.message);
  } else {
    MESH_INFO("installed bundle %s version %llu (verified and installed in %lld ms)", outcome->name.c_str(),
              static_cast<unsigned long long>(outcome->version), static_cast<long long>(done->tookMs));
    refreshBundleHandlers();
    // Every install is on trial, a first one too (with no previous version, failing it withdraws
    // the version: better its tasks wait for a fix elsewhere than crash here).
    trials_[outcome->name] = BundleTrial{outcome->version, clock_.monotonicMs() + config_.bundleTrialMs, {}, {}};
    sendBundleReport(outcome->name, outcome->version, "installed", "", "");
    sendHello();  // the nexus learns the new handler names
  }
  maybeFetchBundle();
}

void SporeImpl::sendBundleReport(const std::string& name, std::uint64_t version, const std::string& event,
                                 const std::string& reason, const std::string& message) {
  wire::Encoder e(0, 64);
  auto r = e.body().initBundleReport();
  r.setName(name);
  r.setVersion(version);
  r.setEvent(event);
  r.setReason(reason);
  r.setMessage(message.substr(0, 1000));
  if (auto list = installer_->list()) {
    for (const auto& b : *list) {
      if (b.name == name) r.setRunning(b.current);
    }
  }
  if (auto seen = installer_->seen(name); seen && *seen) r.setRollbacks(static_cast<std::uint32_t>((*seen)->bad.size()));
  send(e.finish());
}

// After each welcome: what runs here, so that `mesh bundles` is right after a nexus restart.
void SporeImpl::reportBundleState() {
  auto list = installer_->list();
  if (!list) return;
  for (const auto& b : *list) sendBundleReport(b.name, b.current, "running", "", "");
}

void SporeImpl::noteTrialTask(const std::string& handler, const Done& done) {
  if (!installer_ || trials_.empty()) return;
  if (done.status == proto::TaskStatus::CANCELLED || done.status == proto::TaskStatus::UNKNOWN_HANDLER) return;
  // A map task's combiner (or a reduce task's reducer step) at fault is charged to its own
  // bundle, which may not be the mapper's.
  const bool combinerAtFault = done.programFault && !done.faultHandler.empty();
  auto h = handlerBundle_.find(combinerAtFault ? done.faultHandler : handler);
  if (h == handlerBundle_.end()) return;
  auto t = trials_.find(h->second);
  if (t == trials_.end()) return;
  BundleTrial& trial = t->second;
  // A task that ran on another version (it started before the install, or the previous version
  // after a rollback) says nothing about this one. The combiner's version is not reported: its
  // fault is charged to its bundle's trial, as the version current now is the likely one.
  if (!combinerAtFault && !done.bundle.empty() && (done.bundle != t->first || done.bundleVersion != trial.version)) {
    return;
  }
  if (clock_.monotonicMs() > trial.untilMono || trial.ended.size() >= kTrialTasksMax) {
    trials_.erase(t);  // the version passed its trial
    return;
  }
  trial.ended.insert(done.id);
  if (!done.programFault) return;  // a plain failure or a timeout: the input's doing
  trial.faulted.insert(done.id);
  const std::size_t faulted = trial.faulted.size(), ended = trial.ended.size();
  if (faulted < config_.bundleTrialFailures || faulted * 2 < ended) return;
  std::string name = t->first;
  std::uint64_t version = trial.version;
  std::string reason = "trial-failed: " + std::to_string(faulted) + " of the " + std::to_string(ended) +
                       " tasks of its handlers that ended here within " +
                       std::to_string(config_.bundleTrialMs / 1000) +
                       " s of the install crashed or could not start (last: handler " + handler + ", " +
                       bundle::printable(done.error, 160) + ")";
  trials_.erase(t);
  startRollback(name, version, reason);  // on the bundle thread; onBundleDone reports it
}

void SporeImpl::checkExpiry() {
  if (!installer_) return;
  auto list = installer_->list();
  if (!list) return;
  const std::int64_t wallNow = util::systemClock().wallMs();
  for (const auto& b : *list) {
    if (b.expiresMs <= 0 || b.expiresMs > wallNow) continue;
    auto said = expiredSaid_.find(b.name);
    if (said != expiredSaid_.end() && said->second == b.current) continue;
    expiredSaid_[b.name] = b.current;
    counters_.add("bundles_expired_running");
    std::string message = "version " + std::to_string(b.current) + " expired " +
                          std::to_string((wallNow - b.expiresMs) / 60000) +
                          " min ago and still runs here: no newer version has reached this spore (a withheld update?); "
                          "publish a newer version";
    MESH_WARN("bundle %s: %s", b.name.c_str(), message.c_str());
    sendBundleReport(b.name, b.current, "expired", "expired", message);
  }
}

void SporeImpl::bundleTimers(std::int64_t now) {
  if (!welcomed_) return;
  if (now >= nextBundleCheck_) {
    nextBundleCheck_ = now + kBundleCheckEveryMs;
    wire::Encoder e(0, 16);
    e.body().setBundleListRequest();
    send(e.finish());
    checkExpiry();
  }
  if (fetch_ && now - fetch_->lastMono > kFetchStallMs) {
    // Requests or answers were lost (a reconnect): ask again from where the spool ends.
    MESH_INFO("bundle %s: fetch stalled; resuming at %llu", fetch_->offer.name.c_str(),
              static_cast<unsigned long long>(fetch_->rx->offset()));
    fetch_->outstanding = 0;
    fetch_->requested = fetch_->rx->offset();
    fetch_->lastMono = now;
    pumpFetch();
  }
}

}  // namespace mesh::node
