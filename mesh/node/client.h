// The client API: what the `mesh` CLI (and any C++ program) uses to talk to a nexus.
//
// Errors carry an exit code in Error::code: 3 when the nexus cannot be reached or refuses this
// client's key, 1 when the nexus answered with an error (5 when that error is alreadyFinished:
// a cancel of a batch that has finished; 6 when it is expired: a batch whose tasks and results
// were removed; 4 when it is notFinished: a retry of a batch that has not finished), 2 for bad
// input detected here.
//
// Thread rule: a Client (and its socket) belongs to the thread that made it.
//
// Memory: a program that submits large batches should call util::retainFreedMemory()
// (mesh/util/memory.h) first thing in main(), as `mesh` does. Without it glibc returns each
// submit chunk's buffers (MiBs) to the kernel and faults them in again: measured about 15 µs per
// 4 KiB task.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "mesh/crypto/keys.h"
#include "mesh/transport/poller.h"
#include "mesh/util/result.h"
#include "mesh/wire/codec.h"

namespace mesh::node {

constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;
constexpr int kExitUnfinished = 4;  // `mesh results` or `mesh retry` of a batch that has not finished
constexpr int kExitFinishedAlready = 5;  // `mesh cancel` of a batch that has finished: not cancelled
// `mesh results`, `mesh task`: the batch finished and its tasks and results were removed
// (the nexus's --keep-finished).
constexpr int kExitExpired = 6;

struct ClientOptions {
  std::string endpoint;        // the nexus client port, tcp://HOST:7701
  crypto::PublicKey nexusKey;
  std::string keyFile;         // this client's key pair
  std::int64_t timeoutMs = 10000;
};

struct BatchOptions {
  std::string handler;
  std::uint8_t priority = 0;
  std::vector<std::string> requiredTags;
  std::uint32_t timeoutMs = 0;
  std::uint8_t maxAttempts = 0;
  std::string label;
  // A map-reduce job: the handler is the mapper; the nexus starts `reducer` on R partitions.
  bool mapStage = false;
  std::uint32_t partitions = 0;
  std::string combiner;
  std::string reducer;
  // Ask the nexus, with the sealing chunk, to stream this batch's progress from the moment it is
  // stored: a wait() on the batch that follows then needs no Watch round trip of its own.
  // Leave it off when nothing will wait (the progress messages would queue up unread).
  bool watch = false;
  // Batches it waits for (protocol section 4.21): to finish with every task succeeded (after),
  // or to finish at all (afterDone). Sent with the first chunk only.
  std::vector<std::uint64_t> after, afterDone;
};

struct ProgressView {
  std::uint64_t batch = 0, total = 0, queued = 0, running = 0, succeeded = 0, failed = 0, cancelled = 0;
  bool sealed = false, finished = false;
  // The batch was cancelled (`mesh cancel`, or a submit that failed part-way). It may have no
  // cancelled task: the cancel ends only the tasks that had not ended. Not a clean success.
  bool batchCancelled = false;
  std::uint64_t nextBatch = 0;  // a map stage: its reduce batch
  std::string note;             // why a job stopped early
  std::uint8_t stage = 0;       // 0 a plain batch, 1 a job's map stage, 2 a reduce stage
  std::int64_t expiredMs = 0;   // its tasks and results were removed then (--keep-finished)
  std::string expiry;           // with expiredMs: the nexus's one line about it
  std::vector<std::uint64_t> after, afterDone;  // the batches it waits (or waited) for
  bool waiting = false;                         // held until those finish: none of its tasks runs yet
  std::vector<std::uint64_t> waitingFor;        // with waiting: those not finished yet
};

// `mesh retry`: what may differ from the batch retried (0, -1, empty: as it was).
struct RetryOptions {
  std::uint64_t batch = 0;      // the finished batch whose failed tasks run again
  int priority = -1;            // 0-255; -1: the original's
  std::uint32_t timeoutMs = 0;  // per attempt
  std::uint8_t maxAttempts = 0;
  std::string label;            // empty: "LABEL (retry of batch N)", or "retry of batch N"
  bool watch = false;           // as BatchOptions::watch
};

struct RetryOutcome {
  std::uint64_t batch = 0;      // the new batch; 0: the original had no failed task, none was made
  std::uint64_t firstTask = 0;  // its tasks' ids are firstTask .. firstTask + count - 1
  std::uint64_t count = 0;
  std::string warning;          // as submitWarning()
};

// Supplies payloads in order; returns false when there are no more.
using PayloadSource = std::function<util::Result<bool>(std::string* payload)>;

// The nexus's size limits, from its StatusReply. 0: unknown (a nexus older than those fields).
struct NexusLimits {
  std::uint64_t maxPayloadBytes = 0;  // the largest payload of one task (--max-payload)
  std::uint64_t maxFrameBytes = 0;    // the largest message it takes (--max-frame)
};

// A payload larger than this makes Client::submit ask the nexus's limits (once per Client)
// before it sends the payload. A smaller one goes unasked: the nexus refuses it with an answer
// if it must, and an ordinary submit costs no extra round trip.
constexpr std::uint64_t kAskLimitsAbove = 1u << 20;

// Why a payload of `bytes` for task `index` cannot go to a nexus with `limits`, in one line that
// names the limit and the option that raises it; empty when it can (or the limit is unknown).
// `name`, when given, says where the task came from (a file name).
std::string payloadRefusal(std::uint64_t index, std::uint64_t bytes, const NexusLimits& limits,
                           const std::string& name = "");

class Client {
 public:
  // Connects and completes the Curve handshake, or fails with code 3 and a message that says
  // what to do (unreachable, key refused, wrong nexus key).
  static util::Result<std::unique_ptr<Client>> connect(zmq::context_t& ctx, const ClientOptions& options);

