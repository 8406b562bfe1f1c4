#include "mesh/util/clock.h"

#include <ctime>

namespace mesh::util {
namespace {
std::int64_t readUs(clockid_t id) {
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000 + ts.tv_nsec / 1000;
}
}  // namespace

std::int64_t SystemClock::monotonicMs() const { return readUs(CLOCK_MONOTONIC) / 1000; }
std::int64_t SystemClock::wallMs() const { return readUs(CLOCK_REALTIME) / 1000; }
std::int64_t SystemClock::monotonicUs() const { return readUs(CLOCK_MONOTONIC); }

const Clock& systemClock() {
  static const SystemClock clock;
  return clock;
}

}  // namespace mesh::util
