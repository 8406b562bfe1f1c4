#include "mesh/node/client.h"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <deque>
#include <map>
#include <optional>

#include "mesh/transport/sockets.h"
#include "mesh/util/clock.h"

namespace mesh::node {

namespace {
constexpr std::size_t kChunkTasks = 10000;
// A chunk's tasks are dispatched once it is committed: small chunks start the spores sooner and
// keep them fed. 1 MiB measured best for 4 KiB and 250 KB payloads (B +18 %, D -25 % against
// 8 MiB; 512 KiB and a window of 8 were no better: docs/benchmarks.md).
constexpr std::size_t kChunkBytes = 1u << 20;
constexpr std::size_t kWindow = 4;  // chunks in flight
// How long the cancel of a batch whose submit failed may take: the user has waited already.
constexpr std::int64_t kCancelPatienceMs = 3000;
}  // namespace

const char* taskStatusName(proto::TaskStatus s) {
  switch (s) {
    case proto::TaskStatus::OK: return "ok";
    case proto::TaskStatus::FAILED: return "failed";
    case proto::TaskStatus::TIMED_OUT: return "timed out";
    case proto::TaskStatus::CRASHED: return "crashed";
    case proto::TaskStatus::UNKNOWN_HANDLER: return "unknown handler";
    case proto::TaskStatus::CANCELLED: return "cancelled";
    case proto::TaskStatus::QUARANTINED: return "quarantined";
  }
  return "unknown";
}

ProgressView progressView(proto::Progress::Reader p) {
  ProgressView v;
  v.batch = p.getBatch();
  v.total = p.getTotal();
  v.queued = p.getQueued();
  v.running = p.getRunning();
  v.succeeded = p.getSucceeded();
  v.failed = p.getFailed();
  v.cancelled = p.getCancelled();
  v.sealed = p.getSealed();
  v.finished = p.getFinished();
  v.nextBatch = p.getNextBatch();
  v.note = std::string(wire::view(p.getNote()));
  v.stage = p.getStage();
  // A cancelled task comes only from a cancel of its batch: so says a nexus older than the flag.
  v.batchCancelled = p.getBatchCancelled() || v.cancelled > 0;
  v.expiredMs = p.getExpiredMs();
  v.expiry = std::string(wire::view(p.getExpiry()));
  for (auto id : p.getAfter()) v.after.push_back(id);
  for (auto id : p.getAfterDone()) v.afterDone.push_back(id);
  v.waiting = p.getWaiting();
  for (auto id : p.getWaitingFor()) v.waitingFor.push_back(id);
  return v;
}

std::string jsonIds(const std::vector<std::uint64_t>& ids) {
  std::string out = "[";
  for (std::size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + std::to_string(ids[i]);
  return out + "]";
}

const char* batchState(const ProgressView& p) {
  if (p.expiredMs > 0) return "expired";
  if (p.batchCancelled) return p.finished ? "cancelled" : "cancelling";
  if (p.finished) return "finished";
  if (p.waiting) return "waiting";
  return p.sealed ? "running" : "open";
}

util::Result<std::unique_ptr<Client>> Client::connect(zmq::context_t& ctx, const ClientOptions& options) {
  if (options.endpoint.empty()) {
    return util::err("no nexus given: set MESH_NEXUS or --nexus tcp://HOST:7701", kExitUsage);
  }
  auto keys = crypto::loadKeyPair(options.keyFile);
  if (!keys) return util::err(keys.error().message + " (the client key pair: MESH_KEY or --key)", kExitUsage);
  std::unique_ptr<Client> c(new Client(ctx, options));
  c->keys_ = std::move(*keys);
  transport::SocketLimits limits;
  limits.lingerMs = 1000;
  c->socket_ = transport::makeClientSocket(ctx, zmq::socket_type::dealer, c->keys_, options.nexusKey, limits);
  transport::HandshakeWatch watch(ctx, c->socket_);
  try {
    c->socket_.connect(options.endpoint);
  } catch (const zmq::error_t& e) {
    // Most often a bare host or a missing port: say what the form is, not only errno's word.
    return util::err("bad nexus endpoint '" + options.endpoint + "' (" + e.what() +
                         "): MESH_NEXUS or --nexus takes tcp://HOST:PORT, the nexus's client port (7701 by default)",
                     kExitUsage);
  }
  std::string detail;
  switch (watch.wait(static_cast<int>(options.timeoutMs), &detail)) {
    case transport::HandshakeResult::kSucceeded:
      return c;
    case transport::HandshakeResult::kRefused:
      return util::err("the nexus at " + options.endpoint + " refused this client's key " +
                           c->keys_.publicKey.fingerprint() + ": if the key is new, on the nexus host run `mesh keys accept " +
                           c->keys_.publicKey.fingerprint() + " --role client`; if it is accepted already, check that " +
                           options.endpoint + " is the nexus's client port (7701 by default, not the node port) and " +
                           "that the key's role is client or admin (`mesh keys list` on the nexus host)",
                       kExitUnreachable);
    case transport::HandshakeResult::kFailed:
      return util::err("the handshake with " + options.endpoint + " failed (" + detail +
                           "): is MESH_NEXUS_KEY the key of this nexus?",
                       kExitUnreachable);
    case transport::HandshakeResult::kTimedOut:
      break;
  }
  // ZeroMQ resolves a host name in its own thread and says nothing when it cannot: look it up
  // here (a CLI may block) so that a typo or a missing DNS entry is named as such.
  if (options.endpoint.rfind("tcp://", 0) == 0) {
    std::string host = options.endpoint.substr(6, options.endpoint.rfind(':') - 6);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    int rc = host.empty() || host == "*" ? 0 : getaddrinfo(host.c_str(), nullptr, &hints, &found);
    if (found) freeaddrinfo(found);
    if (rc != 0) {
      return util::err("cannot reach the nexus at " + options.endpoint + ": cannot resolve host '" + host + "' (" +
                           gai_strerror(rc) + ")",
                       kExitUnreachable);
    }
  }
  return util::err("cannot reach the nexus at " + options.endpoint + " within " +
                       std::to_string(options.timeoutMs) + " ms: is it running, and is MESH_NEXUS_KEY its key?",
                   kExitUnreachable);
}

util::Result<wire::Decoded> Client::receive(std::int64_t timeoutMs) {
  if (poller_.size() == 0) poller_.add(socket_);
  const auto& clock = util::systemClock();
  std::int64_t deadline = clock.monotonicMs() + std::max<std::int64_t>(0, timeoutMs);
  for (;;) {
    zmq::message_t m;
    if (socket_.recv(m, zmq::recv_flags::dontwait)) {
      auto d = wire::decode(std::move(m), wire::Limits{});
      if (!d) return util::err("bad reply from the nexus: " + d.error().message, kExitFailed);
      return d;
    }
    poller_.drained(0);
    std::int64_t left = deadline - clock.monotonicMs();
    if (left <= 0 || poller_.wait(left) == 0) {
      if (clock.monotonicMs() >= deadline) return util::err("timeout", kExitUnreachable);
    }
  }
}

void Client::sendFrame(zmq::message_t&& frame, zmq::send_flags flags) {
  socket_.send(std::move(frame), flags);
  poller_.touched(socket_);
}

util::Result<wire::Decoded> Client::call(wire::Encoder& request) { return call(request, options_.timeoutMs); }

util::Result<wire::Decoded> Client::call(wire::Encoder& request, std::int64_t timeoutMs) {
  std::uint64_t id = request.envelope().getRequestId();
  if (id == 0) {
    id = nextRequestId();
    request.envelope().setRequestId(id);
  }
  sendFrame(request.finish(), zmq::send_flags::none);
  const auto& clock = util::systemClock();
  std::int64_t deadline = clock.monotonicMs() + timeoutMs;
  for (;;) {
    std::int64_t left = deadline - clock.monotonicMs();
    if (left <= 0) break;
    auto reply = receive(left);
    if (!reply) {
      if (reply.error().code == kExitUnreachable) break;
      return reply.error();
    }
    if (reply->envelope().getRequestId() != id) continue;  // a stale progress message
    if (reply->which() == proto::Envelope::Body::ERROR) {
      auto error = reply->envelope().getBody().getError();
      return util::err(std::string(wire::view(error.getMessage())),
                       error.getCode() == proto::Error::Code::ALREADY_FINISHED ? kExitFinishedAlready
                       : error.getCode() == proto::Error::Code::EXPIRED       ? kExitExpired
                       : error.getCode() == proto::Error::Code::NOT_FINISHED  ? kExitUnfinished
                                                                              : kExitFailed);
    }
    return reply;
  }
  return util::err("no answer from the nexus at " + options_.endpoint + " within " + std::to_string(timeoutMs) + " ms",
                   kExitUnreachable);
}

std::string payloadRefusal(std::uint64_t index, std::uint64_t bytes, const NexusLimits& limits, const std::string& name) {
  if (limits.maxPayloadBytes == 0 || bytes <= limits.maxPayloadBytes) return "";
  std::string frame = limits.maxFrameBytes ? " of " + std::to_string(limits.maxFrameBytes) : "";
  return "task " + std::to_string(index) + (name.empty() ? "" : " (" + name + ")") + " has a payload of " +
         std::to_string(bytes) + " bytes, over the nexus limit of " + std::to_string(limits.maxPayloadBytes) +
         " (the nexus's --max-payload, which can be raised to half its --max-frame" + frame + ")";
}

util::Result<NexusLimits> Client::limits() {
  if (limits_) return *limits_;
  wire::Encoder e(nextRequestId(), 64);
  e.body().setStatusRequest();
  auto reply = call(e);
  if (!reply) return reply.error();
  if (reply->which() != proto::Envelope::Body::STATUS_REPLY) return util::err("unexpected reply to a status request", kExitFailed);
  auto s = reply->envelope().getBody().getStatusReply();
  limits_ = NexusLimits{s.getMaxPayloadBytes(), s.getMaxFrameBytes()};
  return *limits_;
}

util::Error Client::abandon(std::uint64_t batch, std::uint64_t accepted, util::Error error) {
  std::string id = std::to_string(batch);
  std::string first = "its first " + std::to_string(accepted) + (accepted == 1 ? " task was" : " tasks were") +
                      " accepted before this failure";
  wire::Encoder e(nextRequestId(), 32);
  e.body().setCancelBatch(batch);
  auto reply = call(e, std::min(options_.timeoutMs, kCancelPatienceMs));
  if (reply && reply->which() == proto::Envelope::Body::CANCEL_ACK) {
    error.message += "; batch " + id + " was cancelled: " + first;
  } else if (!reply && reply.error().code == kExitFinishedAlready) {
    // Its sealing chunk was stored after all (its ack was what failed to come), and every task
    // has a result: the batch is complete.
    error.message += "; batch " + id + " was not cancelled: every task of it was accepted and has a result (`mesh results " +
                     id + "`)";
  } else if (!reply && reply.error().code == kExitUnreachable) {
    error.message += "; batch " + id + " stays open (" + first + ") and could not be cancelled: the nexus did not answer; "
                     "cancel it with `mesh cancel " + id + "`";
  } else {
    error.message += "; batch " + id + " stays open (" + first + "): cancelling it failed (" +
                     (reply ? std::string("unexpected reply") : reply.error().message) + "); cancel it with `mesh cancel " +
                     id + "`";
  }
  return error;
}

util::Result<std::uint64_t> Client::submit(const BatchOptions& options, const PayloadSource& payloads,
                                           const std::function<void(std::uint64_t)>& onChunk) {
  submitWarning_.clear();
  std::uint64_t batch = 0, accepted = 0, sealRequest = 0;
  // Once the batch exists, a failure leaves it open and incomplete: cancel it.
  auto failed = [&](util::Error e) -> util::Error { return batch ? abandon(batch, accepted, std::move(e)) : e; };
  std::deque<std::uint64_t> inFlight;  // request ids of chunks not yet acknowledged
  std::size_t largest = 0;             // bytes of the largest message sent
  // Replies can overtake each other: a refusal leaves at once, an ack after its commit. One for
  // a later chunk waits here until its turn.
  std::map<std::uint64_t, wire::Decoded> early;
  auto awaitAck = [&]() -> util::Status {
    const auto& clock = util::systemClock();
    std::int64_t deadline = clock.monotonicMs() + options_.timeoutMs;
    while (clock.monotonicMs() < deadline) {
      std::optional<wire::Decoded> reply;
      if (auto it = inFlight.empty() ? early.end() : early.find(inFlight.front()); it != early.end()) {
        reply.emplace(std::move(it->second));
        early.erase(it);
      } else {
        auto got = receive(deadline - clock.monotonicMs());
        if (!got) {
          if (got.error().code == kExitUnreachable) break;
          return got.error();
        }
        reply.emplace(std::move(*got));
      }
      std::uint64_t id = reply->envelope().getRequestId();
      if (inFlight.empty()) continue;
      if (id != inFlight.front()) {
        if (std::find(inFlight.begin(), inFlight.end(), id) != inFlight.end()) early.emplace(id, std::move(*reply));
        continue;
      }
      inFlight.pop_front();
      if (reply->which() == proto::Envelope::Body::ERROR) {
        std::string msg(wire::view(reply->envelope().getBody().getError().getMessage()));
        return util::err(batch ? "batch " + std::to_string(batch) + ": " + msg : msg, kExitFailed);
      }
      if (reply->which() != proto::Envelope::Body::SUBMIT_ACK) return util::err("unexpected reply to a submit", kExitFailed);
      auto ack = reply->envelope().getBody().getSubmitAck();
      if (ack.hasWarning() && submitWarning_.empty()) submitWarning_ = std::string(wire::view(ack.getWarning()));
      const bool first = batch == 0;
      batch = ack.getBatch();
      if (first && (!options.after.empty() || !options.afterDone.empty()) && ack.getDependencies() == 0) {
        // A nexus older than --after stored the batch without its dependencies and may run it
        // now: the caller cancels it.
        return util::err("the nexus does not know --after and --after-done (it is older than this mesh) and would run "
                         "batch " + std::to_string(batch) + " at once: upgrade the nexus",
                         kExitFailed);
      }
      accepted += ack.getCount();
      if (onChunk) onChunk(accepted);
      return {};
    }
    // libzmq drops a message over the nexus's --max-frame with the connection, unanswered. A
    // nexus that states its limits never gets one; an older one may have.
    std::string hint = largest > kChunkBytes * 8 && !(limits_ && limits_->maxFrameBytes)
                           ? " (a message of " + std::to_string(largest >> 20) + " MiB was sent: the nexus drops messages "
                             "over its --max-frame, 64M by default, without an answer; a payload must stay under its "
                             "--max-payload, 16M by default)"
                           : "";
    return util::err("no answer from the nexus within " + std::to_string(options_.timeoutMs) + " ms while submitting" + hint,
                     kExitUnreachable);
  };
  // Reads the next chunk, and refuses a payload the nexus would refuse (or drop unanswered)
  // before it is sent. The limits are asked when a payload over kAskLimitsAbove comes, after the
  // acks in flight have been taken (the status reply is the only one call() keeps).
  std::uint64_t read = 0;  // payloads read so far: the index of the next one in the batch
  auto readChunk = [&](std::vector<std::string>& out) -> util::Result<bool> {
    out.clear();
    std::size_t bytes = 0;
    std::uint64_t first = read;
    bool more = true, large = false;
    while (out.size() < kChunkTasks && bytes < kChunkBytes) {
      std::string p;
      auto got = payloads(&p);
      if (!got) return got.error();
      if (!*got) {
        more = false;
        break;
      }
      bytes += p.size();
      large = large || p.size() > kAskLimitsAbove;
      out.push_back(std::move(p));
    }
    read += out.size();
    if (large && !limits_) {
      while (!inFlight.empty()) {
        if (auto s = awaitAck(); !s) return s.error();
      }
      if (auto l = limits(); !l) return l.error();
    }
    if (limits_ && limits_->maxPayloadBytes) {
      for (std::size_t i = 0; i < out.size(); ++i) {
        if (out[i].size() <= limits_->maxPayloadBytes) continue;
        std::string why = payloadRefusal(first + i, out[i].size(), *limits_);
        // Before the first ack (the first two chunks are read before anything is sent) there is
        // no batch yet; after it, the caller cancels the batch and says so.
        return util::err(batch ? why : why + ": nothing was submitted", kExitFailed);
      }
    }
    return more;
  };
  auto send = [&](const std::vector<std::string>& tasks, std::size_t begin, std::size_t end, std::size_t bytes,
                  bool seal) {
    largest = std::max(largest, bytes);
    wire::Encoder e(nextRequestId(), static_cast<unsigned>(bytes / 8 + 256));
    auto s = e.body().initSubmit();
    s.setBatch(batch);
    if (batch == 0) {
      auto spec = s.initSpec();
      spec.setHandler(options.handler);
      spec.setPriority(options.priority);
      auto tags = spec.initRequires(static_cast<unsigned>(options.requiredTags.size()));
      for (unsigned i = 0; i < options.requiredTags.size(); ++i) tags.set(i, options.requiredTags[i]);
      spec.setTimeoutMs(options.timeoutMs);
      spec.setMaxAttempts(options.maxAttempts);
      spec.setLabel(options.label);
      if (options.mapStage) {
        auto mr = spec.initMapreduce();
        mr.setStage(proto::MapReduce::Stage::MAP);
        mr.setPartitions(options.partitions);
        mr.setCombiner(options.combiner);
        mr.setReducer(options.reducer);
      }
      if (!options.after.empty()) {
        auto ids = spec.initAfter(static_cast<unsigned>(options.after.size()));
        for (unsigned i = 0; i < options.after.size(); ++i) ids.set(i, options.after[i]);
      }
      if (!options.afterDone.empty()) {
        auto ids = spec.initAfterDone(static_cast<unsigned>(options.afterDone.size()));
        for (unsigned i = 0; i < options.afterDone.size(); ++i) ids.set(i, options.afterDone[i]);
      }
    }
    auto list = s.initPayloads(static_cast<unsigned>(end - begin));
    for (std::size_t i = begin; i < end; ++i) list.set(static_cast<unsigned>(i - begin), wire::asData(tasks[i]));
    s.setSeal(seal);
    if (seal && options.watch) {
      s.setWatch(true);
      sealRequest = e.envelope().getRequestId();
    }
    inFlight.push_back(e.envelope().getRequestId());
    sendFrame(e.finish(), zmq::send_flags::none);
  };
  // Sends a chunk: as one message, or as several when the nexus's --max-frame is known and
  // the chunk could pass it (a small --max-frame, or the payload that made us ask). Up to
  // kWindow messages are in flight; the first one alone until its ack gives the batch id.
  auto sendChunk = [&](const std::vector<std::string>& tasks, bool seal) -> util::Status {
    std::size_t budget = limits_ && limits_->maxFrameBytes ? limits_->maxFrameBytes / 4 * 3 : SIZE_MAX;
    std::size_t begin = 0;
    do {
      if (batch == 0 && !inFlight.empty()) {
        if (auto s = awaitAck(); !s) return s;
      }
      std::size_t end = begin, bytes = 0;
      while (end < tasks.size() && (end == begin || bytes + tasks[end].size() + 16 <= budget)) {
        bytes += tasks[end].size() + 16;
        ++end;
      }
      send(tasks, begin, end, bytes, seal && end == tasks.size());
      begin = end;
      while (inFlight.size() >= kWindow) {
        if (auto s = awaitAck(); !s) return s;
      }
    } while (begin < tasks.size());
    return {};
  };
  // Read one chunk ahead so the last chunk can carry the seal.
  std::vector<std::string> chunk, next;
  auto more = readChunk(chunk);
  if (!more) return more.error();
  bool hasMore = *more;
  if (hasMore) {
    auto m2 = readChunk(next);
    if (!m2) return m2.error();
    hasMore = *m2 || !next.empty();
  }
  if (auto s = sendChunk(chunk, !hasMore); !s) return failed(s.error());
  if (batch == 0 && !inFlight.empty()) {
    if (auto s = awaitAck(); !s) return failed(s.error());  // the batch id, before anything can fail
  }
  while (hasMore) {
    chunk.swap(next);
    auto m = readChunk(next);
    if (!m) return failed(m.error());
    hasMore = *m || !next.empty();
    if (auto s = sendChunk(chunk, !hasMore); !s) return failed(s.error());
  }
  while (!inFlight.empty()) {
    if (auto s = awaitAck(); !s) return failed(s.error());
  }
  if (sealRequest != 0) {
    watchedBatch_ = batch;
    watchedRequest_ = sealRequest;
  }
  return batch;
}

util::Result<RetryOutcome> Client::retry(const RetryOptions& options) {
  std::uint64_t id = nextRequestId();
  wire::Encoder e(id, 64);
  auto req = e.body().initRetry();
  req.setBatch(options.batch);
  req.setPriority(static_cast<std::int16_t>(options.priority));
  req.setTimeoutMs(options.timeoutMs);
  req.setMaxAttempts(options.maxAttempts);
  req.setLabel(options.label);
  req.setWatch(options.watch);
  auto reply = call(e, std::max<std::int64_t>(options_.timeoutMs, 60000));
  if (!reply) {
    if (reply.error().code == kExitUnreachable) {
      return util::err(reply.error().message + ": the retry may have been made or not (`mesh status` lists the "
                                               "latest batches)",
                       kExitUnreachable);
    }
    return reply.error();
  }
  if (reply->which() != proto::Envelope::Body::RETRY_ACK) return util::err("unexpected reply to a retry", kExitFailed);
  auto ack = reply->envelope().getBody().getRetryAck();
  RetryOutcome out;
  out.batch = ack.getBatch();
  out.firstTask = ack.getFirstTask();
  out.count = ack.getCount();
  out.warning = std::string(wire::view(ack.getWarning()));
  if (options.watch && out.batch != 0) {
    watchedBatch_ = out.batch;
    watchedRequest_ = id;
  }
  return out;
}

util::Result<ProgressView> Client::progress(std::uint64_t batch) {
  wire::Encoder e(nextRequestId(), 32);
  e.body().initWatch().setBatch(batch);
  auto reply = call(e);
  if (!reply) return reply.error();
  if (reply->which() != proto::Envelope::Body::PROGRESS) return util::err("unexpected reply to a watch", kExitFailed);
  return progressView(reply->envelope().getBody().getProgress());
}

util::Result<ProgressView> Client::wait(std::uint64_t batch, const std::function<void(const ProgressView&)>& onProgress,
                                        std::int64_t patienceMs) {
  const auto& clock = util::systemClock();
  std::int64_t lastHeard = clock.monotonicMs();
  std::int64_t lastAsked = 0;
  std::uint64_t watchId = 0;
  if (batch == watchedBatch_) {
    // The submit asked for this batch's progress already (BatchOptions::watch).
    watchId = watchedRequest_;
    lastAsked = lastHeard;
  }
  watchedBatch_ = 0;
  for (;;) {
    std::int64_t now = clock.monotonicMs();
    if (watchId == 0 || (now - lastAsked >= 1000 && now - lastHeard >= 1000)) {
      // Ask (again): the first time, and whenever the nexus has been silent for a second, which
      // covers a nexus restart (the new one does not know this watcher).
      watchId = nextRequestId();
      wire::Encoder e(watchId, 32);
      e.body().initWatch().setBatch(batch);
      sendFrame(e.finish(), zmq::send_flags::dontwait);
      lastAsked = now;
    }
    if (now - lastHeard > patienceMs) {
      return util::err("lost the nexus at " + options_.endpoint + " for " + std::to_string(patienceMs / 1000) +
                           " s while waiting for batch " + std::to_string(batch) + " (it keeps running: `mesh wait " +
                           std::to_string(batch) + "` again)",
                       kExitUnreachable);
    }
    auto reply = receive(250);
    if (!reply) {
      if (reply.error().code == kExitUnreachable) continue;
      return reply.error();
    }
    lastHeard = clock.monotonicMs();
    auto body = reply->envelope().getBody();
    if (reply->which() == proto::Envelope::Body::ERROR) {
      if (reply->envelope().getRequestId() != watchId) continue;
      return util::err(std::string(wire::view(body.getError().getMessage())),
                       body.getError().getCode() == proto::Error::Code::EXPIRED ? kExitExpired : kExitFailed);
    }
    if (reply->which() != proto::Envelope::Body::PROGRESS) continue;
    ProgressView v = progressView(body.getProgress());
    if (v.batch != batch) continue;
    if (onProgress) onProgress(v);
    if (v.finished) {
      if (body.getProgress().getResults().size() == v.total) {
        finishedBatch_ = batch;
        finishedProgress_ = std::move(*reply);
      }
      return v;
    }
  }
}

util::Status Client::results(std::uint64_t batch, const std::function<bool(proto::ResultRow::Reader)>& onRow,
                             bool* finished, bool* cancelled) {
  if (finished) *finished = false;
  if (cancelled) *cancelled = false;
  if (finishedProgress_ && finishedBatch_ == batch) {
    if (finished) *finished = true;
    if (cancelled) *cancelled = progressView(finishedProgress_->envelope().getBody().getProgress()).batchCancelled;
    for (auto r : finishedProgress_->envelope().getBody().getProgress().getResults()) {
      if (!onRow(r)) break;
    }
    return {};
  }
  std::uint64_t from = 0;
  // Each page ends past its last row, and the nexus caps a batch's tasks: the bound is generous.
  for (std::uint64_t page = 0; page < (1ull << 32); ++page) {
    wire::Encoder e(nextRequestId(), 32);
    auto req = e.body().initFetchResults();
    req.setBatch(batch);
    req.setFromIndex(from);
    req.setLimit(1000);
    auto reply = call(e);
    if (!reply) return reply.error();
    if (reply->which() != proto::Envelope::Body::RESULT_PAGE) return util::err("unexpected reply to a results request", kExitFailed);
    auto rows = reply->envelope().getBody().getResultPage();
    // The first page's answer holds for the rest: a batch finished then cannot change after.
    if (finished && page == 0) *finished = rows.getFinished();
    if (cancelled && page == 0) *cancelled = rows.getBatchCancelled();
    for (auto r : rows.getRows()) {
      if (!onRow(r)) return {};
    }
    if (rows.getEnd() || rows.getRows().size() == 0) return {};
    from = rows.getNextIndex();
  }
  return {};
}

}  // namespace mesh::node