  // Sends one request and returns the reply with its request id (an Error reply becomes an
  // Error with code 1). Waits at most the client's timeout.
  util::Result<wire::Decoded> call(wire::Encoder& request);

  // Submits a batch in chunks (pipelined), sealing it at the end. Calls onChunk after each
  // acknowledged chunk with the number of tasks accepted so far. Returns the batch id.
  // A payload over the nexus's --max-payload is refused here, before it is sent (code 1), when
  // the limits are known: they are asked (limits()) when a payload over kAskLimitsAbove comes.
  // When the submit fails after its batch exists (a later chunk refused or too large, the nexus
  // silent, `payloads` failing), the incomplete batch is cancelled, and the error says so, or
  // says that it stays open and how to cancel it when the cancel got no answer.
  util::Result<std::uint64_t> submit(const BatchOptions& options, const PayloadSource& payloads,
                                     const std::function<void(std::uint64_t)>& onChunk = {});
  // Makes a new batch of the failed tasks of a finished batch (protocol section 4.17), stored
  // before the answer like a submit. The nexus may take a while to copy a large batch: the
  // answer is awaited for max(timeout, 60 s). Errors: code 4 for a batch that has not
  // finished, 6 for one whose tasks were removed, 1 for the other refusals.
  util::Result<RetryOutcome> retry(const RetryOptions& options);
  // What the nexus warned about the last submit (SubmitAck.warning), or empty.
  const std::string& submitWarning() const { return submitWarning_; }

  // The batch's progress now (one Watch answered; an unknown batch is an error with code 1).
  util::Result<ProgressView> progress(std::uint64_t batch);
  // Waits until the batch finishes, calling onProgress for each update. Survives a nexus
  // restart (re-asks every second while nothing arrives); gives up after `patienceMs` of
  // silence with code 3. After a submit with BatchOptions::watch it listens to the progress
  // that submit asked for instead of asking again.
  util::Result<ProgressView> wait(std::uint64_t batch, const std::function<void(const ProgressView&)>& onProgress,
                                  std::int64_t patienceMs);

  // Calls onRow with each committed final result of the batch, in index order, until it returns
  // false. A small batch that wait() has just seen finish brought its results with its last
  // Progress: those are used, without a round trip. Otherwise reads them page by page
  // (FetchResults); a batch still running gives the results that exist so far. `finished`, when
  // given, says whether the batch had finished before its results were read (then they are all
  // there, unless onRow stopped early). `cancelled`, when given, says whether the batch had
  // been cancelled then: its results are not all those its submitter meant to have.
  util::Status results(std::uint64_t batch, const std::function<bool(proto::ResultRow::Reader)>& onRow,
                       bool* finished = nullptr, bool* cancelled = nullptr);

  // The nexus's limits: asked once with a statusRequest, then remembered. Never call it while
  // requests of this Client are unanswered (it reads only its own reply and drops the others).
  util::Result<NexusLimits> limits();

  std::uint64_t nextRequestId() { return ++requestId_; }
  const crypto::PublicKey& publicKey() const { return keys_.publicKey; }

 private:
  std::string submitWarning_;
  Client(zmq::context_t& ctx, ClientOptions options) : ctx_(ctx), options_(std::move(options)) {}
  util::Result<wire::Decoded> receive(std::int64_t timeoutMs);
  util::Result<wire::Decoded> call(wire::Encoder& request, std::int64_t timeoutMs);
  // The error of a submit that failed after its batch was opened, with the cancel's outcome.
  util::Error abandon(std::uint64_t batch, std::uint64_t accepted, util::Error error);
  void sendFrame(zmq::message_t&& frame, zmq::send_flags flags);

  zmq::context_t& ctx_;
  ClientOptions options_;
  crypto::KeyPair keys_;
  zmq::socket_t socket_;
  transport::Poller poller_;  // watches socket_ (entry 0) once it is connected
  std::uint64_t requestId_ = 0;
  // The last batch submitted with BatchOptions::watch, and the request id its progress carries.
  std::uint64_t watchedBatch_ = 0;
  std::uint64_t watchedRequest_ = 0;
  // The last Progress of the last batch wait() saw finish, when it carried every result.
  std::uint64_t finishedBatch_ = 0;
  std::optional<wire::Decoded> finishedProgress_;
  std::optional<NexusLimits> limits_;  // once asked
};

ProgressView progressView(proto::Progress::Reader p);
// The batch's state in one word, as `mesh status` and the --json outputs show it: "waiting" (held
// until the batches it waits for finish: mesh submit --after), "open" (not sealed), "running", "finished" (every task has a result; the batch was not cancelled),
// "cancelling" (cancelled; the ends of its tasks not yet all written), "cancelled", "expired"
// (finished, and its tasks and results removed after the nexus's --keep-finished).
const char* batchState(const ProgressView& p);
const char* taskStatusName(proto::TaskStatus s);
// "[12,13]": ids as a JSON array.
std::string jsonIds(const std::vector<std::uint64_t>& ids);

}  // namespace mesh::node
