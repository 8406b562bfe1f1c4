# Hive Mesh wire protocol. One ZeroMQ frame carries one Envelope (plus the routing frame on a
# ROUTER). docs/protocol.md describes the flow. Rules for changing this file: never renumber or
# retype a field; add fields and union arms at the end; bump protocolVersion only for changes
# an old peer cannot ignore.
@0xd79da499abba8c7f;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("mesh::proto");

const protocolVersion :UInt16 = 1;

struct Envelope {
  version @0 :UInt16;
  requestId @1 :UInt64;   # chosen by the requester, echoed in the reply; 0 for unsolicited
  body :union {
    # ---- node port: spore <-> nexus -------------------------------------------------------
    hello @2 :Hello;             # spore -> nexus, first message on every (re)connection
    welcome @3 :Welcome;         # nexus -> spore, answer to hello
    heartbeat @4 :Heartbeat;     # both ways, every heartbeat interval
    assign @5 :Assign;           # nexus -> spore: tasks to run
    results @6 :Results;         # spore -> nexus: finished tasks
    cancelTasks @7 :CancelTasks; # nexus -> spore: stop these tasks, their result is not wanted
    # ---- client port: mesh CLI / client API <-> nexus --------------------------------------
    submit @8 :Submit;
    submitAck @9 :SubmitAck;
    watch @10 :Watch;
    progress @11 :Progress;
    fetchResults @12 :FetchResults;
    resultPage @13 :ResultPage;
    statusRequest @14 :Void;
    statusReply @15 :StatusReply;
    nodesRequest @16 :Void;
    nodesReply @17 :NodesReply;
    taskRequest @18 :UInt64;     # task id
    taskReply @19 :TaskInfo;
    cancelBatch @20 :UInt64;     # batch id
    cancelAck @21 :CancelAck;
    error @22 :Error;            # reply to any request that could not be served
    # ---- events port: PUB -> SUB, hints only -----------------------------------------------
    event @23 :Event;
    # ---- signed bundles (docs/bundles.md, docs/protocol.md) ---------------------------------
    bundleUpload @24 :BundleUpload;       # client -> nexus: the next chunk of a publish (admin)
    bundleUploadAck @25 :BundleUploadAck; # nexus -> client: credit for the next chunk, or done
    bundleFetch @26 :BundleFetch;         # spore -> nexus: bytes of a stored bundle
    bundleChunk @27 :BundleChunk;         # nexus -> spore: answer to bundleFetch
    bundleReport @28 :BundleReport;       # spore -> nexus: an install, refusal, rollback or state
    bundleListRequest @29 :Void;          # spore -> nexus: which bundles are current?
    bundleList @30 :List(BundleRef);      # nexus -> spore: answer to bundleListRequest
    bundlesRequest @31 :Void;             # client -> nexus: `mesh bundles`
    bundlesReply @32 :BundlesReply;
    # ---- a spore's stop (docs/protocol.md, "A spore that stops") ------------------------------
    leaving @33 :Leaving;                 # spore -> nexus: it is stopping
    leftAck @34 :Void;                    # nexus -> spore: answer to a final leaving
    # ---- client port, later additions ------------------------------------------------------
    retry @35 :Retry;            # client -> nexus: `mesh retry`, a new batch of a batch's failed tasks
    retryAck @36 :RetryAck;
    taskAtRequest @37 :TaskRef;  # client -> nexus: `mesh task BATCH:INDEX` (batch and index set); reply taskReply
    batchesRequest @38 :BatchesRequest;  # client -> nexus: `mesh batches`, a page of the stored batches
    batchesReply @39 :BatchesReply;
    # ---- recall and drain (docs/protocol.md section 4.20) -----------------------------------
    recall @40 :TaskAttempts;    # nexus -> spore: hand these back if you have not started them
    handBack @41 :TaskAttempts;  # spore -> nexus: these were not started and will not be (may be empty)
    drainRequest @42 :DrainRequest;  # client -> nexus (admin): `mesh nodes drain|undrain`
    drainAck @43 :DrainAck;
    nodesAllRequest @44 :Void;   # client -> nexus: `mesh nodes --all` (nodesReply with offline keys too)
  }
}

