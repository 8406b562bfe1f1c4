// The nexus: accepts batches from clients, keeps them durably in SQLite, routes tasks to
// spores by load, records exactly one result per task, and answers the CLI.
//
// One actor: one thread runs run(), polling the node ROUTER, the client ROUTER, the store
// writer's inproc socket, and (with --beacon) nothing else: the beacon is sent from the loop's
// timers. SQLite group commits run on the StoreWriter thread; ZAP decisions on the ZapHandler
// thread, each with its own database connection.
//
// Start-up order (DESIGN.md section 2): open the store, load keys, start the ZAP handler,
// bind the server sockets, knock on each port with a throwaway key and refuse to serve if it
// gets in, recover unfinished batches, write DATA_DIR/endpoints, serve.
#pragma once

#include <atomic>
#include <memory>
#include <zmq.hpp>

#include "mesh/config/config.h"
#include "mesh/util/result.h"

namespace mesh::node {

class NexusImpl;

class Nexus {
 public:
  static util::Result<std::unique_ptr<Nexus>> start(zmq::context_t& ctx, const config::NexusConfig& config);
  ~Nexus();
  // Serves until `stop` becomes true (checked at least every 250 ms).
  void run(const std::atomic<bool>& stop);

 private:
  explicit Nexus(std::unique_ptr<NexusImpl> impl);
  std::unique_ptr<NexusImpl> impl_;
};

}  // namespace mesh::node
