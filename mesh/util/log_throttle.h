// LogThrottle: lets one log line per key through per interval and counts the rest, so that a
// condition that repeats every second (a beacon that cannot be sent, a neighbour's malformed
// beacons, a full disk under the store) is reported once a minute with a count, not once a
// second forever. Counters still count every event; the throttle only decides which events get
// a line.
// Thread rule: owned by one actor, like util::Counters; not thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "mesh/util/clock.h"

namespace mesh::util {

class LogThrottle {
 public:
  // `clock` must outlive the throttle. intervalMs > 0.
  explicit LogThrottle(const util::Clock& clock, std::int64_t intervalMs = 60'000)
      : clock_(&clock), intervalMs_(intervalMs) {}

  // Records one event of kind `key`. Returns the number of events of that kind that were
  // suppressed since the last line when a line may be written now (the first event of a kind
  // always gets one), or nullopt when this event should stay silent.
  std::optional<std::uint64_t> admit(const std::string& key) {
    const std::int64_t now = clock_->monotonicMs();
    auto [it, fresh] = state_.try_emplace(key);
    State& s = it->second;
    if (!fresh && now - s.lastLineMs < intervalMs_) {
      ++s.suppressed;
      return std::nullopt;
    }
    const std::uint64_t suppressed = s.suppressed;
    s = State{now, 0};
    return suppressed;
  }

 private:
  struct State {
    std::int64_t lastLineMs = 0;
    std::uint64_t suppressed = 0;
  };
  const util::Clock* clock_;
  std::int64_t intervalMs_;
  std::map<std::string, State> state_;
};

// " (12 more since the last line)" for a throttled log line; nothing when none were held back.
inline std::string heldBack(std::uint64_t n) {
  return n == 0 ? std::string() : " (" + std::to_string(n) + " more since the last line)";
}

}  // namespace mesh::util
