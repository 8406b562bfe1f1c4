// The nexus's signed bundles: publish, store, serve to spores, rollout reports.
#include "mesh/node/nexus_impl.h"

namespace mesh::node {

// ---- bundles ---------------------------------------------------------------------------------
//
// DATA_DIR/bundles/NAME-VERSION.bundle   the verified bundle files served to spores
// DATA_DIR/bundles/index                 one line per name: name version size sha256 publishedMs
// DATA_DIR/bundles/.incoming/upload-N/   receive scratch of a publish in progress
// DATA_DIR/bundles/audit.log             every publish accepted or refused
// DATA_DIR/bundle-state/NAME             the highest version accepted per name (check 4)
//
// The index is the record of a publish: a publish is accepted when the index that lists it has
// been written (after the bundle file is in place), and the version state is recorded after it.
// A failed index write refuses the publish with nothing recorded; a failed state write (or a
// crash before it) leaves the state behind the index, which check 4 reads as well (ServedLedger)
// and openBundles() repairs.

namespace {

// Check 4 on the nexus: the version state, raised to the version the index serves.
class ServedLedger final : public bundle::VersionLedger {
 public:
  ServedLedger(const bundle::FileVersionLedger& ledger, const std::map<std::string, StoredBundle>& served)
      : ledger_(ledger), served_(served) {}
  util::Result<std::optional<bundle::SeenVersion>> seen(const std::string& name) const override {
    auto seen = ledger_.seen(name);
    if (!seen) return seen;
    auto it = served_.find(name);
    if (it == served_.end() || (*seen && (*seen)->version >= it->second.version)) return seen;
    bundle::SeenVersion v;
    v.version = it->second.version;
    v.manifestSha256 = it->second.manifestSha256;
    v.installed = true;
    if (*seen) v.bad = (*seen)->bad;
    return std::optional<bundle::SeenVersion>(v);
  }

