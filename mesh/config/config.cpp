#include "mesh/config/config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "mesh/util/bytes.h"

namespace po = boost::program_options;

namespace mesh::config {

namespace {

std::string hostName() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

util::Error usage(const std::string& what, const std::string& program) {
  return util::err(what + " (see `" + program + " --help`)", 2);
}

// Boost reads "-1" into an unsigned option as its largest value (`--limit -1` meant no limit,
// `--slots -1` four billion): a value of an unsigned option may not start with '-'.
util::Status refuseNegatives(const po::parsed_options& parsed, const po::options_description& all,
                             const std::string& program) {
  for (const auto& o : parsed.options) {
    const auto* d = all.find_nothrow(o.string_key, false);
    if (!d) continue;
    const po::value_semantic* v = d->semantic().get();
    bool isUnsigned = dynamic_cast<const po::typed_value<unsigned>*>(v) ||
                      dynamic_cast<const po::typed_value<unsigned long>*>(v) ||
                      dynamic_cast<const po::typed_value<unsigned long long>*>(v);
    for (const auto& token : o.value) {
      if (isUnsigned && !token.empty() && token[0] == '-') {
        return usage("--" + o.string_key + " takes a whole number of 0 or more, not " + token, program);
      }
    }
  }
  return {};
}

// tcp://HOST:PORT with a non-empty host (a name, an IPv4 address or [IPv6]) and a port 1-65535.
bool looksLikeTcpEndpoint(const std::string& e) {
  const std::string prefix = "tcp://";
  if (e.compare(0, prefix.size(), prefix) != 0) return false;
  std::size_t colon = e.rfind(':');
  if (colon == std::string::npos || colon <= prefix.size()) return false;
  std::uint64_t port = 0;
  if (!util::parseU64(std::string_view(e).substr(colon + 1), &port) || port < 1 || port > 65535) return false;
  std::string host = e.substr(prefix.size(), colon - prefix.size());
  if (host.front() == '[') return host.size() > 2 && host.back() == ']';
  return host.find_first_of("/[]") == std::string::npos;
}

// A message from a config file may quote its bytes: keep them printable.
std::string printable(std::string text) {
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  }
  return text;
}

// ", line N" of the first line of a config file that sets the option a parse error names, or "".
std::string lineOfOption(const std::string& path, const po::error& e) {
  const auto* named = dynamic_cast<const po::error_with_option_name*>(&e);
  if (!named) return "";
  std::string option = named->get_option_name();
  while (!option.empty() && option.front() == '-') option.erase(0, 1);
  if (option.empty()) return "";
  std::ifstream in(path);
  std::string line;
  for (int n = 1; n <= 100000 && std::getline(in, line); ++n) {
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string key = line.substr(0, eq);
    key.erase(0, key.find_first_not_of(" \t"));
    key.erase(key.find_last_not_of(" \t") + 1);
    if (key == option) return ", line " + std::to_string(n);
  }
  return "";
}

// Parses argv and then the --config file (command line wins), notify()ing at the end.
util::Status parseInto(int argc, const char* const* argv, const po::options_description& all,
                       const po::positional_options_description* positional, po::variables_map& vm,
                       const std::string& program) {
  try {
    po::command_line_parser parser(argc, argv);
    parser.options(all);
    if (positional) parser.positional(*positional);
    po::parsed_options fromArgs = parser.run();
    if (auto s = refuseNegatives(fromArgs, all, program); !s) return s;
    po::store(fromArgs, vm);
    if (vm.count("config") && !vm.count("help")) {
      std::string path = vm["config"].as<std::string>();
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0) return usage("cannot read config file " + path + ": " + std::strerror(errno), program);
      if (!S_ISREG(st.st_mode)) return usage("config file " + path + " is not a regular file", program);
      std::ifstream in(path);
      if (!in) return usage("cannot read config file " + path, program);
      try {
        po::parsed_options fromFile = po::parse_config_file(in, all);
        if (auto s = refuseNegatives(fromFile, all, program); !s) return util::err("config file " + path + ": " + s.error().message, 2);
        po::store(fromFile, vm);
      } catch (const po::error& e) {
        // Name the file, and the line when the error names an option: a typo in a long file.
        return usage("config file " + path + lineOfOption(path, e) + ": " + printable(e.what()), program);
      }
    }
    if (!vm.count("help")) po::notify(vm);
  } catch (const po::error& e) {
    return usage(printable(e.what()), program);
  }
  return {};
}

util::Result<std::int64_t> durationOption(const po::variables_map& vm, const char* name, std::int64_t dflt) {
  if (!vm.count(name)) return dflt;
  auto d = util::parseDurationMs(vm[name].as<std::string>());
  if (!d) return util::err(std::string("--") + name + ": " + d.error().message, 2);
  return *d;
}