struct Error {
  code @0 :Code;
  message @1 :Text;            # one line, says what to do
  enum Code {
    badRequest @0;      # malformed, unknown kind, out-of-range field
    notFound @1;        # no such batch or task
    forbidden @2;       # the key's role may not do this
    tooLarge @3;        # payload or batch over the configured limit
    unavailable @4;     # nexus is busy (queue full) or shutting down: retry later
    unknownHandler @5;  # no live spore has announced this handler
    internal @6;        # a bug or a storage failure on the nexus; see its log
    helloFirst @7;      # node port: this connection has not said hello (to this nexus run)
    keyInUse @8;        # node port: hello refused, another live connection has this key
    alreadyFinished @9; # cancelBatch of a batch that has finished: nothing was cancelled
    expired @10;        # the batch (or the task's batch) finished, and its tasks and results
                        # were removed after --keep-finished; the message says when
    notFinished @11;    # retry of a batch that has not finished: wait for it first
  }
}

# ---- node port -------------------------------------------------------------------------------

struct Hello {
  name @0 :Text;               # human name of the spore (host name by default)
  softwareVersion @1 :Text;
  slots @2 :UInt16;            # tasks it runs at once
  tags @3 :List(Text);         # capabilities, matched against a batch's requirements
  handlers @4 :List(Text);     # handler names it can run
  running @5 :List(UInt64);    # task ids still running from before a reconnect
  advertise @6 :Text;          # address the operator pinned with --advertise, or empty
  foundBy @7 :Text;            # "seed" or "beacon"
  pid @8 :UInt32;
  runningAttempts @9 :List(UInt8);  # the attempt number of each task in `running`
  done @10 :List(UInt64);      # tasks finished here whose results it sends after the welcome
  instance @11 :UInt64;        # random, drawn once per spore process (0: a spore before it): a
                               # hello with another instance than its key's connection is a restart
}

# A spore that is asked to stop (SIGTERM) lets its running tasks finish, for at most graceMs,
# and hands back the ones it holds and has not started: none of it is charged to the tasks.
struct Leaving {
  graceMs @0 :UInt32;          # how long it lets its running tasks finish
  final @1 :Bool;              # false: send it no more tasks; true: it is gone now, and every
                               # task it has not reported a result for goes back to the queue
  giveBack @2 :List(UInt64);   # tasks it holds and will not start: back to the queue now
  giveBackAttempts @3 :List(UInt8);  # the attempt of each task in giveBack
}

# Tasks by id, each with the attempt it is under (the lists have the same length).
struct TaskAttempts {
  ids @0 :List(UInt64);
  attempts @1 :List(UInt8);
}

struct Welcome {
  heartbeatMs @0 :UInt32;
  missedBeats @1 :UInt8;       # peers are declared dead after this many silent intervals
  nexusName @2 :Text;
  eventsPort @3 :UInt16;       # the PUB port, on the same host as the node port
  bundles @4 :List(BundleRef); # the current bundles, so that a late joiner fetches them
}

struct Heartbeat {
  cpuPct @0 :Float32;          # whole-host CPU busy, 0-100, from /proc/stat
  memPct @1 :Float32;          # 100 - MemAvailable/MemTotal, from /proc/meminfo
  running @2 :UInt32;          # tasks executing now
  freeSlots @3 :UInt32;
  # Tasks that started since the last beat and are still running (at most 4096; the rest go
  # with the next beat), and after each welcome every running one again: the nexus shows the
  # start of a running attempt, and keeps it for an attempt that ends without a report.
  started @4 :List(TaskStart);
}

struct TaskStart {
  id @0 :UInt64;
  attempt @1 :UInt8;
  startedMs @2 :Int64;         # wall clock of the spore, ms since the epoch
}

struct TaskRun {
  id @0 :UInt64;
  attempt @1 :UInt8;           # 1 for the first run
  handler @2 :Text;
  payload @3 :Data;
  timeoutMs @4 :UInt32;        # 0: no deadline
  mapreduce @5 :MapReduce;     # stage none: run the handler on the payload as is
  priority @6 :UInt8;          # the batch's: a spore starts its queued tasks highest first
}