 private:
  const bundle::FileVersionLedger& ledger_;
  const std::map<std::string, StoredBundle>& served_;
};

}  // namespace

util::Status NexusImpl::openBundles() {
  for (const auto& f : config_.trust) {
    if (auto s = trusted_.addFile(f); !s) return util::err("--trust " + f + ": " + s.error().message, 2);
  }
  bundlesDir_ = config_.dataDir + "/bundles";
  if (auto s = bundle::makeDirs(bundlesDir_, 0700); !s) return s;
  (void)bundle::removeTree(bundlesDir_ + "/.incoming");  // uploads do not survive a restart
  auto ledger = bundle::FileVersionLedger::open(config_.dataDir + "/bundle-state");
  if (!ledger) return ledger.error();
  ledger_.emplace(std::move(*ledger));
  auto audit = bundle::AuditLog::open(bundlesDir_ + "/audit.log");
  if (!audit) return audit.error();
  audit_.emplace(std::move(*audit));
  auto index = util::readFile(bundlesDir_ + "/index", 1u << 20);
  if (index) {
    for (const auto& line : util::splitList(*index, '\n')) {
      std::istringstream in(line);
      StoredBundle b;
      if (!(in >> b.name >> b.version >> b.size >> b.manifestSha256 >> b.publishedMs)) {
        MESH_WARN("ignored a malformed line of %s/index: %s", bundlesDir_.c_str(), line.c_str());
        continue;
      }
      b.path = bundlesDir_ + "/" + b.name + "-" + std::to_string(b.version) + ".bundle";
      struct stat st {};
      if (::stat(b.path.c_str(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) != b.size) {
        MESH_WARN("bundle file %s is missing or has the wrong size: not served", b.path.c_str());
        continue;
      }
      // The index was written before the version state: a state left behind (a crash or a
      // failed write between the two) is brought up to the bundle the index serves.
      if (auto seen = ledger_->seen(b.name); seen && (!*seen || (*seen)->version < b.version)) {
        bundle::SeenVersion v;
        v.version = b.version;
        v.manifestSha256 = b.manifestSha256;
        v.installed = true;
        if (*seen) v.bad = (*seen)->bad;
        if (auto s = ledger_->record(b.name, v); !s) return util::err("bundles: " + s.error().message);
        MESH_WARN("bundle %s: version state raised to version %llu, which the index serves", b.name.c_str(),
                  static_cast<unsigned long long>(b.version));
      }
      bundles_[b.name] = b;
    }
  }
  if (!trusted_.empty() || !bundles_.empty()) {
    MESH_INFO("bundles: %zu trusted release keys, %zu bundles served", trusted_.size(), bundles_.size());
  }
  return {};
}

util::Status NexusImpl::saveBundleIndex() {
  std::string text;
  for (const auto& [name, b] : bundles_) {
    text += b.name + " " + std::to_string(b.version) + " " + std::to_string(b.size) + " " + b.manifestSha256 + " " +
            std::to_string(b.publishedMs) + "\n";
  }
  if (auto s = util::writeFileAtomic(bundlesDir_ + "/index", text, 0600); !s) return s;
  return bundle::fsyncDir(bundlesDir_);  // the rename is the commit of a publish
}

void NexusImpl::fillBundleRef(proto::BundleRef::Builder out, const StoredBundle& b) {
  out.setName(b.name);
  out.setVersion(b.version);
  out.setSize(b.size);
  out.setManifestSha256(b.manifestSha256);
  out.setPublishedMs(b.publishedMs);
}

void NexusImpl::refusePublish(const std::string& routingId, std::uint64_t requestId, const bundle::Refused& r) {
  counters_.add("bundles_refused");
  MESH_WARN("refused a published bundle: %s", r.describe().c_str());
  bundle::AuditEvent ev{"refused", r.name, r.version, bundle::refusalName(r.reason), r.message, r.keyFingerprint};
  if (auto s = audit_->append(ev, clock_.wallMs()); !s) MESH_WARN("audit log: %s", s.error().message.c_str());
  publishRefusals_.push_back(r);
  while (publishRefusals_.size() > kPublishRefusalsKept) publishRefusals_.pop_front();
  replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST, "bundle refused: " + r.describe());
}

void NexusImpl::onBundleUpload(const std::string& routingId, const std::string& key, std::uint64_t requestId,
                               proto::BundleUpload::Reader upload) {
  auto role = roleOf(key);
  if (!role || *role != store::Role::kAdmin) {
    counters_.add("bundles_forbidden");
    replyError(routingId, requestId, proto::Error::Code::FORBIDDEN,
               "publishing a bundle needs an admin key (mesh keys accept FP --role admin)");
    return;
  }
  if (trusted_.empty()) {
    replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST,
               "this nexus trusts no release key: start it with --trust release.key.pub");
    return;
  }
  auto data = wire::view(upload.getData());
  if (data.size() > kBundleChunkMax) {
    replyError(routingId, requestId, proto::Error::Code::TOO_LARGE,
               "upload chunks are at most " + std::to_string(kBundleChunkMax) + " bytes");
    return;
  }
  std::uint64_t id = upload.getUpload();
  if (id == 0) {
    if (upload.getOffset() != 0) {
      replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST, "a new upload starts at offset 0");
      return;
    }
    if (uploads_.size() >= kMaxUploads) {
      replyError(routingId, requestId, proto::Error::Code::UNAVAILABLE,
                 std::to_string(kMaxUploads) + " publishes are in progress: retry later");
      return;
    }
    id = nextUpload_++;
    std::string scratch = bundlesDir_ + "/.incoming/upload-" + std::to_string(id);
    (void)bundle::removeTree(scratch);
    auto rx = bundle::BundleReceiver::open(scratch, bundle::ReceiveLimits{}, trusted_, clock_);
    if (!rx) {
      MESH_ERROR("cannot start a bundle upload: %s", rx.error().message.c_str());
      replyError(routingId, requestId, proto::Error::Code::INTERNAL, "cannot start the upload; see the nexus log");
      return;
    }
    Upload u;
    u.key = key;
    u.rx = std::make_unique<bundle::BundleReceiver>(std::move(*rx));
    uploads_[id] = std::move(u);
  }
  auto it = uploads_.find(id);
  if (it == uploads_.end() || it->second.key != key) {
    replyError(routingId, requestId, proto::Error::Code::NOT_FOUND,
               "no upload " + std::to_string(id) + " (it was idle too long or the nexus restarted): publish again");
    return;
  }
  Upload& up = it->second;
  up.lastMono = clock_.monotonicMs();
  bundle::BundleReceiver& rx = *up.rx;
  if (upload.getOffset() != rx.offset()) {
    replyError(routingId, requestId, proto::Error::Code::BAD_REQUEST,
               "upload " + std::to_string(id) + " expects offset " + std::to_string(rx.offset()));
    return;
  }
  if (!data.empty() && !rx.feed(data)) {
    bundle::Refused r = *rx.refused();
    rx.discard();
    uploads_.erase(it);
    return refusePublish(routingId, requestId, r);
  }
  if (!upload.getLast()) {
    wire::Encoder e(requestId, 32);
    auto ack = e.body().initBundleUploadAck();
    ack.setUpload(id);
    ack.setReceived(rx.offset());
    sendTo(clientSocket_, routingId, e.finish());
    return;
  }
  // The last chunk: every check a spore runs, with this nexus's ledger.
  auto verified = rx.finish(ServedLedger(*ledger_, bundles_));
  if (!verified) {
    bundle::Refused r = verified.refused();
    rx.discard();
    uploads_.erase(it);
    return refusePublish(routingId, requestId, r);
  }
  const bundle::ManifestInfo& m = verified->manifest;
  StoredBundle b;
  b.name = m.name;
  b.version = m.version;
  b.manifestSha256 = verified->manifestSha256;
  b.publishedMs = clock_.wallMs();
  b.path = bundlesDir_ + "/" + m.name + "-" + std::to_string(m.version) + ".bundle";
  struct stat st {};
  if (::stat(verified->bundlePath.c_str(), &st) == 0) b.size = static_cast<std::uint64_t>(st.st_size);
  std::optional<StoredBundle> before;  // the version served until now
  if (auto prev = bundles_.find(m.name); prev != bundles_.end()) before = prev->second;
  std::string oldPath = before ? before->path : "";
  // The file, then the index (the publish is accepted once it is written), then the state.
  util::Status stored = rx.keepBundleFile(b.path);
  if (!stored) {
    rx.discard();
    ::unlink(b.path.c_str());  // in case it was moved but not made durable
  } else {
    bundles_[m.name] = b;
    stored = saveBundleIndex();
    if (!stored) {
      if (before) bundles_[m.name] = *before;
      else bundles_.erase(m.name);
      // Renamed but not made durable, perhaps: put the old index back (best effort; an index
      // line without its file is not served after a restart either).
      (void)saveBundleIndex();
      ::unlink(b.path.c_str());
    }
  }
  uploads_.erase(it);
  if (!stored) {
    counters_.add("bundle_store_errors");
    MESH_ERROR("cannot store bundle %s version %llu (nothing recorded): %s", m.name.c_str(),
               static_cast<unsigned long long>(m.version), stored.error().message.c_str());
    replyError(routingId, requestId, proto::Error::Code::INTERNAL,
               "the nexus could not store the bundle (disk full? see its log); nothing was published: publish "
               "again once it can write to its data dir");
    return;
  }
  bundle::SeenVersion seen;
  seen.version = m.version;
  seen.manifestSha256 = verified->manifestSha256;
  seen.installed = true;
  if (auto old = ledger_->seen(m.name); old && *old) seen.bad = (*old)->bad;
  if (auto s = ledger_->record(m.name, seen); !s) {
    // Accepted all the same (the index lists it): check 4 reads the index too, and the next
    // start brings the state up to it.
    counters_.add("bundle_store_errors");
    MESH_ERROR("bundle %s version %llu: cannot record its version state (repaired at the next start): %s",
               m.name.c_str(), static_cast<unsigned long long>(m.version), s.error().message.c_str());
  }
  if (!oldPath.empty() && oldPath != b.path) ::unlink(oldPath.c_str());
  bundle::AuditEvent ev{"installed", m.name, m.version, "", "published", verified->keyFingerprint};
  if (auto s = audit_->append(ev, clock_.wallMs()); !s) MESH_WARN("audit log: %s", s.error().message.c_str());
  counters_.add("bundles_published");
  MESH_INFO("bundle %s version %llu published (%llu bytes, signed by %s): announcing it", m.name.c_str(),
            static_cast<unsigned long long>(m.version), static_cast<unsigned long long>(b.size),
            verified->keyFingerprint.c_str());
  wire::Encoder e(requestId, 64);
  auto ack = e.body().initBundleUploadAck();
  ack.setUpload(id);
  ack.setReceived(b.size);
  ack.setDone(true);
  fillBundleRef(ack.initBundle(), b);
  sendTo(clientSocket_, routingId, e.finish());
  publish(proto::Event::Kind::BUNDLE_AVAILABLE, 0, "", m.name + " " + std::to_string(m.version));
}

