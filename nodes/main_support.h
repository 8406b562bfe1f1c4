// Shared by the three main()s: signal handling that asks the actor loop to stop.
#pragma once

#include <csignal>
#include <atomic>

namespace mesh::nodes {

inline std::atomic<bool> gStop{false};

inline void stopOnSignals() {
  struct sigaction sa {};
  sa.sa_handler = [](int) { gStop.store(true); };
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

}  // namespace mesh::nodes