# Map-reduce (the Hadoop Streaming contract, docs/protocol.md): a map task runs the mapper (and
# the combiner) on an input chunk and returns its output split into `partitions` sorted parts
# (framed); a reduce task receives the parts of one partition from every map task, merges them
# and runs the reducer on the merged, sorted lines.
struct MapReduce {
  stage @0 :Stage;
  partitions @1 :UInt32;       # R: the number of reduce tasks
  combiner @2 :Text;           # map stage: run on the sorted mapper output; empty: none
  reducer @3 :Text;            # map batches: the handler of the reduce stage the nexus starts
  enum Stage {
    none @0;
    map @1;
    reduce @2;
  }
}

struct Assign {
  tasks @0 :List(TaskRun);
}

enum TaskStatus {
  ok @0;
  failed @1;          # the handler reported failure; `error` says why
  timedOut @2;        # killed at its deadline
  crashed @3;         # the handler process died by a signal or the spore died under it
  unknownHandler @4;  # this spore cannot run the handler
  cancelled @5;
  quarantined @6;     # killed its spore too many times; never retried
}

struct TaskResult {
  id @0 :UInt64;
  attempt @1 :UInt8;
  status @2 :TaskStatus;
  output @3 :Data;
  error @4 :Text;
  startedMs @5 :Int64;         # wall clock, ms since the epoch
  durationUs @6 :UInt64;
  # The signed bundle whose program ran the task's handler: its name and version ("" and 0 for
  # a built-in or a program of the spore's --handlers directory).
  bundle @7 :Text;
  bundleVersion @8 :UInt64;
}

struct Results {
  results @0 :List(TaskResult);
}

struct CancelTasks {
  ids @0 :List(UInt64);
}

# ---- client port -----------------------------------------------------------------------------

struct BatchSpec {
  handler @0 :Text;
  priority @1 :UInt8;          # 0-255, higher runs first
  requires @2 :List(Text);     # tags a spore must have
  timeoutMs @3 :UInt32;        # per attempt; 0 = the nexus default
  maxAttempts @4 :UInt8;       # 0 = the nexus default
  label @5 :Text;
  mapreduce @6 :MapReduce;     # stage map: a map-reduce job (the client may not submit reduce)
  # Batches this one waits for (docs/protocol.md section 4.21): none of its tasks is dispatched
  # until each has finished, those in `after` with every task succeeded (else this batch is
  # cancelled), those in `afterDone` whatever their outcome. A map-reduce job's id counts as
  # finished once its last stage has. Lower ids only, at most 64 in all; new batches only.
  after @7 :List(UInt64);
  afterDone @8 :List(UInt64);
}

struct Submit {
  batch @0 :UInt64;            # 0 opens a new batch with `spec`; else appends to that open batch
  spec @1 :BatchSpec;
  payloads @2 :List(Data);     # one task each, in order
  seal @3 :Bool;               # no task will be added after these
  watch @4 :Bool;              # send Progress to this connection as the batch advances
}

struct SubmitAck {
  batch @0 :UInt64;
  firstTask @1 :UInt64;        # the tasks of this chunk have ids firstTask .. firstTask+count-1
  firstIndex @2 :UInt64;       # and indexes firstIndex .. within their batch
  count @3 :UInt32;
  warning @4 :Text;            # something the submitter should know, e.g. no live spore can run it yet
  dependencies @5 :UInt16;     # the batches it waits for (--after, --after-done) as the nexus took
                               # them: 0 from a nexus older than BatchSpec.after, which ignores them
}

struct Watch {
  batch @0 :UInt64;            # progress is sent at least every 250 ms and when the batch ends
}

