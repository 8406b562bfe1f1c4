// spore: parse options, register the handlers, start the Spore, work until SIGINT/SIGTERM.
#include <cstdio>
#include <kj/exception.h>

#include "mesh/config/config.h"
#include "mesh/exec/builtins.h"
#include "mesh/exec/registry.h"
#include "mesh/exec/strays.h"
#include "mesh/exec/subprocess.h"
#include "mesh/node/spore.h"
#include "mesh/transport/sockets.h"
#include "mesh/util/log.h"
#include "mesh/util/memory.h"
#include "nodes/main_support.h"

int main(int argc, char** argv) {
  using namespace mesh;
  util::retainFreedMemory();
  try {
    auto parsed = config::parseSpore(argc, argv);
    if (!parsed) {
      std::fprintf(stderr, "spore: %s\n", parsed.error().message.c_str());
      return 2;
    }
    if (!parsed->config) {
      std::fputs(parsed->help.c_str(), stdout);
      return 0;
    }
    const auto& config = *parsed->config;
    util::setLogName("spore " + config.name);
    util::LogLevel level;
    if (!util::parseLogLevel(config.logLevel, &level)) {
      std::fprintf(stderr, "spore: --log-level must be debug, info, warn or error\n");
      return 2;
    }
    util::setLogLevel(level);
    nodes::stopOnSignals();
    exec::ignoreSigpipe();
    // Processes a handler leaves outside its process group come here, not to init, and die
    // when its task ends (mesh/exec/strays.h).
    if (auto s = exec::strays::enable(); !s)
      MESH_WARN("%s: processes that handlers leave outside their process group will outlive their tasks",
                s.error().message.c_str());
    exec::HandlerRegistry registry;
    exec::registerBuiltins(registry);
    if (!config.handlersDir.empty()) {
      auto programs = exec::scanHandlerDirectory(config.handlersDir);
      if (!programs) {
        std::fprintf(stderr, "spore: --handlers: %s\n", programs.error().message.c_str());
        return 2;
      }
      MESH_INFO("%zu handler programs from %s", programs->size(), config.handlersDir.c_str());
      registry.setPrograms(exec::Source::kDirectory, std::move(*programs));
    }
    auto ctx = transport::makeContext();
    auto spore = node::Spore::start(ctx, config, registry);
    if (!spore) {
      std::fprintf(stderr, "spore: %s\n", spore.error().message.c_str());
      return spore.error().code == 2 ? 2 : 1;  // 2: a bad option or file named by one (not restarted)
    }
    (*spore)->run(nodes::gStops);
    (*spore).reset();  // the workers end, and with them every run: the last strays are swept
    if (std::uint64_t strays = exec::strays::totals().killed; strays > 0)
      MESH_INFO("stopped (%llu processes that handlers left running after their tasks were killed)",
                static_cast<unsigned long long>(strays));
    else
      MESH_INFO("stopped");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "spore: fatal: %s (this is a bug: please report it with the log)\n", e.what());
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "spore: fatal: %s (this is a bug: please report it with the log)\n", e.getDescription().cStr());
  }
  return 1;
}
