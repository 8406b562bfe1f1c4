// Shared by the three main()s: signal handling that asks the actor loop to stop.
#pragma once

#include <pthread.h>

#include <atomic>
#include <csignal>

namespace mesh::nodes {

inline std::atomic<bool> gStop{false};
inline std::atomic<int> gStops{0};  // signals received: a spore leaves gently at 1, at once at 2
inline pthread_t gMainThread{};     // the thread whose poll the signals must interrupt

// Call from the main thread, which runs the actor loop. A process-directed signal goes to any
// thread that does not block it; one that lands on another thread (a worker, ZeroMQ's I/O
// thread) is passed on to the main thread, so that it is counted once, there, and interrupts
// the loop's poll at once instead of at its next timeout.
inline void stopOnSignals() {
  gMainThread = pthread_self();
  struct sigaction sa {};
  sa.sa_handler = [](int sig) {
    if (!pthread_equal(pthread_self(), gMainThread)) {
      pthread_kill(gMainThread, sig);  // async-signal-safe
      return;
    }
    gStop.store(true);
    gStops.fetch_add(1);
  };
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

}  // namespace mesh::nodes
