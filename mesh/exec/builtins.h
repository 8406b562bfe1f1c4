// Built-in handlers compiled into the spore (DESIGN.md section 6), for tests and benchmarks:
//   echo    output = payload
//   sha256  output = lowercase hex SHA-256 of the payload (64 characters)
//   sleep   payload = decimal milliseconds (at most one day); sleeps in slices of at most 10 ms,
//           honouring cancel (kCancelled) and the task timeout (kTimedOut if it comes first)
//   fail    always kFailed, error = payload
// Thread rule: each runs in the calling worker thread and keeps no state; safe concurrently.
#pragma once

#include "mesh/exec/registry.h"

namespace mesh::exec {

// Adds the four built-ins to the registry; main() calls it once, from the main thread. Also
// initialises libsodium (idempotent). Calling it twice is a bug (duplicate names throw).
void registerBuiltins(HandlerRegistry& registry);

}  // namespace mesh::exec