struct Progress {
  batch @0 :UInt64;
  total @1 :UInt64;            # tasks accepted so far
  sealed @2 :Bool;
  queued @3 :UInt64;
  running @4 :UInt64;
  succeeded @5 :UInt64;
  failed @6 :UInt64;           # failed for good (attempts exhausted, quarantined)
  cancelled @7 :UInt64;
  finished @8 :Bool;           # sealed and every task has a final recorded result
  nextBatch @9 :UInt64;        # a map stage: its reduce batch, once the nexus has started it
  note @10 :Text;              # why a job stopped early (e.g. map tasks failed: no reduce stage)
  results @11 :List(ResultRow);
  # With `finished` only, and only for a small batch whose watcher was registered before its
  # results came in: every final result, in index order (then results.size() == total).
  # Otherwise empty: page them with FetchResults.
  stage @12 :UInt8;            # 0 a plain batch, 1 the map stage of a job, 2 a reduce stage
  batchCancelled @13 :Bool;    # the batch was cancelled (cancelBatch), whatever its tasks'
                               # results: it may have no cancelled task (all had ended)
  expiredMs @14 :Int64;        # 0, or when the finished batch's tasks and results were removed
                               # (--keep-finished); the counts stay
  expiry @15 :Text;            # with expiredMs: one line that says when it finished and was removed
  after @16 :List(UInt64);     # as its BatchSpec.after (section 4.21), ascending
  afterDone @17 :List(UInt64); # as its BatchSpec.afterDone
  waiting @18 :Bool;           # held: none of its tasks is dispatched until those it waits for finish
  waitingFor @19 :List(UInt64);  # with waiting: those of after and afterDone that have not finished yet
}

struct FetchResults {
  batch @0 :UInt64;
  fromIndex @1 :UInt64;
  limit @2 :UInt32;
}

struct ResultRow {
  task @0 :UInt64;
  index @1 :UInt64;
  status @2 :TaskStatus;
  output @3 :Data;
  error @4 :Text;
  attempts @5 :UInt8;
  node @6 :Text;
  retryOf @7 :TaskRef;         # a task made by `mesh retry`: the failed task it runs again; unset otherwise
}

# A task by its batch, id and index in that batch.
struct TaskRef {
  batch @0 :UInt64;
  task @1 :UInt64;
  index @2 :UInt64;
}

struct ResultPage {
  batch @0 :UInt64;
  rows @1 :List(ResultRow);    # final results only, by index; tasks still pending are skipped
  nextIndex @2 :UInt64;        # ask again from here
  end @3 :Bool;                # no index at or after nextIndex can have a result yet
  finished @4 :Bool;           # the batch had finished (every result committed) before this
                               # page was read: with end, the batch's results are all there
  batchCancelled @5 :Bool;     # the batch was cancelled (as Progress.batchCancelled)
}

struct Counter {
  name @0 :Text;
  value @1 :UInt64;
}

struct BatchSummary {
  id @0 :UInt64;
  label @1 :Text;
  handler @2 :Text;
  priority @3 :UInt8;
  progress @4 :Progress;
  submittedMs @5 :Int64;
  # Set in a BatchesReply (0 or empty in a StatusReply):
  finishedMs @6 :Int64;        # 0: not finished
  retryOf @7 :UInt64;          # a batch made by `mesh retry`: the batch it retries; else 0
  owner @8 :Text;              # the fingerprint of the key that submitted it
}

# `mesh batches`: the batches the nexus has stored, newest (highest id) first, a page at a time.
# docs/protocol.md section 4.19.
struct BatchesRequest {
  state @0 :BatchState;        # only batches in this state; all: any
  label @1 :Text;              # with byLabel: only batches with exactly this label (at most 256 bytes)
  byLabel @2 :Bool;
  limit @3 :UInt32;            # 1-1000 batches in the reply
  before @4 :UInt64;           # only batches with a lower id; 0: from the newest
  mine @5 :Bool;               # only batches submitted with the requester's key
  failedOnly @6 :Bool;         # only finished batches with a failed task (what `mesh retry` takes)
  enum BatchState {
    all @0;
    open @1;                   # not sealed: its client may add tasks
    running @2;                # sealed, not finished
    cancelling @3;             # cancelled, the ends of its tasks not all written
    finished @4;               # every task has a result; not cancelled
    cancelled @5;              # finished after a cancel
    expired @6;                # finished, and its tasks and results removed (--keep-finished)
    waiting @7;                # held until the batches it waits for finish (mesh submit --after)
  }
}

