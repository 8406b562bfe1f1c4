// The spore's signed bundles: fetching, verifying and installing them, trials and rollbacks.
// See spore_impl.h.
#include "mesh/node/spore_impl.h"

namespace mesh::node {

// ---- bundles ---------------------------------------------------------------------------------
//
// The spore learns of bundles from Welcome, from the BundleList it asks for every 10 s and
// whenever a bundleAvailable hint arrives on PUB. It fetches one bundle at a time over its
// DEALER with kFetchWindow chunk requests outstanding, feeding a BundleReceiver whose spool
// (DATA_DIR/bundles/.incoming/NAME-VERSION) survives reconnects and restarts, then installs it.

util::Status SporeImpl::openBundles() {
  if (config_.trust.empty()) return {};
  for (const auto& f : config_.trust) {
    if (auto s = trusted_.addFile(f); !s) return util::err("--trust " + f + ": " + s.error().message, 2);
  }
  auto installer = bundle::Installer::open(config_.dataDir + "/bundles", clock_);
  if (!installer) return util::err("bundles: " + installer.error().message);
  installer_ = std::make_unique<bundle::Installer>(std::move(*installer));
  refreshBundleHandlers();
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
  handlerBundle_.clear();
  if (auto list = installer_->list()) {
    for (const auto& b : *list) {
      for (const auto& h : b.handlers) handlerBundle_[exec::programName(h).handler] = b.name;
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
  if (fetch_ || !welcomed_) return;
  for (const auto& [name, offer] : offers_) {
    if (givenUp_.count({name, offer.version})) continue;
    auto seen = installer_->seen(name);
    if (!seen) {
      MESH_WARN("bundle %s: cannot read its version state: %s", name.c_str(), seen.error().message.c_str());
      continue;
    }
    if (*seen && (*seen)->version >= offer.version && (*seen)->installed) continue;
    std::string scratch = installer_->incomingDir(name + "-" + std::to_string(offer.version));
    auto rx = bundle::BundleReceiver::open(scratch, bundle::ReceiveLimits{}, trusted_, clock_);
    if (!rx) {
      MESH_ERROR("bundle %s: cannot start receiving: %s", name.c_str(), rx.error().message.c_str());
      givenUp_.insert({name, offer.version});
      continue;
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
    return;
  }
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
    // The nexus no longer serves this version (a newer one replaced it): keep the spool, ask again.
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
  BundleFetchState f = std::move(*fetch_);
  fetch_.reset();
  auto outcome = installer_->install(*f.rx);
  if (!outcome) {
    const bundle::Refused& r = outcome.refused();
    MESH_WARN("refused bundle %s version %llu: %s", f.offer.name.c_str(),
              static_cast<unsigned long long>(f.offer.version), r.describe().c_str());
    givenUp_.insert({f.offer.name, f.offer.version});
    sendBundleReport(f.offer.name, f.offer.version, "refused", bundle::refusalName(r.reason), r.message);
  } else {
    MESH_INFO("installed bundle %s version %llu", outcome->name.c_str(),
              static_cast<unsigned long long>(outcome->version));
    refreshBundleHandlers();
    if (outcome->previous) {
      trials_[outcome->name] = BundleTrial{outcome->version, clock_.monotonicMs() + config_.bundleTrialMs, 0};
    }
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

void SporeImpl::noteTaskFailure(const std::string& handler) {
  if (!installer_) return;
  auto h = handlerBundle_.find(handler);
  if (h == handlerBundle_.end()) return;
  auto t = trials_.find(h->second);
  if (t == trials_.end()) return;
  std::int64_t now = clock_.monotonicMs();
  if (now > t->second.untilMono) {
    trials_.erase(t);  // the version passed its trial
    return;
  }
  if (++t->second.failures < config_.bundleTrialFailures) return;
  std::string name = t->first;
  std::uint64_t version = t->second.version;
  std::string reason = "trial-failed: handler " + handler + " failed " + std::to_string(t->second.failures) +
                       " times within " + std::to_string(config_.bundleTrialMs / 1000) + " s of the install";
  trials_.erase(t);
  if (auto s = installer_->rollback(name, reason); !s) {
    MESH_ERROR("cannot roll bundle %s back: %s", name.c_str(), s.error().message.c_str());
    return;
  }
  MESH_WARN("rolled bundle %s back from version %llu: %s", name.c_str(), static_cast<unsigned long long>(version),
            reason.c_str());
  refreshBundleHandlers();
  sendBundleReport(name, version, "rolled-back", "trial-failed", reason);
  sendHello();
}

void SporeImpl::bundleTimers(std::int64_t now) {
  if (!welcomed_) return;
  if (now >= nextBundleCheck_) {
    nextBundleCheck_ = now + kBundleCheckEveryMs;
    wire::Encoder e(0, 16);
    e.body().setBundleListRequest();
    send(e.finish());
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
