// Clock: the one source of time for the actors, injectable so tests can drive timers.
// Thread rule: SystemClock is stateless and safe from any thread; a test clock is not.
#pragma once

#include <cstdint>

namespace mesh::util {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic milliseconds (deadlines, timers). Never goes back.
  virtual std::int64_t monotonicMs() const = 0;
  // Wall clock, milliseconds since the Unix epoch (timestamps shown to users, stored).
  virtual std::int64_t wallMs() const = 0;
  // Monotonic microseconds, for durations.
  virtual std::int64_t monotonicUs() const = 0;
};

class SystemClock final : public Clock {
 public:
  std::int64_t monotonicMs() const override;
  std::int64_t wallMs() const override;
  std::int64_t monotonicUs() const override;
};

// A clock that moves only when told; for unit tests of timers.
class ManualClock final : public Clock {
 public:
  std::int64_t monotonicMs() const override { return nowUs_ / 1000; }
  std::int64_t wallMs() const override { return 1'700'000'000'000 + nowUs_ / 1000; }
  std::int64_t monotonicUs() const override { return nowUs_; }
  void advanceMs(std::int64_t ms) { nowUs_ += ms * 1000; }

 private:
  std::int64_t nowUs_ = 1'000'000;
};

// The process's SystemClock (stateless, so sharing it is not shared state).
const Clock& systemClock();

}  // namespace mesh::util