struct BatchesReply {
  batches @0 :List(BatchSummary);  # at most the limit asked, highest id first; progress.expiry is empty
  nextBefore @1 :UInt64;       # 0: no batch with a lower id exists. Else ask again with before =
                               # nextBefore for more: the nexus looks at a bounded range of ids per
                               # request, so a page may hold fewer batches than asked (even none)
                               # while older ones match.
}

struct StatusReply {
  nexusName @0 :Text;
  softwareVersion @1 :Text;
  uptimeMs @2 :UInt64;
  nodesAlive @3 :UInt32;
  slotsTotal @4 :UInt32;
  queued @5 :UInt64;
  running @6 :UInt64;
  batches @7 :List(BatchSummary);   # batches not finished, and the latest finished ones
  counters @8 :List(Counter);
  maxPayloadBytes @9 :UInt64;  # --max-payload: the largest payload of one task in a Submit
  maxFrameBytes @10 :UInt64;   # --max-frame: the largest message it takes (a larger one is
                               # dropped with its connection, unanswered). Both 0 from a nexus
                               # older than these fields: unknown.
  keysPending @11 :UInt32;     # keys refused and waiting for `mesh keys accept` (at most 1,000)
}

struct NodeInfo {
  key @0 :Text;                # z85 public key
  fingerprint @1 :Text;
  name @2 :Text;
  address @3 :Text;
  foundBy @4 :Text;
  tags @5 :List(Text);
  slots @6 :UInt16;
  inFlight @7 :UInt32;         # counted by the nexus
  cpuPct @8 :Float32;
  memPct @9 :Float32;
  score @10 :Float32;
  lastBeatMsAgo @11 :UInt64;
  alive @12 :Bool;
  tasksDone @13 :UInt64;
  connectedMs @14 :Int64;
  softwareVersion @15 :Text;
  handlers @16 :List(Text);
  leaving @17 :Bool;           # stopping: it finishes what it runs and takes no new task
  drained @18 :Bool;           # drained (`mesh nodes drain`): takes no new task; with inFlight 0
                               # it holds none (drained), else its running ones finish (draining)
}

struct NodesReply {
  nodes @0 :List(NodeInfo);
}

struct Attempt {
  number @0 :UInt8;
  node @1 :Text;               # name (fingerprint) of the spore
  assignedMs @2 :Int64;
  startedMs @3 :Int64;
  endedMs @4 :Int64;
  outcome @5 :Text;            # ok, failed, timed out, crashed, node lost, ...
  error @6 :Text;
  bundle @7 :Text;             # TaskResult.bundle of the attempt's result; "" when none came
  bundleVersion @8 :UInt64;
}

struct TaskInfo {
  id @0 :UInt64;
  batch @1 :UInt64;
  index @2 :UInt64;
  handler @3 :Text;
  state @4 :Text;              # queued, waiting (retry backoff), running, succeeded, failed, ...
  priority @5 :UInt8;
  requires @6 :List(Text);
  submittedMs @7 :Int64;
  attempts @8 :List(Attempt);
  output @9 :Data;
  error @10 :Text;
  why @11 :Text;               # for a task not running: why not (no spore has tag gpu, ...)
  finishedMs @12 :Int64;
  retryOf @13 :TaskRef;        # a task made by `mesh retry`: the failed task it runs again; unset otherwise
  after @14 :List(UInt64);     # its batch's BatchSpec.after (section 4.21)
  afterDone @15 :List(UInt64); # its batch's BatchSpec.afterDone
}

struct CancelAck {
  batch @0 :UInt64;
  cancelled @1 :UInt64;        # tasks that will not run
}

# `mesh retry`: a new batch holding a copy of every task of a finished batch whose final result
# is a failure (any status but ok and cancelled), same handler, requirements and payload, in
# index order. Written in one transaction before the ack, like a Submit; the original is not
# changed. docs/protocol.md section 4.17.
struct Retry {
  batch @0 :UInt64;            # the finished batch whose failed tasks run again
  priority @1 :Int16 = -1;     # 0-255; -1: the original's
  timeoutMs @2 :UInt32;        # per attempt; 0: the original's
  maxAttempts @3 :UInt8;       # 0: the original's
  label @4 :Text;              # empty: the original's label + " (retry of batch N)", or "retry of batch N"
  watch @5 :Bool;              # send Progress of the new batch to this connection (as Submit.watch)
}