void NexusImpl::onBundleFetch(NodeConn& conn, std::uint64_t requestId, proto::BundleFetch::Reader fetch) {
  const std::string& routingId = conn.routingId;
  std::string name(wire::view(fetch.getName()));
  wire::Encoder e(requestId, 64);
  auto chunk = e.body().initBundleChunk();
  chunk.setName(name);
  chunk.setVersion(fetch.getVersion());
  chunk.setOffset(fetch.getOffset());
  auto it = bundles_.find(name);
  if (it == bundles_.end() || it->second.version != fetch.getVersion() || fetch.getOffset() > it->second.size) {
    chunk.setMissing(true);
    sendTo(nodeSocket_, routingId, e.finish());
    return;
  }
  const StoredBundle& b = it->second;
  chunk.setSize(b.size);
  std::size_t n = static_cast<std::size_t>(
      std::min<std::uint64_t>({fetch.getMaxBytes(), kBundleChunkMax, b.size - fetch.getOffset()}));
  // A spore reads its chunks before it asks past them (at most 4 requests outstanding), so
  // served - (highest offset asked - first offset asked) stays within a few chunks. One that
  // asks again and again without reading would grow the send queue by a MiB a request. So,
  // per connection and bundle version: at most kFetchSlackBytes served past the progress; a
  // fetch that starts again lower (a retry after a timeout, a spool discarded) starts a new
  // count, at most kFetchRestarts times; and at most kFetchRestarts + 1 times the bundle in
  // all. Past that, its fetches of the bundle are ignored until it reconnects.
  NodeConn::Fetch& f = conn.fetches[name];
  if (f.version != fetch.getVersion() || f.servedTotal == 0) {
    f = NodeConn::Fetch{};
    f.version = fetch.getVersion();
    f.firstOffset = f.highestOffset = fetch.getOffset();
  } else if (fetch.getOffset() < f.highestOffset) {
    ++f.restarts;
    f.firstOffset = f.highestOffset = fetch.getOffset();
    f.served = 0;
  }
  f.highestOffset = std::max<std::uint64_t>(f.highestOffset, fetch.getOffset());
  if (f.served + n > (f.highestOffset - f.firstOffset) + kFetchSlackBytes || f.restarts > kFetchRestarts ||
      f.servedTotal + n > (kFetchRestarts + 1) * b.size + kFetchSlackBytes) {
    counters_.add("bundle_fetches_refused");
    if (!f.refused) {
      f.refused = true;
      MESH_WARN("spore %s asks for bundle chunks faster than it reads them (%llu bytes of %s version %llu "
                "served past its progress, %u restarts): its fetches are ignored until it reconnects",
                conn.name.c_str(),
                static_cast<unsigned long long>(f.served > f.highestOffset - f.firstOffset
                                                    ? f.served - (f.highestOffset - f.firstOffset) : 0),
                name.c_str(), static_cast<unsigned long long>(f.version), static_cast<unsigned>(f.restarts));
    }
    return;
  }
  f.served += n;
  f.servedTotal += n;
  bundle::UniqueFd fd(::open(b.path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    MESH_ERROR("cannot read bundle file %s: %s", b.path.c_str(), std::strerror(errno));
    chunk.setMissing(true);
    sendTo(nodeSocket_, routingId, e.finish());
    return;
  }
  auto data = chunk.initData(static_cast<unsigned>(n));
  auto got = bundle::preadAll(fd.get(), reinterpret_cast<char*>(data.begin()), n, fetch.getOffset(), b.path);
  if (!got || *got != n) {
    MESH_ERROR("short read of bundle file %s", b.path.c_str());
    chunk.setMissing(true);
  }
  counters_.add("bundle_bytes_served", n);
  sendTo(nodeSocket_, routingId, e.finish());
}

void NexusImpl::onBundleReport(const NodeConn& conn, proto::BundleReport::Reader report) {
  std::string name(wire::view(report.getName()));
  if (!bundle::isValidBundleName(name)) {
    counters_.add("bad_bundle_reports");
    return;
  }
  auto known = sporeBundles_.find(name);
  if (known == sporeBundles_.end() || !known->second.count(conn.key)) {
    // A new name for this spore: a spore reports the bundles it has, which are the nexus's
    // (or were, before a nexus lost them), so more names than that are junk that would grow
    // the nexus's memory without end.
    std::size_t held = 0;
    for (const auto& [n, bySpore] : sporeBundles_) held += bySpore.count(conn.key);
    if (held >= bundles_.size() + kSporeBundlesSlack) {
      counters_.add("bundle_reports_over_limit");
      if (auto h = nodeLog_.admit("bundle_reports:" + conn.key)) {
        MESH_WARN("dropped a report of bundle %s from spore %s: it reported %zu bundle names already (at most %zu)%s",
                  name.c_str(), conn.name.c_str(), held, bundles_.size() + kSporeBundlesSlack,
                  util::heldBack(*h).c_str());
      }
      return;
    }
  }
  SporeBundle& s = sporeBundles_[name][conn.key];
  s.spore = conn.name;
  s.fingerprint = conn.fingerprint;
  s.running = report.getRunning();
  s.rollbacks = report.getRollbacks();
  std::string event(wire::view(report.getEvent()));
  if (event == "running" && !s.event.empty() && s.event != "running") return;  // keep the last event
  s.event = event.substr(0, 32);
  s.version = report.getVersion();
  s.reason = bundle::printable(wire::view(report.getReason()), 64);
  s.message = bundle::printable(wire::view(report.getMessage()), 300);
  if (event != "running") {
    MESH_INFO("spore %s: bundle %s version %llu %s%s%s", conn.name.c_str(), name.c_str(),
              static_cast<unsigned long long>(s.version), s.event.c_str(), s.reason.empty() ? "" : ": ",
              s.reason.c_str());
  }
}

void NexusImpl::onBundles(const std::string& routingId, std::uint64_t requestId) {
  std::set<std::string> names;
  for (const auto& [name, b] : bundles_) names.insert(name);
  for (const auto& [name, m] : sporeBundles_) names.insert(name);
  std::set<std::string> live;
  for (const auto& [rid, c] : conns_) live.insert(c.key);
  wire::Encoder e(requestId, 1024);
  auto reply = e.body().initBundlesReply();
  auto list = reply.initBundles(static_cast<unsigned>(names.size()));
  unsigned i = 0;
  for (const auto& name : names) {
    auto out = list[i++];
    auto b = bundles_.find(name);
    if (b != bundles_.end()) fillBundleRef(out.initBundle(), b->second);
    else out.initBundle().setName(name);
    auto states = sporeBundles_.find(name);
    std::size_t n = states == sporeBundles_.end() ? 0 : states->second.size();
    auto spores = out.initSpores(static_cast<unsigned>(n));
    unsigned j = 0;
    if (n == 0) continue;
    for (const auto& [key, s] : states->second) {
      auto o = spores[j++];
      o.setSpore(s.spore);
      o.setFingerprint(s.fingerprint);
      o.setRunning(s.running);
      o.setEvent(s.event);
      o.setReason(s.reason);
      o.setMessage(s.message);
      o.setVersion(s.version);
      o.setRollbacks(s.rollbacks);
      o.setConnected(live.count(key) > 0);
    }
  }
  auto refusals = reply.initRefusals(static_cast<unsigned>(publishRefusals_.size()));
  i = 0;
  for (const auto& r : publishRefusals_) {
    auto o = refusals[i++];
    o.setName(bundle::printable(r.name, 64));
    o.setVersion(r.version);
    o.setEvent("refused");
    o.setReason(bundle::refusalName(r.reason));
    o.setMessage(r.message);
  }
  sendTo(clientSocket_, routingId, e.finish());
}

}  // namespace mesh::node
