// Shared by the three main()s: signal handling that asks the actor loop to stop.
#pragma once

#include <csignal>
#include <atomic>

namespace mesh::nodes {

inline std::atomic<bool> gStop{false};
inline std::atomic<int> gStops{0};  // signals received: a spore leaves gently at 1, at once at 2

inline void stopOnSignals() {
  struct sigaction sa {};
  sa.sa_handler = [](int) {
    gStop.store(true);
    gStops.fetch_add(1);
  };
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

}  // namespace mesh::nodes
