// Plain configuration structs for the nexus, the spore and the mesh CLI, and their parsers.
// This is the only place that includes Boost.Program_options. Every option can also be set in
// a config file (--config FILE, "name = value" lines, the same names without the dashes).
//
// A parser returns the config, or help text (for --help), or an Error with code 2 (usage).
// Thread rule: plain values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mesh/routing/scheduler.h"
#include "mesh/util/result.h"

namespace mesh::config {

struct NexusConfig {
  std::string dataDir;
  std::string nodeEndpoint = "tcp://0.0.0.0:7700";
  std::string clientEndpoint = "tcp://0.0.0.0:7701";
  std::string eventsEndpoint = "tcp://0.0.0.0:7702";
  std::string name;
  std::int64_t heartbeatMs = 1000;
  int missedBeats = 3;
  routing::SchedulerConfig scheduler;
  std::uint64_t maxPayloadBytes = 16ull << 20;
  std::uint64_t maxFrameBytes = 64ull << 20;
  std::uint64_t maxQueuedTasks = 20'000'000;
  // The largest total map output (bytes) a reduce stage is built from: the nexus reads it whole
  // and holds it about twice while it builds the partitions.
  std::uint64_t maxShuffleBytes = 1ull << 30;
  // The most batches held waiting for others (`mesh submit --after`) at once: each costs memory
  // and judging work, and an empty one nothing against maxQueuedTasks.
  std::uint64_t maxWaitingBatches = 100'000;
  // ZeroMQ I/O threads (Curve work): with 2 or more, spores and clients are on different ones.
  int ioThreads = 2;
  // Discovery (LAN beacon).
  bool beacon = false;
  std::string cluster = "default";
  std::uint16_t beaconPort = 7699;
  std::vector<std::string> beaconInterfaces;
  std::vector<std::string> beaconTargets;  // host:port unicast targets instead of broadcast
  std::string advertise;
  std::string logLevel = "info";
  std::vector<std::string> trust;  // release public key files (--trust): bundles they sign
  // Retention: a finished batch's tasks, results and attempts are deleted this long after it
  // (its job) finished; 0 keeps everything. keepFinishedText is how it was written ("7d").
  std::int64_t keepFinishedMs = 7 * 86'400'000LL;
  std::string keepFinishedText = "7d";
};

struct SporeConfig {
  std::string dataDir;
  std::string keyFile;                 // default DATA_DIR/spore.key
  std::vector<std::string> nexus;      // tried in order; empty: find the nexus by beacon
  std::string nexusKey;                // pinned: a .pub file or the z85 text
  std::string name;
  unsigned slots = 0;                  // 0: the number of CPUs
  std::vector<std::string> tags;
  std::string handlersDir;
  std::int64_t heartbeatMs = 1000;
  int missedBeats = 3;
  std::string cluster = "default";
  std::uint16_t beaconPort = 7699;
  std::vector<std::string> interfaces;
  std::string advertise;
  // Limits for handler programs.
  std::uint64_t maxOutputBytes = 16ull << 20;  // well under the frame limit: results must fit a frame
  std::uint64_t maxStderrBytes = 4096;
  std::uint64_t cpuSeconds = 0;
  std::uint64_t memoryBytes = 0;
  std::uint64_t openFiles = 256;
  std::int64_t killGraceMs = 2000;
  std::uint64_t maxFrameBytes = 64ull << 20;
  std::string logLevel = "info";
  // Signed bundles: release public key files (--trust); none: bundles are not fetched.
  std::vector<std::string> trust;
  unsigned bundleTrialFailures = 3;      // a new version's handlers failing this often...
  std::int64_t bundleTrialMs = 60'000;   // ...within this long after its install: roll back
  // At SIGTERM/SIGINT: how long the running tasks may take to finish (queued ones are handed
  // back at once); then the rest goes back to the queue. A second signal stops at once.
  std::int64_t stopGraceMs = 30'000;
};

// Where and who the mesh CLI connects as.
struct ClientConfig {
  std::string nexus;       // client endpoint, MESH_NEXUS
  std::string nexusKey;    // MESH_NEXUS_KEY: a .pub file or z85
  std::string key;         // MESH_KEY: this client's key pair file
  std::string dataDir;     // MESH_DATA_DIR: the nexus data dir, for `mesh keys` on the nexus host
  bool json = false;
  std::int64_t timeoutMs = 10000;  // connecting and each request
};

struct SubmitOptions {
  std::string handler;
  unsigned priority = 0;
  std::vector<std::string> requiredTags;
  std::int64_t timeoutMs = 0;
  unsigned attempts = 0;
  std::string label;
  std::string linesFrom;             // "--lines": a file or "-"
  std::vector<std::string> files;    // "--files"
  std::string filesFrom;             // "--files-from": a file listing paths, or "-"
  bool null = false;                 // "--null": that list is NUL-separated (find -print0)
  bool wait = false;
  bool results = false;  // print the results once the batch finishes (implies wait)
  bool priorityGiven = false;  // --priority was given (retry: otherwise the original's)
  // --after ID, --after-done ID (repeated, or ID,ID): batches the new one waits for.
  std::vector<std::uint64_t> after, afterDone;
};

struct MapReduceOptions {
  std::string mapper, reducer, combiner;
  unsigned reducers = 1;
  std::uint64_t chunkBytes = 1u << 20;
  std::string output;
  bool merge = false;
  std::uint64_t job = 0;  // resume: wait for and fetch an existing job instead of submitting
};

// mesh bundle sign
struct BundleSignOptions {
  std::string name;
  std::uint64_t version = 0;
  std::string expires = "30d";
  std::vector<std::string> handlers;  // empty: every top-level executable
};

// mesh batches
struct BatchesOptions {
  std::string state = "all";  // all, waiting, open, running, cancelling, finished, cancelled, expired
  std::uint64_t before = 0;   // only batches with a lower id; 0: from the newest
  bool beforeGiven = false;
  bool mine = false;          // only batches submitted with this client's key
  bool failed = false;        // only finished batches with a failed task
  bool labelGiven = false;    // --label given (even empty: batches without a label)
  bool limitGiven = false;    // --limit given (batches: otherwise 20)
};

struct CliCommand {
  std::vector<std::string> words;    // e.g. {"keys", "accept"} or {"submit"}
  std::vector<std::string> args;     // positional arguments after the command words
  ClientConfig client;
  SubmitOptions submit;
  MapReduceOptions mapreduce;
  bool raw = false;                  // results: outputs only, as bytes
  std::string role;                  // keys accept/gen
  std::string comment;
  bool release = false;              // keys gen --release
  bool keyGiven = false;             // --key given on the command line (bundle sign: the release key)
  BundleSignOptions bundle;
  bool quiet = false;
  std::uint64_t limit = 0;
  BatchesOptions batches;
  bool allNodes = false;             // nodes --all: also accepted spores not connected
};

template <typename T>
struct Parsed {
  std::optional<T> config;  // set unless help was asked for
  std::string help;
};

util::Result<Parsed<NexusConfig>> parseNexus(int argc, const char* const* argv);
util::Result<Parsed<SporeConfig>> parseSpore(int argc, const char* const* argv);
util::Result<Parsed<CliCommand>> parseCli(int argc, const char* const* argv);

}  // namespace mesh::config
