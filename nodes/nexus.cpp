// nexus: parse options, start the Nexus, serve until SIGINT/SIGTERM.
#include <cstdio>
#include <kj/exception.h>

#include "mesh/config/config.h"
#include "mesh/node/nexus.h"
#include "mesh/transport/sockets.h"
#include "mesh/util/log.h"
#include "mesh/util/memory.h"
#include "nodes/main_support.h"

int main(int argc, char** argv) {
  using namespace mesh;
  util::retainFreedMemory();
  try {
    auto parsed = config::parseNexus(argc, argv);
    if (!parsed) {
      std::fprintf(stderr, "nexus: %s\n", parsed.error().message.c_str());
      return 2;
    }
    if (!parsed->config) {
      std::fputs(parsed->help.c_str(), stdout);
      return 0;
    }
    util::setLogName("nexus");
    util::LogLevel level;
    if (!util::parseLogLevel(parsed->config->logLevel, &level)) {
      std::fprintf(stderr, "nexus: --log-level must be debug, info, warn or error\n");
      return 2;
    }
    util::setLogLevel(level);
    nodes::stopOnSignals();
    // With two I/O threads the Curve work of the client port (decrypting submits) and of the
    // node port (encrypting assignments) runs on two cores instead of one (docs/benchmarks.md).
    auto ctx = transport::makeContext(parsed->config->ioThreads);
    auto nexus = node::Nexus::start(ctx, *parsed->config);
    if (!nexus) {
      std::fprintf(stderr, "nexus: %s\n", nexus.error().message.c_str());
      return nexus.error().code == 2 ? 2 : 1;  // 2: a bad option or file named by one (not restarted)
    }
    (*nexus)->run(nodes::gStop);
    MESH_INFO("stopped");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nexus: fatal: %s (this is a bug: please report it with the log)\n", e.what());
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "nexus: fatal: %s (this is a bug: please report it with the log)\n", e.getDescription().cStr());
  }
  return 1;
}