util::Result<std::uint64_t> sizeOption(const po::variables_map& vm, const char* name, std::uint64_t dflt) {
  if (!vm.count(name)) return dflt;
  auto s = util::parseSize(vm[name].as<std::string>());
  if (!s) return util::err(std::string("--") + name + ": " + s.error().message, 2);
  return *s;
}

std::vector<std::string> listOption(const po::variables_map& vm, const char* name) {
  std::vector<std::string> out;
  if (!vm.count(name)) return out;
  for (const auto& item : vm[name].as<std::vector<std::string>>()) {
    for (auto& part : util::splitList(item, ',')) out.push_back(part);
  }
  return out;
}

std::string helpText(const std::string& intro, const po::options_description& visible) {
  std::ostringstream out;
  out << intro << visible;
  return out.str();
}

}  // namespace

util::Result<Parsed<NexusConfig>> parseNexus(int argc, const char* const* argv) {
  NexusConfig c;
  po::options_description general("Options");
  general.add_options()
      ("help,h", "show this help and exit")
      ("config", po::value<std::string>(), "read options from FILE (name = value lines)")
      ("data-dir", po::value<std::string>(&c.dataDir)->required(),
       "directory for the database (nexus.db), the server key (nexus.key) and the endpoints file")
      ("bind-node", po::value<std::string>(&c.nodeEndpoint)->default_value(c.nodeEndpoint), "endpoint spores connect to")
      ("bind-client", po::value<std::string>(&c.clientEndpoint)->default_value(c.clientEndpoint), "endpoint clients (mesh) connect to")
      ("bind-events", po::value<std::string>(&c.eventsEndpoint)->default_value(c.eventsEndpoint), "PUB endpoint for event hints")
      ("name", po::value<std::string>(&c.name), "name shown to users (default: host name)")
      ("heartbeat", po::value<std::string>()->default_value("1s"), "heartbeat interval")
      ("missed-beats", po::value<int>(&c.missedBeats)->default_value(3), "declare a spore dead after this many silent intervals")
      ("weights", po::value<std::string>()->default_value("0.4,0.3,0.3"), "load score weights: cpu,mem,in-flight")
      ("max-prefetch", po::value<std::uint32_t>(&c.scheduler.maxPrefetch)->default_value(256), "most tasks queued on a spore beyond its slots")
      ("default-timeout", po::value<std::string>()->default_value("1h"), "task timeout when a batch gives none (more than 0)")
      ("default-attempts", po::value<unsigned>()->default_value(3), "attempts when a batch gives none")
      ("quarantine-after", po::value<unsigned>()->default_value(3), "quarantine a task after its spore dies under it this often")
      ("max-payload", po::value<std::string>()->default_value("16M"), "largest task payload accepted")
      ("max-frame", po::value<std::string>()->default_value("64M"), "largest message accepted from the network")
      ("max-shuffle", po::value<std::string>()->default_value("1G"),
       "largest total map output of a map-reduce job: the nexus builds the reduce stage's input from it in "
       "memory (about twice this at once); a job over it stops with a note")
      ("max-waiting", po::value<std::uint64_t>(&c.maxWaitingBatches)->default_value(c.maxWaitingBatches),
       "refuse a submit --after beyond this many batches waiting for others")
      ("max-queued", po::value<std::uint64_t>(&c.maxQueuedTasks)->default_value(c.maxQueuedTasks), "refuse submissions beyond this many unfinished tasks")
      ("io-threads", po::value<int>(&c.ioThreads)->default_value(c.ioThreads), "ZeroMQ I/O threads, 1-16 (with 2 or more, encryption for spores and for clients runs on different ones)")
      ("log-level", po::value<std::string>(&c.logLevel)->default_value("info"), "debug, info, warn or error")
      ("keep-finished", po::value<std::string>(&c.keepFinishedText)->default_value(c.keepFinishedText),
       "delete a finished batch's tasks, results and attempts this long after it finished (a map-reduce "
       "job's batches: after the job ended), keeping a one-line record of the batch; 0 keeps everything. "
       "The database file does not shrink (docs/operations.md, \"Disk space\")")
      ("trust", po::value<std::vector<std::string>>(), "a release public key file whose bundles may be published (repeatable)");
  po::options_description discovery("LAN discovery");
  discovery.add_options()
      ("beacon", po::bool_switch(&c.beacon), "broadcast a UDP beacon every second so spores find this nexus")
      ("cluster", po::value<std::string>(&c.cluster)->default_value("default"), "cluster name carried in the beacon")
      ("beacon-port", po::value<std::uint16_t>(&c.beaconPort)->default_value(7699), "UDP port of the beacon")
      ("interface", po::value<std::vector<std::string>>(), "broadcast only on this interface (repeatable)")
      ("beacon-target", po::value<std::vector<std::string>>(), "send the beacon to HOST:PORT instead of broadcasting (repeatable)")
      ("advertise", po::value<std::string>(&c.advertise), "host or address spores should connect to (multi-NIC hosts)");
  po::options_description all;
  all.add(general).add(discovery);
  po::variables_map vm;
  if (auto s = parseInto(argc, argv, all, nullptr, vm, "nexus"); !s) return s.error();
  Parsed<NexusConfig> out;
  if (vm.count("help")) {
    out.help = helpText(
        "nexus: the Hive Mesh coordinator. Accepts batches from clients, stores them durably in\n"
        "SQLite, and routes tasks to spores by load. Every connection is CurveZMQ-authenticated:\n"
        "only keys accepted with `mesh keys accept` get in.\n\n"
        "Usage: nexus --data-dir DIR [options]\n",
        all);
    return out;
  }
  if (c.name.empty()) c.name = hostName();
  if (c.ioThreads < 1 || c.ioThreads > 16) return usage("--io-threads must be 1-16", "nexus");
  if (vm.count("trust")) c.trust = vm["trust"].as<std::vector<std::string>>();
  auto hb = durationOption(vm, "heartbeat", 1000);
  if (!hb) return hb.error();
  c.heartbeatMs = *hb;
  auto keep = durationOption(vm, "keep-finished", c.keepFinishedMs);
  if (!keep) return keep.error();
  if (*keep < 0) return usage("--keep-finished must be 0 (keep everything) or more", "nexus");
  c.keepFinishedMs = *keep;
  auto to = durationOption(vm, "default-timeout", 3'600'000);
  if (!to) return to.error();
  if (*to <= 0) return usage("--default-timeout must be more than 0 (30d, say, for practically none)", "nexus");
  c.scheduler.defaultTimeoutMs = static_cast<std::uint32_t>(std::min<std::int64_t>(*to, UINT32_MAX));
  for (const char* name : {"default-attempts", "quarantine-after"}) {
    unsigned n = vm[name].as<unsigned>();
    if (n < 1 || n > 255) return usage(std::string("--") + name + " must be 1-255", "nexus");
  }
  c.scheduler.defaultMaxAttempts = static_cast<std::uint8_t>(vm["default-attempts"].as<unsigned>());
  c.scheduler.quarantineAfter = static_cast<std::uint8_t>(vm["quarantine-after"].as<unsigned>());
  auto payload = sizeOption(vm, "max-payload", c.maxPayloadBytes);
  if (!payload) return payload.error();
  c.maxPayloadBytes = *payload;
  auto frame = sizeOption(vm, "max-frame", c.maxFrameBytes);
  if (!frame) return frame.error();
  c.maxFrameBytes = *frame;
  auto shuffle = sizeOption(vm, "max-shuffle", c.maxShuffleBytes);
  if (!shuffle) return shuffle.error();
  c.maxShuffleBytes = *shuffle;
  if (c.maxPayloadBytes > c.maxFrameBytes / 2) {
    return usage("--max-payload must be at most half of --max-frame (a payload travels in one message, with others)",
                 "nexus");
  }
  auto weights = util::splitList(vm["weights"].as<std::string>(), ',');
  if (weights.size() != 3) return usage("--weights takes three numbers: cpu,mem,in-flight", "nexus");
  double w[3];
  for (int i = 0; i < 3; ++i) {
    // The whole item is a number of 0 or more: "3x" or "-1" is a typo, not 3 or a penalty.
    std::size_t used = 0;
    try {
      w[i] = std::stod(weights[i], &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != weights[i].size() || !std::isfinite(w[i]) || w[i] < 0) {
      return usage("--weights takes three numbers of 0 or more: cpu,mem,in-flight, not '" + weights[i] + "'", "nexus");
    }
  }
  c.scheduler.weights = {w[0], w[1], w[2]};
  if (c.missedBeats < 1 || c.missedBeats > 255) return usage("--missed-beats must be 1-255", "nexus");
  if (c.heartbeatMs < 50) return usage("--heartbeat must be at least 50ms", "nexus");
  c.beaconInterfaces = listOption(vm, "interface");
  c.beaconTargets = listOption(vm, "beacon-target");
  out.config = std::move(c);
  return out;
}

util::Result<Parsed<SporeConfig>> parseSpore(int argc, const char* const* argv) {
  SporeConfig c;
  po::options_description general("Options");
  general.add_options()
      ("help,h", "show this help and exit")
      ("config", po::value<std::string>(), "read options from FILE (name = value lines)")
      ("data-dir", po::value<std::string>(&c.dataDir)->required(), "directory for this spore's key, work dirs and state")
      ("key", po::value<std::string>(&c.keyFile), "this spore's key pair file (default DATA_DIR/spore.key, created if missing)")
      ("nexus", po::value<std::vector<std::string>>(), "nexus node endpoint tcp://HOST:PORT (repeatable, tried in order); none: listen for beacons")
      ("nexus-key", po::value<std::string>(&c.nexusKey)->required(), "the nexus public key to trust: a .pub file or its z85 text")
      ("name", po::value<std::string>(&c.name), "name shown in `mesh nodes` (default: host name)")
      ("slots", po::value<unsigned>(&c.slots), "tasks run at once (default: number of CPUs)")
      ("tags", po::value<std::vector<std::string>>(), "capabilities, e.g. gpu,ssd (repeatable or comma-separated)")
      ("handlers", po::value<std::string>(&c.handlersDir), "directory of handler programs (file name = handler name; NAME.serve is the serve handler NAME: one long-lived process fed many tasks)")
      ("trust", po::value<std::vector<std::string>>(), "a release public key file whose signed bundles this spore installs (repeatable)")
      ("bundle-trial-failures", po::value<unsigned>(&c.bundleTrialFailures)->default_value(3), "roll a new bundle version back once this many of its handlers' tasks crashed or could not start, and at least half of them did (a plain failure or a timeout never counts)...")
      ("bundle-trial", po::value<std::string>()->default_value("60s"), "...within this long after its install")
      ("heartbeat", po::value<std::string>()->default_value("1s"), "heartbeat interval")
      ("missed-beats", po::value<int>(&c.missedBeats)->default_value(3), "reconnect after this many silent intervals")
      ("stop-grace", po::value<std::string>()->default_value("30s"), "at SIGTERM: hand queued tasks back at once, let running ones finish for this long, then give the rest back (a second signal stops at once)")
      ("log-level", po::value<std::string>(&c.logLevel)->default_value("info"), "debug, info, warn or error");
  po::options_description discovery("LAN discovery");
  discovery.add_options()
      ("cluster", po::value<std::string>(&c.cluster)->default_value("default"), "join only beacons of this cluster")
      ("beacon-port", po::value<std::uint16_t>(&c.beaconPort)->default_value(7699), "UDP port to listen for beacons on")
      ("interface", po::value<std::vector<std::string>>(), "accept beacons only from this interface (repeatable)")
      ("advertise", po::value<std::string>(&c.advertise), "address of this spore shown to operators");
  po::options_description limits("Limits for handler programs");
  limits.add_options()
      ("max-output", po::value<std::string>()->default_value("16M"), "largest stdout a task may write (at most half of --max-frame)")
      ("max-stderr", po::value<std::string>()->default_value("4K"), "stderr kept as the error text")
      ("cpu-seconds", po::value<std::uint64_t>(&c.cpuSeconds)->default_value(0), "CPU seconds per task (0: no limit; not applied to serve handlers, whose processes outlive a task)")
      ("memory", po::value<std::string>()->default_value("0"), "address space per task (0: no limit)")
      ("open-files", po::value<std::uint64_t>(&c.openFiles)->default_value(256), "open files per task")
      ("kill-grace", po::value<std::string>()->default_value("2s"), "time between SIGTERM and SIGKILL at a deadline")
      ("max-frame", po::value<std::string>()->default_value("64M"), "largest message accepted from the network");
  po::options_description all;
  all.add(general).add(discovery).add(limits);
  po::variables_map vm;
  if (auto s = parseInto(argc, argv, all, nullptr, vm, "spore"); !s) return s.error();
  Parsed<SporeConfig> out;
  if (vm.count("help")) {
    out.help = helpText(
        "spore: a Hive Mesh worker. Connects to a nexus (given with --nexus, or found by its LAN\n"
        "beacon), proves its identity with its own Curve key, and runs the tasks it is sent.\n"
        "Its key must be accepted on the nexus: `mesh keys accept FINGERPRINT`.\n\n"
        "Usage: spore --data-dir DIR --nexus-key NEXUS.pub [--nexus tcp://HOST:7700] [options]\n",
        all);
    return out;
  }
  if (c.name.empty()) c.name = hostName();
  if (c.slots == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    c.slots = n > 0 ? static_cast<unsigned>(n) : 1;
  }
  if (c.slots > 1024) return usage("--slots must be at most 1024", "spore");
  if (c.keyFile.empty()) c.keyFile = c.dataDir + "/spore.key";
  if (vm.count("nexus")) c.nexus = vm["nexus"].as<std::vector<std::string>>();
  for (const auto& e : c.nexus) {
    // A malformed seed never connects: say so now rather than retry it for good.
    if (!looksLikeTcpEndpoint(e)) {
      return usage("--nexus takes tcp://HOST:PORT (the nexus's node port, 7700 by default), not '" + printable(e) + "'",
                   "spore");
    }
  }
  if (vm.count("trust")) c.trust = vm["trust"].as<std::vector<std::string>>();
  auto trial = durationOption(vm, "bundle-trial", 60000);
  if (!trial) return trial.error();
  c.bundleTrialMs = *trial;
  auto stopGrace = durationOption(vm, "stop-grace", 30000);
  if (!stopGrace) return stopGrace.error();
  c.stopGraceMs = *stopGrace;
  c.tags = listOption(vm, "tags");
  c.interfaces = listOption(vm, "interface");
  auto hb = durationOption(vm, "heartbeat", 1000);
  if (!hb) return hb.error();
  c.heartbeatMs = *hb;
  auto grace = durationOption(vm, "kill-grace", 2000);
  if (!grace) return grace.error();
  c.killGraceMs = *grace;
  auto o = sizeOption(vm, "max-output", c.maxOutputBytes);
  if (!o) return o.error();
  c.maxOutputBytes = *o;
  auto e = sizeOption(vm, "max-stderr", c.maxStderrBytes);
  if (!e) return e.error();
  c.maxStderrBytes = *e;
  auto m = sizeOption(vm, "memory", 0);
  if (!m) return m.error();
  c.memoryBytes = *m;
  auto f = sizeOption(vm, "max-frame", c.maxFrameBytes);
  if (!f) return f.error();
  c.maxFrameBytes = *f;
  if (c.missedBeats < 1 || c.missedBeats > 255) return usage("--missed-beats must be 1-255", "spore");
  if (c.maxOutputBytes > c.maxFrameBytes / 2) return usage("--max-output must be at most half of --max-frame", "spore");
  if (c.heartbeatMs < 50) return usage("--heartbeat must be at least 50ms", "spore");
  out.config = std::move(c);
  return out;
}

util::Result<Parsed<CliCommand>> parseCli(int argc, const char* const* argv) {
  CliCommand c;
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
  };
  c.client.nexus = env("MESH_NEXUS");
  c.client.nexusKey = env("MESH_NEXUS_KEY");
  c.client.key = env("MESH_KEY");
  c.client.dataDir = env("MESH_DATA_DIR");
  po::options_description global("Connection (also MESH_NEXUS, MESH_NEXUS_KEY, MESH_KEY, MESH_DATA_DIR)");
  global.add_options()
      ("help,h", "show this help and exit")
      ("config", po::value<std::string>(), "read options from FILE (name = value lines)")
      ("nexus", po::value<std::string>(&c.client.nexus), "the nexus client endpoint, tcp://HOST:7701")
      ("nexus-key", po::value<std::string>(&c.client.nexusKey), "the nexus public key: a .pub file or its z85 text")
      ("key", po::value<std::string>(&c.client.key), "this client's key pair file")
      ("data-dir", po::value<std::string>(&c.client.dataDir), "the nexus data dir (for `mesh keys` on the nexus host)")
      ("json", po::bool_switch(&c.client.json), "print JSON (one object per line) instead of text")
      ("timeout", po::value<std::string>()->default_value("10s"), "give up connecting or waiting for a reply after this long (waiting for a batch: "
       "after this long or 60s of silence, whichever is longer)");
  po::options_description submit("submit");
  submit.add_options()
      ("handler", po::value<std::string>(&c.submit.handler), "handler that runs each task (echo, sha256, sleep, fail, or a program)")
      ("priority", po::value<unsigned>(&c.submit.priority)->default_value(0), "0-255, higher runs first")
      ("requires", po::value<std::vector<std::string>>(), "tags a spore must have, e.g. gpu (comma-separated)")
      ("task-timeout", po::value<std::string>(), "per-attempt timeout of each task, e.g. 30s (default or 0: the nexus's)")
      ("attempts", po::value<unsigned>(&c.submit.attempts)->default_value(0), "attempts per task (default: the nexus's)")
      ("label", po::value<std::string>(&c.submit.label), "a name for the batch")
      ("lines", po::value<std::string>(&c.submit.linesFrom), "one task per line of FILE (- for stdin)")
      ("files", po::value<std::vector<std::string>>()->multitoken(), "one task per file, the file's bytes as payload")
      ("files-from", po::value<std::string>(&c.submit.filesFrom),
       "one task per file listed in LIST (- for stdin), one path per line, as --files")
      ("null,0", po::bool_switch(&c.submit.null), "--files-from: the paths end with NUL, not newline (find -print0)")
      ("wait", po::bool_switch(&c.submit.wait), "wait for the batch to finish (like `mesh wait`)")
      ("results", po::bool_switch(&c.submit.results),
       "wait, then print the results as `mesh results` does (the batch id goes to stderr)")
      ("after", po::value<std::vector<std::string>>(),
       "run none of its tasks until batch ID has finished with every task succeeded (cancelled if it fails); "
       "repeat or ID,ID for several")
      ("after-done", po::value<std::vector<std::string>>(),
       "run none of its tasks until batch ID has finished, whatever its outcome; repeat or ID,ID");
  po::options_description mr("mapreduce");
  mr.add_options()
      ("mapper", po::value<std::string>(&c.mapreduce.mapper), "handler run on each input chunk; writes key<TAB>value lines")
      ("reducer", po::value<std::string>(&c.mapreduce.reducer), "handler run on each partition's merged, sorted lines")
      ("combiner", po::value<std::string>(&c.mapreduce.combiner), "optional handler run on each map task's sorted output")
      ("reducers", po::value<unsigned>(&c.mapreduce.reducers)->default_value(1), "number of partitions (reduce tasks)")
      ("chunk-size", po::value<std::string>()->default_value("1M"), "input chunk per map task, split on line boundaries")
      ("output,o", po::value<std::string>(&c.mapreduce.output), "output directory (created; must be empty): part-00000...")
      ("merge", po::bool_switch(&c.mapreduce.merge), "also write DIR/merged: all parts in one sorted file")
      ("job", po::value<std::uint64_t>(&c.mapreduce.job)->default_value(0), "resume: fetch the job with this id instead of submitting");
  po::options_description keys("keys");
  keys.add_options()
      ("role", po::value<std::string>(&c.role), "role of an accepted key: node, client or admin")
      ("comment", po::value<std::string>(&c.comment), "a note stored with the key")
      ("release", po::bool_switch(&c.release), "keys gen: an Ed25519 release key for signing bundles");
  po::options_description bundle("bundle sign (the release key is --key FILE, the bundle written to -o FILE)");
  bundle.add_options()
      ("name", po::value<std::string>(&c.bundle.name), "bundle name: [a-z0-9][a-z0-9._-]{0,63}")
      ("version", po::value<std::uint64_t>(&c.bundle.version)->default_value(0), "bundle version, strictly increasing per name")
      ("expires", po::value<std::string>(&c.bundle.expires)->default_value("30d"), "the bundle is refused once this long has passed")
      ("bundle-handlers", po::value<std::vector<std::string>>(), "handlers (default: every top-level executable file)");
  po::options_description batches("batches (and --label L: exactly that label; --limit N: 1-1000, default 20)");
  batches.add_options()
      ("state", po::value<std::string>(&c.batches.state)->default_value("all"),
       "only batches in this state: waiting, open, running, cancelling, finished, cancelled, expired or all")
      ("before", po::value<std::uint64_t>(&c.batches.before), "only batches with a lower id (the next page)")
      ("mine", po::bool_switch(&c.batches.mine), "only batches submitted with this client's key")
      ("failed", po::bool_switch(&c.batches.failed), "only finished batches with a failed task (what mesh retry takes)");
  po::options_description other("Other");
  other.add_options()
      ("quiet,q", po::bool_switch(&c.quiet), "wait: no progress output")
      ("limit", po::value<std::uint64_t>(&c.limit)->default_value(0), "results: at most this many rows; batches: see above")
      ("raw", po::bool_switch(&c.raw), "results: print each successful task's output as is, in order")
      ("all", po::bool_switch(&c.allNodes), "nodes: also the accepted node keys with no spore connected");
  po::options_description hidden;
  hidden.add_options()("words", po::value<std::vector<std::string>>(), "command words");
  po::options_description all, visible;
  all.add(global).add(submit).add(mr).add(keys).add(bundle).add(batches).add(other).add(hidden);
  visible.add(global).add(submit).add(mr).add(keys).add(bundle).add(batches).add(other);
  po::positional_options_description positional;
  positional.add("words", -1);
  po::variables_map vm;
  if (auto s = parseInto(argc, argv, all, &positional, vm, "mesh"); !s) return s.error();
  Parsed<CliCommand> out;
  std::vector<std::string> words;
  if (vm.count("words")) words = vm["words"].as<std::vector<std::string>>();
  if (!vm.count("help") && words.empty()) return usage("no command given", "mesh");
  if (vm.count("help")) {
    const std::string commands =
        "  submit --handler H (--lines FILE|- | --files F... | --files-from LIST|-)\n"
        "                             submit a batch, print its id; --after ID / --after-done ID:\n"
        "                             hold it until batch ID finished ok / finished at all\n"
        "  wait BATCH                 wait for a batch (progress on a terminal); exit 0 if all succeeded\n"
        "  results BATCH              print each task's result in submission order (exit 4 if\n"
        "                             the batch has not finished: the results so far; exit 6 if\n"
        "                             they were removed after the nexus's --keep-finished)\n"
        "  status                     the nexus: nodes, queues, batches, counters, limits\n"
        "  batches [--state S] [--label L] [--mine] [--failed] [--limit N] [--before ID]\n"
        "                             the batches the nexus has stored, newest first, finished and\n"
        "                             removed ones too (a hint on stderr gives the next page)\n"
        "  nodes [--all]              the spores: load, slots, tasks in flight, last heartbeat, state;\n"
        "                             --all: also each accepted node key with no spore connected\n"
        "  nodes drain NAME|FP        give a spore no new task and take back what it has not started\n"
        "                             (running ones finish; admin key); kept until undrained\n"
        "  nodes undrain NAME|FP      give a drained spore tasks again (admin key)\n"
        "  task TASK | BATCH:INDEX    one task's timeline, and why it waits if it does\n"
        "  cancel BATCH               stop a batch: queued tasks never run, running ones are killed;\n"
        "                             it reads cancelled from then on (exit 5: it had finished)\n"
        "  retry BATCH                run the failed tasks of a finished batch again, as a new batch\n"
        "                             (print its id); exit 4: not finished, 6: its tasks were removed\n"
        "  mapreduce --mapper M --reducer R [--combiner C] --reducers N --output DIR INPUT...\n"
        "                             map-reduce files across the mesh (Hadoop Streaming contract)\n"
        "  keys gen FILE              make a Curve key pair (FILE, FILE.pub); --release: a bundle key\n"
        "  keys list | pending        keys the nexus knows (needs --data-dir on the nexus host)\n"
        "  keys accept FP [--role R]  let a pending key in (its whole fingerprint, key or .pub file)\n"
        "  keys revoke FP             shut a key out\n"
        "  keys fingerprint FILE      the fingerprint of a key file\n"
        "  bundle sign DIR --name N --version V --key release.key [--expires 30d] -o FILE\n"
        "                             sign a directory of handler programs into a bundle\n"
        "  bundle publish FILE        upload a signed bundle (admin key); spores install it\n"
        "  bundles                    each bundle's version on each spore, refusals, rollbacks\n";
    const std::string exits =
        "Exit codes: 0 success, 1 some tasks failed or the batch was cancelled, 2 usage error,\n"
        "3 cannot reach or authenticate to the nexus, 4 `results` or `retry` of a batch that has\n"
        "not finished, 5 `cancel` of a batch that had finished (nothing was cancelled), 6 `results`,\n"
        "`task` or `retry` of a batch whose tasks and results the nexus removed (--keep-finished;\n"
        "`wait` on such a batch says so and exits 0 or 1 on its kept counts).\n";
    // `mesh COMMAND --help`: that command's lines and the options it reads; `mesh --help`: all.
    std::string command = words.empty() ? "" : words[0];
    if (!command.empty() && (command == "keys" || command == "bundle") && words.size() > 1) command += " " + words[1];
    auto linesOf = [&](const std::string& name) {
      std::string lines;
      bool in = false;
      std::istringstream all(commands);
      for (std::string line; std::getline(all, line);) {
        bool continuation = line.rfind("                             ", 0) == 0;
        if (!continuation) in = !name.empty() && line.rfind("  " + name, 0) == 0 &&
                                (line.size() == name.size() + 2 || line[name.size() + 2] == ' ');
        if (in) lines += line + "\n";
      }
      return lines;
    };
    std::string lines = linesOf(command);
    if (lines.empty() && !words.empty()) lines = linesOf(words[0]);  // `keys pending`: every keys line
    if (lines.empty()) {
      out.help = helpText("mesh: the Hive Mesh command line.\n\nUsage: mesh COMMAND [options]\n\nCommands:\n" + commands +
                              "\n" + exits,
                          visible);
      return out;
    }
    po::options_description mine;
    mine.add(global);
    const std::string first = words[0];
    if (first == "submit") mine.add(submit).add(other);
    if (first == "wait" || first == "results") mine.add(other);
    if (first == "batches") {
      po::options_description filters("batches");
      filters.add_options()
          ("state", po::value<std::string>(), "only batches in this state: waiting, open, running, cancelling, "
                                              "finished, cancelled, expired or all (the default)")
          ("label", po::value<std::string>(), "only batches with exactly this label (\"\": those without one)")
          ("mine", po::bool_switch(), "only batches submitted with this client's key")
          ("failed", po::bool_switch(), "only finished batches with a failed task (what `mesh retry` takes)")
          ("limit", po::value<std::uint64_t>(), "at most this many batches, 1-1000 (default 20)")
          ("before", po::value<std::uint64_t>(), "only batches with a lower id: the next page");
      mine.add(filters);
      lines += "\nColumns: BATCH, LABEL, HANDLER (with :map or :reduce for a map-reduce stage), PRIO,\n"
               "SUBMITTED (local time), TOTAL, OK, FAILED, STATE (as `mesh status` names it), TOOK (from\n"
               "submit to finish). --json: one object per batch, times in ms since the epoch.\n";
    }
    if (first == "retry") {
      // Help only: the submit options retry reads (they are parsed with submit's).
      po::options_description retry("retry (what is not given stays as the batch retried had it)");
      retry.add_options()
          ("priority", po::value<unsigned>(), "0-255, higher runs first")
          ("task-timeout", po::value<std::string>(), "per-attempt timeout of each task, e.g. 30s")
          ("attempts", po::value<unsigned>(), "attempts per task")
          ("label", po::value<std::string>(), "a name for the new batch (default: \"LABEL (retry of batch N)\", "
                                             "or \"retry of batch N\")")
          ("wait", po::bool_switch(), "wait for the new batch to finish (like `mesh wait`)")
          ("results", po::bool_switch(), "wait, then print its results (the batch id goes to stderr)");
      mine.add(retry).add(other);
      lines += "\nThe new batch holds a copy of every task of BATCH whose result is a failure (failed,\n"
               "timed out, crashed, quarantined; not cancelled), with the same handler, requirements\n"
               "and payload, in index order; BATCH itself does not change. Its results name the task\n"
               "each one retries: --json rows carry \"retry_of\":{\"batch\":B,\"index\":I,\"task\":T},\n"
               "text rows a fourth column B:I (`mesh task` says \"retry of task T (batch B, index I)\").\n"
               "A batch with no failed task makes none: nothing on stdout, a line on stderr, exit 0.\n"
               "A map-reduce stage is refused: submit the job again.\n";
    }
    if (first == "nodes" && (words.size() == 1 || (words[1] != "drain" && words[1] != "undrain"))) {
      po::options_description nodes("nodes");
      nodes.add_options()("all", po::bool_switch(), "also list each accepted node key that has no spore connected "
                                                    "(state offline; drained too if it is)");
      mine.add(nodes);
      lines += "\nState: active, stopping, draining (drained, running tasks finish), drained (holds none);\n"
               "with --all also offline (NAME and ADDRESS as last seen by this nexus since it started).\n";
    }
    if (first == "mapreduce") mine.add(mr).add(submit);
    if (first == "keys") mine.add(keys);
    if (first == "bundle") mine.add(bundle);
    out.help = helpText("Usage:\n" + lines + "\n" + exits + "\n(`mesh --help` lists every command)\n", mine);
    return out;
  }
  std::size_t nWords = (words[0] == "keys" || words[0] == "bundle") ? 2 : 1;
  if (words.size() < nWords) return usage("`mesh " + words[0] + "` needs a subcommand", "mesh");
  c.words.assign(words.begin(), words.begin() + nWords);
  c.args.assign(words.begin() + nWords, words.end());
  auto timeout = durationOption(vm, "timeout", 10000);
  if (!timeout) return timeout.error();
  if (*timeout <= 0) return usage("--timeout must be more than 0, e.g. 10s", "mesh");
  c.client.timeoutMs = *timeout;
  c.keyGiven = vm.count("key") > 0;
  c.batches.labelGiven = vm.count("label") > 0;
  c.batches.limitGiven = vm.count("limit") && !vm["limit"].defaulted();
  c.batches.beforeGiven = vm.count("before") > 0;
  c.bundle.handlers = listOption(vm, "bundle-handlers");
  if (vm.count("files")) c.submit.files = vm["files"].as<std::vector<std::string>>();
  c.submit.requiredTags = listOption(vm, "requires");
  for (const char* name : {"after", "after-done"}) {
    auto& ids = std::string(name) == "after" ? c.submit.after : c.submit.afterDone;
    // Split here, not with listOption, which drops empty items: `--after "$ID"` with an empty
    // ID must not submit a batch that waits for nothing.
    std::vector<std::string> items;
    if (vm.count(name)) {
      for (const auto& raw : vm[name].as<std::vector<std::string>>()) {
        for (std::size_t at = 0;;) {
          std::size_t comma = raw.find(',', at);
          items.push_back(raw.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
          if (comma == std::string::npos) break;
          at = comma + 1;
        }
      }
    }
    for (const auto& id : items) {
      if (id.empty() || id.size() > 19 || id.find_first_not_of("0123456789") != std::string::npos || std::stoull(id) == 0) {
        return usage("--" + std::string(name) + " takes batch ids (1 or more), not '" + id + "'", "mesh");
      }
      ids.push_back(std::stoull(id));
    }
  }
  if (vm.count("task-timeout")) {
    auto t = durationOption(vm, "task-timeout", 0);
    if (!t) return t.error();
    c.submit.timeoutMs = *t;
  }
  if (c.submit.priority > 255) return usage("--priority must be 0-255", "mesh");
  c.submit.priorityGiven = vm.count("priority") && !vm["priority"].defaulted();
  auto chunk = sizeOption(vm, "chunk-size", c.mapreduce.chunkBytes);
  if (!chunk) return chunk.error();
  c.mapreduce.chunkBytes = *chunk;
  if (c.submit.attempts > 255) return usage("--attempts must be 0-255", "mesh");
  out.config = std::move(c);
  return out;
}

}  // namespace mesh::config
