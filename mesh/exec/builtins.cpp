#include "mesh/exec/builtins.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <thread>

#include "mesh/crypto/sha256.h"
#include "mesh/util/bytes.h"
#include "mesh/util/clock.h"

namespace mesh::exec {
namespace {

constexpr std::int64_t kMaxSleepMs = 86'400'000;  // one day
constexpr std::int64_t kSleepSliceMs = 10;        // how often sleep looks at cancel
constexpr std::size_t kQuoteMax = 32;             // payload bytes quoted in an error

TaskOutput echoPayload(const TaskInput& input) {
  return {Outcome::kOk, std::string(input.payload), {}};
}

TaskOutput sha256Hex(const TaskInput& input) {
  const crypto::Sha256Digest digest = crypto::sha256(input.payload);
  return {Outcome::kOk,
          util::toHex(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size())), {}};
}

TaskOutput sleepMs(const TaskInput& input) {
  std::string_view text = input.payload;
  std::int64_t ms = -1;
  bool digits = !text.empty() && std::all_of(text.begin(), text.end(),
                                              [](char c) { return c >= '0' && c <= '9'; });
  if (digits) {
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), ms);
    if (ec != std::errc() || end != text.data() + text.size()) ms = -1;
  }
  if (ms < 0 || ms > kMaxSleepMs) {
    std::string quoted(text.substr(0, kQuoteMax));
    if (text.size() > kQuoteMax) quoted += "...";
    return {Outcome::kFailed, {},
            "sleep: the payload must be a decimal number of milliseconds from 0 to " +
                std::to_string(kMaxSleepMs) + ", not '" + quoted + "'"};
  }

  const util::Clock& clock = util::systemClock();
  const std::int64_t start = clock.monotonicMs();
  const std::int64_t wakeAt = start + ms;
  const std::int64_t timeoutAt = input.timeoutMs > 0 ? start + input.timeoutMs : INT64_MAX;
  for (;;) {
    std::int64_t now = clock.monotonicMs();
    if (now >= wakeAt) return {Outcome::kOk, {}, {}};
    if (input.cancel != nullptr && input.cancel->load())
      return {Outcome::kCancelled, {}, "cancelled"};
    if (now >= timeoutAt)
      return {Outcome::kTimedOut, {}, "timed out after " + std::to_string(input.timeoutMs) + " ms"};
    std::int64_t slice = std::min({kSleepSliceMs, wakeAt - now, timeoutAt - now});
    std::this_thread::sleep_for(std::chrono::milliseconds(slice));
  }
}

TaskOutput failWithPayload(const TaskInput& input) {
  return {Outcome::kFailed, {}, std::string(input.payload)};
}

}  // namespace

void registerBuiltins(HandlerRegistry& registry) {
  registry.addBuiltin("echo", echoPayload);
  registry.addBuiltin("sha256", sha256Hex);
  registry.addBuiltin("sleep", sleepMs);
  registry.addBuiltin("fail", failWithPayload);
}

}  // namespace mesh::exec
