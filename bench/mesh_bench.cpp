// mesh_bench: drives a running Hive Mesh cluster through the client API and prints one JSON
// object per measurement on stdout (progress on stderr). bench/run.sh starts and stops the
// cluster; docs/benchmarks.md explains every workload and records the figures.
//
//   mesh_bench A|B|C|E [--reps N] [--n N] [--pids DIR/pids]
//   mesh_bench D --corpus FILE --out DIR [--mesh PATH] [--pids DIR/pids] [--reps N]
//   mesh_bench F --data-dir DIR/nexus [--pids DIR/pids] [--sims 1000] [--idle-s 20] [--n 200000]
//   common: --quiet-max S (wait for a quiet machine), --no-check, --task-timeout-ms MS (per batch)
//
// The cluster comes from the environment, as `mesh` takes it: MESH_NEXUS (client endpoint),
// MESH_NEXUS_KEY (the nexus public key file), MESH_KEY (this client's key pair, accepted as a
// client or admin).
//
// Workloads (the peers' definitions in shared/bench/peers/README.md, mesh side):
//   A  N=20,000 `echo` tasks with a small payload (the decimal index), one batch; tasks/s from
//      just before submit to the batch known durable (Client::wait), then every result fetched
//      and checked (untimed; `seconds_with_fetch` also reports the rate including the fetch).
//   B  N=20,000 `sha256` tasks, payload i = 512 splitmix64(0xB) outputs from index 512*i,
//      little-endian (4 KiB); digests checked against libsodium here.
//   C  N=2,000 sequential single-task batches: submit, wait, read the result (which comes with
//      the batch's last Progress); latency p50/p99 in µs from submit to result in hand, as the
//      peers' C measures (and `p50_finished`: until the last Progress arrived).
//   D  word count of --corpus (the peers' 50 MB text) by `mesh mapreduce --mapper wc-map
//      --reducer wc-reduce --reducers 2 --chunk-size 250000 --merge`, run as a child process the
//      way a user runs it (the cluster's spores must offer wc-map and wc-reduce): wall time of
//      that command from start to exit, the merged answer checked against a count made here.
//   E  N=1,000,000 `echo` tasks in one batch: tasks/s, then the nexus's VmHWM (peak RSS).
//   F  1,000 simulated spores in this process (one DEALER and one accepted Curve key each) say
//      hello and heartbeat once a second; the nexus's CPU while idle over --idle-s seconds, then
//      its scheduling rate for N echo tasks answered by the simulated spores.
//
// CPU figures: user+system time from /proc of the nexus, of the spores (from --pids) and of
// this process, per task; "foreign" is the CPU the rest of the (shared) machine used meanwhile.
//
// Thread rule: main thread owns the client; F's simulated spores live on one thread of their own.

#include <sodium.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mesh/crypto/keys.h"
#include "mesh/node/client.h"
#include "mesh/store/db.h"
#include "mesh/store/key_store.h"
#include "mesh/transport/poller.h"
#include "mesh/transport/sockets.h"
#include "mesh/util/bytes.h"
#include "mesh/util/clock.h"
#include "mesh/util/memory.h"
#include "mesh/wire/codec.h"

namespace {

using namespace mesh;
using Steady = std::chrono::steady_clock;

double secondsSince(Steady::time_point t0) {
  return std::chrono::duration<double>(Steady::now() - t0).count();
}

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "mesh_bench: %s\n", message.c_str());
  std::exit(1);
}

void note(const std::string& message) { std::fprintf(stderr, "mesh_bench: %s\n", message.c_str()); }

// ---- options -----------------------------------------------------------------------------------

struct Args {
  std::string workload;
  int reps = 1;
  std::uint64_t n = 0;  // 0: the workload's default
  std::string pidsFile;
  std::string dataDir;  // F: the nexus's data dir
  unsigned sims = 1000;
  unsigned simSlots = 2;
  int idleSeconds = 20;
  double quietMax = 30;  // seconds to wait for a quiet machine before each measurement
  bool check = true;
  std::uint32_t taskTimeoutMs = 0;  // 0: the nexus default
  std::string corpus;               // D: the text to count
  std::string outDir;               // D: where each repetition's output goes
  std::string meshCli;              // D: the mesh command (default: ../nodes/mesh beside this binary)
};

Args gArgs;

Args parseArgs(int argc, char** argv) {
  Args a;
  if (argc < 2) die("usage: mesh_bench A|B|C|D|E|F [--reps N] [--n N] [--pids FILE] [--data-dir DIR] ...");
  a.workload = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) die("option " + k + " needs a value");
      return argv[++i];
    };
    if (k == "--reps") a.reps = std::stoi(next());
    else if (k == "--n") a.n = std::stoull(next());
    else if (k == "--pids") a.pidsFile = next();
    else if (k == "--data-dir") a.dataDir = next();
    else if (k == "--sims") a.sims = static_cast<unsigned>(std::stoul(next()));
    else if (k == "--sim-slots") a.simSlots = static_cast<unsigned>(std::stoul(next()));
    else if (k == "--idle-s") a.idleSeconds = std::stoi(next());
    else if (k == "--quiet-max") a.quietMax = std::stod(next());
    else if (k == "--no-check") a.check = false;
    else if (k == "--task-timeout-ms") a.taskTimeoutMs = static_cast<std::uint32_t>(std::stoul(next()));
    else if (k == "--corpus") a.corpus = next();
    else if (k == "--out") a.outDir = next();
    else if (k == "--mesh") a.meshCli = next();
    else die("unknown option " + k);
  }
  if (a.reps < 1 || a.reps > 100) die("--reps must be 1..100");
  return a;
}

