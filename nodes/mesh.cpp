// mesh: the command line client. Parse, run one command, exit with its code.
#include <cstdio>
#include <kj/exception.h>

#include "mesh/config/config.h"
#include "mesh/node/cli.h"
#include "mesh/util/log.h"
#include "mesh/util/memory.h"

int main(int argc, char** argv) {
  using namespace mesh;
  util::retainFreedMemory();
  try {
    auto parsed = config::parseCli(argc, argv);
    if (!parsed) {
      std::fprintf(stderr, "mesh: %s\n", parsed.error().message.c_str());
      return 2;
    }
    if (!parsed->config) {
      std::fputs(parsed->help.c_str(), stdout);
      return 0;
    }
    util::setLogName("mesh");
    util::setLogLevel(util::LogLevel::kWarn);
    return node::runCli(*parsed->config);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mesh: %s\n", e.what());
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "mesh: %s\n", e.getDescription().cStr());
  }
  return 1;
}