struct RetryAck {
  batch @0 :UInt64;            # the new batch; 0: the original had no failed task, nothing was made
  firstTask @1 :UInt64;        # its tasks have ids firstTask .. firstTask+count-1, indexes 0 ..
  count @2 :UInt64;
  retried @3 :UInt64;          # the original batch
  warning @4 :Text;            # as SubmitAck.warning
}

# `mesh nodes drain|undrain NODE` (admin key). A drained spore gets no new task, and the nexus
# recalls the tasks it holds and has not started; running ones finish. Kept by the spore's key
# across its reconnects and nexus restarts until undrained. docs/protocol.md section 4.20.
struct DrainRequest {
  node @0 :Text;               # a connected spore's name, or the fingerprint (or z85 key) of a node key
  drain @1 :Bool;              # true: drain; false: undrain
}

struct DrainAck {
  name @0 :Text;               # the spore's name (empty when it is not connected)
  fingerprint @1 :Text;
  drained @2 :Bool;            # the state now
  changed @3 :Bool;            # false: it was already in that state
  connected @4 :Bool;
  inFlight @5 :UInt32;         # tasks it holds now (counted by the nexus)
  recalled @6 :UInt32;         # of which the nexus has just asked back (the spore returns those not started)
}

# ---- events port -----------------------------------------------------------------------------

struct Event {
  kind @0 :Kind;
  batch @1 :UInt64;
  node @2 :Text;
  text @3 :Text;
  enum Kind {
    batchFinished @0;
    nodeJoined @1;
    nodeLost @2;
    bundleAvailable @3;
  }
}

# ---- signed bundles --------------------------------------------------------------------------

# A bundle the nexus accepted and serves: the highest version published for its name.
struct BundleRef {
  name @0 :Text;
  version @1 :UInt64;
  size @2 :UInt64;             # bytes of the bundle file
  manifestSha256 @3 :Text;     # hex SHA-256 of the manifest bytes: names this exact release
  publishedMs @4 :Int64;
}

# Upload with a credit of one chunk: the client sends the chunk at `offset` and waits for its
# ack before the next. upload 0 on the first chunk opens an upload; the ack carries its id.
struct BundleUpload {
  upload @0 :UInt64;
  offset @1 :UInt64;
  data @2 :Data;               # at most 1 MiB
  last @3 :Bool;               # no byte follows: verify and store
}

struct BundleUploadAck {
  upload @0 :UInt64;
  received @1 :UInt64;         # bytes taken so far: the offset of the next chunk
  done @2 :Bool;               # verified, stored and announced
  bundle @3 :BundleRef;        # when done
}

struct BundleFetch {
  name @0 :Text;
  version @1 :UInt64;
  offset @2 :UInt64;
  maxBytes @3 :UInt32;         # the nexus sends at most min(maxBytes, 1 MiB)
}

struct BundleChunk {
  name @0 :Text;
  version @1 :UInt64;
  offset @2 :UInt64;
  data @3 :Data;
  size @4 :UInt64;             # total bytes of the bundle
  missing @5 :Bool;            # the nexus does not serve this name and version (any more)
}

struct BundleReport {
  name @0 :Text;
  version @1 :UInt64;
  event @2 :Text;              # installed, refused, rolled-back, or running (state after hello)
  reason @3 :Text;             # refusal name, or the rollback cause
  message @4 :Text;
  running @5 :UInt64;          # the version now current on the spore; 0: none
  rollbacks @6 :UInt32;        # rollbacks of this name on the spore (bad versions)
}

struct SporeBundleState {
  spore @0 :Text;              # name
  fingerprint @1 :Text;
  running @2 :UInt64;
  event @3 :Text;
  reason @4 :Text;
  message @5 :Text;
  version @6 :UInt64;          # the version the last event is about
  rollbacks @7 :UInt32;
  connected @8 :Bool;
}

struct BundleStatus {
  bundle @0 :BundleRef;
  spores @1 :List(SporeBundleState);
}

struct BundlesReply {
  bundles @0 :List(BundleStatus);
  refusals @1 :List(BundleReport);   # the latest publishes the nexus refused (name, reason)
}