std::string fmt(double v, int decimals = 1);

// ---- /proc accounting --------------------------------------------------------------------------

// A /proc/.../stat file: the command name (without its parentheses) and the fields after it,
// which start at field 3 (state). False when the process or thread is gone.
bool readStat(const std::string& path, std::string* comm, std::vector<std::string>* fields) {
  std::ifstream f(path);
  std::string line;
  if (!std::getline(f, line)) return false;
  auto open = line.find('('), close = line.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close + 2 > line.size()) return false;
  if (comm) *comm = line.substr(open + 1, close - open - 1);
  std::istringstream rest(line.substr(close + 2));
  fields->clear();
  std::string field;
  while (rest >> field) fields->push_back(field);
  return fields->size() >= 15;
}

double ticksToSeconds(const std::string& a, const std::string& b) {
  return (std::stod(a) + std::stod(b)) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// In the fields of readStat: ppid is [1], utime [11], stime [12], cutime [13], cstime [14].
double processCpuSeconds(long pid) {  // utime + stime, 0 when it is gone
  std::vector<std::string> v;
  return readStat("/proc/" + std::to_string(pid) + "/stat", nullptr, &v) ? ticksToSeconds(v[11], v[12]) : 0;
}

// cutime + cstime: what a process's reaped children (a spore's one-shot handler programs) used.
double childrenCpuSeconds(long pid) {
  std::vector<std::string> v;
  return readStat("/proc/" + std::to_string(pid) + "/stat", nullptr, &v) ? ticksToSeconds(v[13], v[14]) : 0;
}

// utime + stime of the live processes whose parent is one of `parents` (a spore's serve
// handlers, which live across tasks and are not reaped while they serve).
double liveChildrenCpuSeconds(const std::vector<long>& parents) {
  double total = 0;
  std::error_code ec;
  std::vector<std::string> v;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (!readStat((entry.path() / "stat").string(), nullptr, &v)) continue;
    long ppid = std::atol(v[1].c_str());
    if (std::find(parents.begin(), parents.end(), ppid) != parents.end()) total += ticksToSeconds(v[11], v[12]);
  }
  return total;
}

double reapedChildrenCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_CHILDREN, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// CPU seconds of each thread of a process, keyed "comm/tid" (the main thread's tid is the PID).
std::map<std::string, double> threadCpuSeconds(long pid) {
  std::map<std::string, double> out;
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  std::error_code ec;
  std::string comm;
  std::vector<std::string> v;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (!readStat((entry.path() / "stat").string(), &comm, &v)) continue;
    out[comm + "/" + entry.path().filename().string()] = ticksToSeconds(v[11], v[12]);
  }
  return out;
}

// JSON object: CPU µs per task of each nexus thread that used any during the run.
std::string threadJson(const std::map<std::string, double>& b, const std::map<std::string, double>& a, std::uint64_t n) {
  std::string s = "{";
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    double d = v - (it == b.end() ? 0.0 : it->second);
    if (d <= 0) continue;
    if (s.size() > 1) s += ",";
    s += "\"" + k + "\":" + fmt(d * 1e6 / n, 2);
  }
  return s + "}";
}

long statusKb(long pid, const std::string& key) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::atol(line.c_str() + key.size() + 1);
  }
  return -1;
}

double selfCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double machineBusySeconds() {
  std::ifstream f("/proc/stat");
  std::string cpu;
  unsigned long long v[8] = {0};
  f >> cpu >> v[0] >> v[1] >> v[2] >> v[3] >> v[4] >> v[5] >> v[6] >> v[7];
  // user nice system idle iowait irq softirq steal: busy = user+nice+system+irq+softirq
  return static_cast<double>(v[0] + v[1] + v[2] + v[5] + v[6]) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// The cluster's processes by role, from cluster.sh's DIR/pids ("name pid" lines).
struct Groups {
  std::vector<long> nexus, spores;
};

Groups readPids(const std::string& file) {
  Groups g;
  if (file.empty()) return g;
  std::ifstream f(file);
  std::string name;
  long pid;
  while (f >> name >> pid) {
    if (name == "nexus") g.nexus = {pid};  // the latest one wins (restart-nexus appends)
    else g.spores.push_back(pid);
  }
  return g;
}

struct CpuSnap {
  double nexus = 0, spores = 0, client = 0, machine = 0;
};

CpuSnap snap(const Groups& g) {
  CpuSnap s;
  for (long p : g.nexus) s.nexus += processCpuSeconds(p);
  for (long p : g.spores) s.spores += processCpuSeconds(p);
  s.client = selfCpuSeconds();
  s.machine = machineBusySeconds();
  return s;
}

std::string fmt(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// JSON fragment: CPU per task by role, CPU used in cores, foreign CPU in cores.
std::string cpuJson(const CpuSnap& b, const CpuSnap& a, std::uint64_t n, double wall, bool haveSpores) {
  double nexus = a.nexus - b.nexus, spores = a.spores - b.spores, client = a.client - b.client;
  double ours = nexus + spores + client;
  double foreign = std::max(0.0, (a.machine - b.machine) - ours);
  std::string s = ",\"cpu_us_per_task\":{\"nexus\":" + fmt(nexus * 1e6 / n, 2);
  if (haveSpores) s += ",\"spores\":" + fmt(spores * 1e6 / n, 2);
  s += ",\"client\":" + fmt(client * 1e6 / n, 2) + "}";
  s += ",\"cpu_util\":" + fmt(ours / wall, 2) + ",\"foreign_cpu_util\":" + fmt(foreign / wall, 2);
  return s;
}

// The machine is shared: wait (at most maxSeconds) for one second in which the whole machine is
// busy less than 0.3 core, as the peers' harness does. Returns the seconds waited.
double waitQuiet(double maxSeconds) {
  auto t0 = Steady::now();
  for (int i = 0; i < 1000; ++i) {
    double b = machineBusySeconds();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    if (machineBusySeconds() - b < 0.3 || secondsSince(t0) > maxSeconds) break;
  }
  return secondsSince(t0);
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  // numpy's default (linear interpolation), as the peers' harness uses.
  double pos = p / 100.0 * static_cast<double>(v.size() - 1);
  auto lo = static_cast<std::size_t>(std::floor(pos));
  auto hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

void emit(const std::string& json) {
  std::printf("%s\n", json.c_str());
  std::fflush(stdout);
}

std::string head(const std::string& workload, int rep, std::uint64_t n) {
  return "{\"workload\":\"" + workload + "\",\"system\":\"hive-mesh\",\"rep\":" + std::to_string(rep) +
         ",\"n\":" + std::to_string(n);
}

// ---- data ------------------------------------------------------------------------------------

std::uint64_t splitmix64(std::uint64_t seed, std::uint64_t k) {
  std::uint64_t z = seed + (k + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string payloadB(std::uint64_t i) {
  std::string p(4096, '\0');
  for (std::uint64_t j = 0; j < 512; ++j) {
    std::uint64_t v = splitmix64(0xB, i * 512 + j);
    for (int b = 0; b < 8; ++b) p[j * 8 + b] = static_cast<char>((v >> (8 * b)) & 0xff);
  }
  return p;
}

std::string sha256Hex(const std::string& data) {
  unsigned char d[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(d, reinterpret_cast<const unsigned char*>(data.data()), data.size());
  return util::toHex(std::string_view(reinterpret_cast<const char*>(d), sizeof d));
}

// ---- client helpers ----------------------------------------------------------------------------

std::string env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) die(std::string(name) + " is not set: source DIR/env of a cluster (scripts/cluster.sh up)");
  return v;
}

std::unique_ptr<node::Client> connectClient(zmq::context_t& ctx) {
  node::ClientOptions o;
  o.endpoint = env("MESH_NEXUS");
  auto key = crypto::loadPublicKey(env("MESH_NEXUS_KEY"));
  if (!key) die("MESH_NEXUS_KEY: " + key.error().message);
  o.nexusKey = *key;
  o.keyFile = env("MESH_KEY");
  o.timeoutMs = 120000;
  auto c = node::Client::connect(ctx, o);
  if (!c) die(c.error().message);
  return std::move(*c);
}

// Submits `n` tasks whose payload i comes from `payload(i)` and waits until the batch is
// durable. Returns the batch id.
std::uint64_t submitAndWait(node::Client& client, const std::string& handler, std::uint64_t n,
                            const std::function<void(std::uint64_t, std::string*)>& payload,
                            Steady::time_point* acked = nullptr) {
  node::BatchOptions bo;
  bo.handler = handler;
  bo.timeoutMs = gArgs.taskTimeoutMs;
  bo.watch = true;  // what `mesh submit --wait` does
  std::uint64_t next = 0;
  auto batch = client.submit(bo, [&](std::string* out) -> util::Result<bool> {
    if (next >= n) return false;
    payload(next++, out);
    return true;
  });
  if (!batch) die("submit: " + batch.error().message);
  if (acked) *acked = Steady::now();
  auto done = client.wait(*batch, {}, 120000);
  if (!done) die("wait: " + done.error().message);
  if (done->succeeded != n) {
    die("batch " + std::to_string(*batch) + ": " + std::to_string(done->succeeded) + " of " + std::to_string(n) +
        " succeeded (" + std::to_string(done->failed) + " failed)");
  }
  return *batch;
}

// Fetches every result of a finished batch and calls check(index, output) for each; dies on a
// result that is not ok, a missing one, or a failed check.
void fetchAndCheck(node::Client& client, std::uint64_t batch, std::uint64_t n,
                   const std::function<bool(std::uint64_t, std::string_view)>& check) {
  std::uint64_t seen = 0;
  auto s = client.results(batch, [&](proto::ResultRow::Reader r) {
    if (r.getIndex() != seen) die("results: expected index " + std::to_string(seen) + ", got " + std::to_string(r.getIndex()));
    if (r.getStatus() != proto::TaskStatus::OK) die("task index " + std::to_string(seen) + " did not succeed");
    if (!check(r.getIndex(), wire::view(r.getOutput()))) die("wrong result for task index " + std::to_string(seen));
    ++seen;
    return true;
  });
  if (!s) die("fetch results: " + s.error().message);
  if (seen != n) die("fetched " + std::to_string(seen) + " results of " + std::to_string(n));
}

// ---- A, B, E: one big batch ------------------------------------------------------------------

void runBatchWorkload(const Args& a, const Groups& g, zmq::context_t& ctx) {
  const std::string& w = a.workload;
  std::uint64_t n = a.n ? a.n : (w == "E" ? 1'000'000 : 20'000);
  auto client = connectClient(ctx);
  // Warm-up (untimed): a few tasks of the kind, so the spores have run the handler once.
  submitAndWait(*client, w == "B" ? "sha256" : "echo", 200, [](std::uint64_t i, std::string* p) { *p = std::to_string(i); });

  std::vector<std::string> payloads, expected;
  if (w == "B") {
    payloads.reserve(n);
    expected.reserve(n);
    for (std::uint64_t i = 0; i < n; ++i) {
      payloads.push_back(payloadB(i));
      expected.push_back(sha256Hex(payloads.back()));
    }
    // The data recipe's published check value (shared/bench/peers/README.md).
    if (expected[0].rfind("8c5eb78a", 0) != 0) die("payload 0 does not match the peers' recipe");
  }
  for (int rep = 1; rep <= a.reps; ++rep) {
    double waited = waitQuiet(a.quietMax);
    auto threadsBefore = g.nexus.empty() ? std::map<std::string, double>{} : threadCpuSeconds(g.nexus[0]);
    CpuSnap before = snap(g);
    auto t0 = Steady::now();
    Steady::time_point acked;
    std::uint64_t batch;
    if (w == "B") {
      batch = submitAndWait(*client, "sha256", n, [&](std::uint64_t i, std::string* p) { *p = payloads[i]; }, &acked);
    } else {
      batch = submitAndWait(*client, "echo", n, [](std::uint64_t i, std::string* p) { *p = std::to_string(i); }, &acked);
    }
    double wall = secondsSince(t0);
    CpuSnap after = snap(g);
    auto threadsAfter = g.nexus.empty() ? std::map<std::string, double>{} : threadCpuSeconds(g.nexus[0]);
    double fetchSeconds = 0;
    if (a.check) {
      auto f0 = Steady::now();
      if (w == "B") {
        fetchAndCheck(*client, batch, n, [&](std::uint64_t i, std::string_view out) { return out == expected[i]; });
      } else {
        fetchAndCheck(*client, batch, n, [](std::uint64_t i, std::string_view out) { return out == std::to_string(i); });
      }
      fetchSeconds = secondsSince(f0);
    }
    std::string j = head(w, rep, n) + ",\"value\":" + fmt(n / wall) + ",\"unit\":\"tasks/s\",\"seconds\":" + fmt(wall, 3) +
                    ",\"submit_acked_s\":" + fmt(std::chrono::duration<double>(acked - t0).count(), 3);
    if (a.check) {
      j += ",\"checked\":true,\"fetch_seconds\":" + fmt(fetchSeconds, 3) +
           ",\"tasks_per_s_with_fetch\":" + fmt(n / (wall + fetchSeconds));
    }
    j += cpuJson(before, after, n, wall, !g.spores.empty());
    if (!g.nexus.empty()) j += ",\"nexus_threads_cpu_us_per_task\":" + threadJson(threadsBefore, threadsAfter, n);
    j += ",\"waited_s\":" + fmt(waited, 1) + ",\"batch\":" + std::to_string(batch);
    if (w == "E" && !g.nexus.empty()) {
      j += ",\"nexus_vmhwm_kib\":" + std::to_string(statusKb(g.nexus[0], "VmHWM")) +
           ",\"nexus_vmrss_kib\":" + std::to_string(statusKb(g.nexus[0], "VmRSS"));
    }
    emit(j + "}");
    if (w == "E" && !g.nexus.empty()) {
      long hwm = statusKb(g.nexus[0], "VmHWM");
      emit(head("E-rss", rep, n) + ",\"value\":" + fmt(hwm / 1024.0) + ",\"unit\":\"MiB peak RSS\",\"source\":\"VmHWM\"}");
    }
  }
}

// ---- C: sequential single-task batches ------------------------------------------------------

void runLatency(const Args& a, const Groups& g, zmq::context_t& ctx) {
  std::uint64_t n = a.n ? a.n : 2000;
  auto client = connectClient(ctx);
  submitAndWait(*client, "echo", 200, [](std::uint64_t i, std::string* p) { *p = std::to_string(i); });
  for (std::uint64_t i = 0; i < 20; ++i) {  // warm-up of the one-task path itself
    submitAndWait(*client, "echo", 1, [](std::uint64_t, std::string* p) { *p = "w"; });
  }
  for (int rep = 1; rep <= a.reps; ++rep) {
    double waited = waitQuiet(a.quietMax);
    std::vector<double> lat, latFetch, latSubmit;
    lat.reserve(n);
    latFetch.reserve(n);
    auto threadsBefore = g.nexus.empty() ? std::map<std::string, double>{} : threadCpuSeconds(g.nexus[0]);
    CpuSnap before = snap(g);
    auto tw = Steady::now();
    for (std::uint64_t i = 0; i < n; ++i) {
      std::string payload = std::to_string(i);
      auto t0 = Steady::now();
      Steady::time_point ta;
      std::uint64_t batch = submitAndWait(*client, "echo", 1, [&](std::uint64_t, std::string* p) { *p = payload; }, &ta);
      auto t1 = Steady::now();
      fetchAndCheck(*client, batch, 1, [&](std::uint64_t, std::string_view out) { return out == payload; });
      auto t2 = Steady::now();
      lat.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      latFetch.push_back(std::chrono::duration<double, std::micro>(t2 - t0).count());
      latSubmit.push_back(std::chrono::duration<double, std::micro>(ta - t0).count());
    }
    double wall = secondsSince(tw);
    CpuSnap after = snap(g);
    double mean = 0;
    for (double v : latFetch) mean += v;
    mean /= static_cast<double>(latFetch.size());
    // The value is the time until the result is in hand, as the peers measure it; "finished"
    // is the time until the batch's last Progress arrived (which brings a small batch's results).
    std::string j = head("C", rep, n) + ",\"value\":" + fmt(percentile(latFetch, 50)) + ",\"unit\":\"us p50\",\"p99\":" +
                    fmt(percentile(latFetch, 99)) + ",\"mean_us\":" + fmt(mean) +
                    ",\"max_us\":" + fmt(*std::max_element(latFetch.begin(), latFetch.end())) +
                    ",\"p50_finished\":" + fmt(percentile(lat, 50)) +
                    ",\"p99_finished\":" + fmt(percentile(lat, 99)) +
                    ",\"p50_submit_ack\":" + fmt(percentile(latSubmit, 50)) + ",\"seconds\":" + fmt(wall, 3);
    j += cpuJson(before, after, n, wall, !g.spores.empty());
    if (!g.nexus.empty()) {
      j += ",\"nexus_threads_cpu_us_per_task\":" + threadJson(threadsBefore, threadCpuSeconds(g.nexus[0]), n);
    }
    j += ",\"waited_s\":" + fmt(waited, 1) + "}";
    emit(j);
  }
}

// ---- D: word count with mesh mapreduce ---------------------------------------------------------

// The answer, counted here independently of the mesh: "word<TAB>count" for every distinct
// whitespace-separated word, sorted bytewise.
std::vector<std::string> countWords(const std::string& text) {
  std::map<std::string, std::uint64_t, std::less<>> counts;
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && space(text[i])) ++i;
    std::size_t start = i;
    while (i < text.size() && !space(text[i])) ++i;
    if (i > start) {
      std::string_view w(text.data() + start, i - start);
      auto it = counts.find(w);
      if (it == counts.end()) counts.emplace(std::string(w), 1);
      else ++it->second;
    }
  }
  std::vector<std::string> lines;
  lines.reserve(counts.size());
  for (const auto& [w, c] : counts) lines.push_back(w + "\t" + std::to_string(c));
  return lines;
}

std::vector<std::string> sortedLines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) if (!line.empty()) lines.push_back(line);
  std::sort(lines.begin(), lines.end());
  return lines;
}

std::string readWhole(const std::string& path) {
  auto text = util::readFile(path, 1ull << 34);
  if (!text) die(text.error().message);
  return std::move(*text);
}

// Runs argv to completion with stdout to `stdoutPath`; returns the exit status (-1: not run).
int runCommand(const std::vector<std::string>& argv, const std::string& stdoutPath) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    FILE* out = std::freopen(stdoutPath.c_str(), "w", stdout);
    if (out == nullptr) _exit(126);
    execv(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void runWordCount(const Args& a, const Groups& g, const char* argv0) {
  if (a.corpus.empty() || a.outDir.empty()) die("D needs --corpus FILE and --out DIR");
  std::string cli = a.meshCli;
  if (cli.empty()) {
    std::error_code ec;
    auto self = std::filesystem::canonical(argv0, ec);
    if (ec) die("cannot find the mesh command: give --mesh PATH");
    cli = (self.parent_path().parent_path() / "nodes" / "mesh").string();
  }
  if (access(cli.c_str(), X_OK) != 0) die("no mesh command at " + cli + ": give --mesh PATH");
  note("counting the words of " + a.corpus + " here (untimed) to check the mesh's answer");
  std::vector<std::string> expected;
  std::uint64_t bytes = 0;
  {
    std::string text = readWhole(a.corpus);
    bytes = text.size();
    expected = countWords(text);
  }
  for (int rep = 1; rep <= a.reps; ++rep) {
    double waited = waitQuiet(a.quietMax);
    std::string out = a.outDir + "/d-rep" + std::to_string(rep);
    std::filesystem::remove_all(out);
    std::vector<std::string> argv = {cli, "mapreduce", "--mapper", "wc-map", "--reducer", "wc-reduce",
                                     "--reducers", "2", "--chunk-size", "250000", "--merge", "--quiet",
                                     "--json", "--output", out, a.corpus};
    CpuSnap before = snap(g);
    // Handler programs: the reaped ones (one-shot runs) and the live ones (serve processes).
    double handlersBefore = liveChildrenCpuSeconds(g.spores);
    for (long p : g.spores) handlersBefore += childrenCpuSeconds(p);
    double cliBefore = reapedChildrenCpuSeconds();
    auto t0 = Steady::now();
    int rc = runCommand(argv, out + ".json");
    double wall = secondsSince(t0);
    CpuSnap after = snap(g);
    double handlers = liveChildrenCpuSeconds(g.spores) - handlersBefore;
    for (long p : g.spores) handlers += childrenCpuSeconds(p);
    double cliCpu = reapedChildrenCpuSeconds() - cliBefore;
    if (rc != 0) die("mesh mapreduce exited with " + std::to_string(rc) + " (its JSON: " + out + ".json)");
    std::string report = readWhole(out + ".json");
    auto field = [&report](const std::string& key) -> std::string {
      auto at = report.find("\"" + key + "\":");
      if (at == std::string::npos) return "null";
      at += key.size() + 3;
      auto end = report.find_first_of(",}", at);
      return report.substr(at, end - at);
    };
    std::uint64_t mapTasks = std::strtoull(field("map_tasks").c_str(), nullptr, 10);
    if (a.check && sortedLines(readWhole(out + "/merged")) != expected) {
      die("D: the merged word counts in " + out + "/merged differ from the count made here");
    }
    double ours = (after.nexus - before.nexus) + (after.spores - before.spores) + handlers + cliCpu;
    double foreign = std::max(0.0, (after.machine - before.machine) - ours);
    std::string j = head("D", rep, mapTasks) + ",\"value\":" + fmt(wall, 3) + ",\"unit\":\"s wall\"" +
                    ",\"bytes\":" + std::to_string(bytes) + ",\"cli_seconds\":" + field("seconds") +
                    ",\"cpu_s\":{\"nexus\":" + fmt(after.nexus - before.nexus, 3) +
                    ",\"spores\":" + fmt(after.spores - before.spores, 3) + ",\"handlers\":" + fmt(handlers, 3) +
                    ",\"mesh_cli\":" + fmt(cliCpu, 3) + "}" + ",\"cpu_util\":" + fmt(ours / wall, 2) +
                    ",\"foreign_cpu_util\":" + fmt(foreign / wall, 2) + ",\"checked\":" +
                    (a.check ? "true" : "false") + ",\"waited_s\":" + fmt(waited, 1) + "}";
    emit(j);
    std::filesystem::remove_all(out);
  }
}

// ---- F: simulated spores ----------------------------------------------------------------------

struct SimStats {
  std::atomic<unsigned> welcomed{0};
  std::atomic<std::uint64_t> tasksAnswered{0};
  std::atomic<std::uint64_t> assigns{0};
  std::atomic<std::uint64_t> heartbeatsSent{0};
  std::atomic<std::uint64_t> heartbeatsReceived{0};
  std::atomic<std::uint64_t> errors{0};
  std::atomic<unsigned> sporesWithTasks{0};
  std::atomic<bool> ready{false};
  std::string failure;
};

// One thread: `keys.size()` DEALERs to the nexus node port, each a spore that says hello,
// heartbeats every second (staggered over the second) and answers echo tasks at once.
void simulateSpores(std::vector<crypto::KeyPair>& keys, unsigned slots, const std::string& endpoint,
                    const crypto::PublicKey& nexusKey, const std::atomic<bool>& stop, SimStats& stats) {
  zmq::context_t ctx = transport::makeContext();
  zmq_ctx_set(ctx.handle(), ZMQ_MAX_SOCKETS, static_cast<int>(keys.size()) + 64);
  const std::size_t n = keys.size();
  std::vector<zmq::socket_t> sockets;
  sockets.reserve(n);
  transport::SocketLimits limits;
  limits.lingerMs = 0;
  limits.sendHwm = 100000;
  limits.recvHwm = 100000;
  const auto& clock = util::systemClock();
  auto hello = [&](std::size_t i) {
    wire::Encoder e(0, 128);
    auto h = e.body().initHello();
    h.setName("sim-" + std::to_string(i));
    h.setSoftwareVersion("0.1.0");
    h.setSlots(static_cast<std::uint16_t>(slots));
    h.initHandlers(1).set(0, "echo");
    h.setFoundBy("seed");
    h.setPid(static_cast<std::uint32_t>(getpid()));
    (void)sockets[i].send(e.finish(), zmq::send_flags::dontwait);
  };
  std::vector<std::int64_t> nextBeat(n);
  std::vector<bool> welcomed(n, false), gotTasks(n, false);
  std::int64_t start = clock.monotonicMs();
  for (std::size_t i = 0; i < n; ++i) {
    sockets.push_back(transport::makeClientSocket(ctx, zmq::socket_type::dealer, keys[i], nexusKey, limits));
    sockets.back().connect(endpoint);
    hello(i);
    nextBeat[i] = start + 1000 + static_cast<std::int64_t>(i * 1000 / n);
  }
  // The nodes' own wait (transport::Poller): one poll(2) over the 1,000 sockets' fds instead of
  // zmq::poll's two ZMQ_EVENTS asks of each, so that the simulator takes less CPU away from the
  // nexus it measures. Every send below tells the poller (its contract).
  transport::Poller poller;
  for (std::size_t i = 0; i < n; ++i) poller.add(sockets[i]);
  wire::Limits wl;
  stats.ready = true;
  while (!stop.load()) {
    std::int64_t now = clock.monotonicMs();
    std::int64_t wake = now + 100;
    for (auto t : nextBeat) wake = std::min(wake, t);
    poller.wait(std::max<std::int64_t>(0, wake - now));
    for (std::size_t i = 0; i < n; ++i) {
      if (!poller.ready(i)) continue;
      for (int k = 0; k < 256; ++k) {
        zmq::message_t m;
        if (!sockets[i].recv(m, zmq::recv_flags::dontwait)) {
          poller.drained(i);
          break;
        }
        auto d = wire::decode(std::move(m), wl);
        if (!d) {
          ++stats.errors;
          continue;
        }
        auto body = d->envelope().getBody();
        switch (d->which()) {
          case proto::Envelope::Body::WELCOME:
            if (!welcomed[i]) {
              welcomed[i] = true;
              ++stats.welcomed;
            }
            break;
          case proto::Envelope::Body::HEARTBEAT:
            ++stats.heartbeatsReceived;
            break;
          case proto::Envelope::Body::ASSIGN: {
            auto tasks = body.getAssign().getTasks();
            std::size_t bytes = 0;
            for (auto t : tasks) bytes += t.getPayload().size() + 96;
            wire::Encoder e(0, static_cast<unsigned>(bytes / 8 + 64));
            auto list = e.body().initResults().initResults(tasks.size());
            std::int64_t wall = clock.wallMs();
            for (unsigned t = 0; t < tasks.size(); ++t) {
              auto in = tasks[t];
              auto out = list[t];
              out.setId(in.getId());
              out.setAttempt(in.getAttempt());
              out.setStatus(in.getHandler() == "echo" ? proto::TaskStatus::OK : proto::TaskStatus::UNKNOWN_HANDLER);
              out.setOutput(in.getPayload());
              out.setStartedMs(wall);
              out.setDurationUs(1);
            }
            (void)sockets[i].send(e.finish(), zmq::send_flags::dontwait);
            poller.touched(i);
            ++stats.assigns;
            stats.tasksAnswered += tasks.size();
            if (!gotTasks[i]) {
              gotTasks[i] = true;
              ++stats.sporesWithTasks;
            }
            break;
          }
          case proto::Envelope::Body::ERROR: {
            ++stats.errors;
            if (wire::view(body.getError().getMessage()) == "hello first") {
              hello(i);
              poller.touched(i);
            }
            break;
          }
          default:
            break;
        }
      }
    }
    now = clock.monotonicMs();
    for (std::size_t i = 0; i < n; ++i) {
      if (now < nextBeat[i]) continue;
      nextBeat[i] += 1000;
      if (nextBeat[i] <= now) nextBeat[i] = now + 1000;
      wire::Encoder e(0, 32);
      auto hb = e.body().initHeartbeat();
      hb.setCpuPct(10);
      hb.setMemPct(20);
      hb.setRunning(0);
      hb.setFreeSlots(slots);
      (void)sockets[i].send(e.finish(), zmq::send_flags::dontwait);
      poller.touched(i);
      ++stats.heartbeatsSent;
    }
  }
}

std::string readEndpoint(const std::string& dataDir, const std::string& which) {
  std::ifstream f(dataDir + "/endpoints");
  std::string name, ep;
  while (f >> name >> ep) {
    if (name == which) return ep;
  }
  die("no " + which + " endpoint in " + dataDir + "/endpoints");
}

void runSimulated(const Args& a, const Groups& g, zmq::context_t& ctx) {
  if (a.dataDir.empty()) die("F needs --data-dir DIR/nexus (to accept the simulated spores' keys)");
  if (g.nexus.empty()) die("F needs --pids DIR/pids (the nexus PID)");
  long nexusPid = g.nexus[0];
  // 1. keys, accepted in one transaction through the store API (as `mesh keys accept` would).
  std::vector<crypto::KeyPair> keys;
  keys.reserve(a.sims);
  auto k0 = Steady::now();
  for (unsigned i = 0; i < a.sims; ++i) keys.push_back(crypto::KeyPair::generate());
  {
    auto db = store::Db::open(a.dataDir + "/nexus.db");
    if (!db) die("open the nexus database: " + db.error().message);
    store::KeyStore ks(*db);
    store::Transaction tx(*db);
    if (!tx.begun()) die("begin: " + tx.begun().error().message);
    std::int64_t now = util::systemClock().wallMs();
    for (unsigned i = 0; i < a.sims; ++i) {
      if (auto s = ks.accept(keys[i].publicKey, store::Role::kNode, "sim-" + std::to_string(i), now); !s) {
        die("accept: " + s.error().message);
      }
    }
    if (auto s = tx.commit(); !s) die("commit: " + s.error().message);
  }
  note("generated and accepted " + std::to_string(a.sims) + " keys in " + fmt(secondsSince(k0), 2) + " s");
  auto nexusKey = crypto::loadPublicKey(a.dataDir + "/nexus.key.pub");
  if (!nexusKey) die("nexus key: " + nexusKey.error().message);
  std::string nodeEndpoint = readEndpoint(a.dataDir, "node");

  // 2. the simulated spores join.
  std::atomic<bool> stop{false};
  SimStats stats;
  auto j0 = Steady::now();
  std::thread sim([&] {
    try {
      simulateSpores(keys, a.simSlots, nodeEndpoint, *nexusKey, stop, stats);
    } catch (const std::exception& e) {
      stats.failure = e.what();
      stats.ready = true;
    }
  });
  for (int i = 0; i < 1200 && stats.welcomed.load() < a.sims && stats.failure.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  double joinSeconds = secondsSince(j0);
  auto finish = [&] {
    stop = true;
    sim.join();
  };
  if (!stats.failure.empty()) {
    finish();
    die("simulated spores: " + stats.failure);
  }
  if (stats.welcomed.load() < a.sims) {
    unsigned got = stats.welcomed.load();
    finish();
    die("only " + std::to_string(got) + " of " + std::to_string(a.sims) + " simulated spores were welcomed in 60 s");
  }
  note(std::to_string(a.sims) + " simulated spores welcomed in " + fmt(joinSeconds, 2) + " s");
  std::this_thread::sleep_for(std::chrono::seconds(3));  // let the join burst settle

  for (int rep = 1; rep <= a.reps; ++rep) {
    // 3. idle: the nexus's CPU while 1,000 spores heartbeat.
    double waited = waitQuiet(a.quietMax);
    double n0 = processCpuSeconds(nexusPid), s0 = selfCpuSeconds(), m0 = machineBusySeconds();
    std::uint64_t hb0 = stats.heartbeatsSent.load();
    auto i0 = Steady::now();
    std::this_thread::sleep_for(std::chrono::seconds(a.idleSeconds));
    double wall = secondsSince(i0);
    double nexusCpu = processCpuSeconds(nexusPid) - n0, simCpu = selfCpuSeconds() - s0;
    double foreign = std::max(0.0, machineBusySeconds() - m0 - nexusCpu - simCpu);
    std::uint64_t beats = stats.heartbeatsSent.load() - hb0;
    emit(head("F-idle", rep, a.sims) + ",\"value\":" + fmt(100.0 * nexusCpu / wall, 2) +
         ",\"unit\":\"% of one core\",\"seconds\":" + fmt(wall, 2) + ",\"nexus_cpu_s\":" + fmt(nexusCpu, 3) +
         ",\"simulator_cpu_pct\":" + fmt(100.0 * simCpu / wall, 2) + ",\"heartbeats_sent_per_s\":" + fmt(beats / wall) +
         ",\"foreign_cpu_util\":" + fmt(foreign / wall, 2) + ",\"waited_s\":" + fmt(waited, 1) +
         ",\"join_seconds\":" + fmt(joinSeconds, 2) + ",\"nexus_vmrss_kib\":" + std::to_string(statusKb(nexusPid, "VmRSS")) + "}");

    // 4. load: echo tasks answered by the simulated spores.
    std::uint64_t n = a.n ? a.n : 200'000;
    auto client = connectClient(ctx);
    waited = waitQuiet(a.quietMax);
    std::uint64_t answered0 = stats.tasksAnswered.load(), assigns0 = stats.assigns.load();
    n0 = processCpuSeconds(nexusPid);
    s0 = selfCpuSeconds();
    m0 = machineBusySeconds();
    auto t0 = Steady::now();
    std::uint64_t batch = submitAndWait(*client, "echo", n, [](std::uint64_t i, std::string* p) { *p = std::to_string(i); });
    wall = secondsSince(t0);
    nexusCpu = processCpuSeconds(nexusPid) - n0;
    simCpu = selfCpuSeconds() - s0;
    foreign = std::max(0.0, machineBusySeconds() - m0 - nexusCpu - simCpu);
    std::uint64_t answered = stats.tasksAnswered.load() - answered0, assigns = stats.assigns.load() - assigns0;
    if (a.check) {
      fetchAndCheck(*client, batch, n, [](std::uint64_t i, std::string_view out) { return out == std::to_string(i); });
    }
    emit(head("F-load", rep, n) + ",\"value\":" + fmt(n / wall) + ",\"unit\":\"tasks/s\",\"seconds\":" + fmt(wall, 3) +
         ",\"checked\":" + (a.check ? "true" : "false") + ",\"cpu_us_per_task\":{\"nexus\":" + fmt(nexusCpu * 1e6 / n, 2) +
         ",\"simulator_and_client\":" + fmt(simCpu * 1e6 / n, 2) + "},\"nexus_cpu_util\":" + fmt(nexusCpu / wall, 2) +
         ",\"foreign_cpu_util\":" + fmt(foreign / wall, 2) + ",\"tasks_per_assign\":" +
         fmt(assigns ? static_cast<double>(answered) / static_cast<double>(assigns) : 0.0) +
         ",\"spores_given_tasks\":" + std::to_string(stats.sporesWithTasks.load()) + ",\"waited_s\":" + fmt(waited, 1) +
         ",\"nexus_vmhwm_kib\":" + std::to_string(statusKb(nexusPid, "VmHWM")) + "}");
  }
  finish();
  if (stats.errors.load()) note(std::to_string(stats.errors.load()) + " error messages from the nexus to simulated spores");
}

}  // namespace

int main(int argc, char** argv) {
  util::retainFreedMemory();  // as the `mesh` command does: frames of a few MiB reuse memory
  try {
    if (sodium_init() < 0) die("libsodium failed to initialise");
    Args a = parseArgs(argc, argv);
    gArgs = a;
    Groups g = readPids(a.pidsFile);
    zmq::context_t ctx = transport::makeContext();
    if (a.workload == "A" || a.workload == "B" || a.workload == "E") runBatchWorkload(a, g, ctx);
    else if (a.workload == "C") runLatency(a, g, ctx);
    else if (a.workload == "F") runSimulated(a, g, ctx);
    else if (a.workload == "D") runWordCount(a, g, argv[0]);
    else die("unknown workload " + a.workload + " (A, B, C, D, E or F)");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mesh_bench: fatal: %s\n", e.what());
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "mesh_bench: fatal: %s\n", e.getDescription().cStr());
  }
  return 1;
}
