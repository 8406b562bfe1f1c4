// The discovery module's sockets are plain fds (a spore polls them next to its ZeroMQ sockets):
// they use the shared RAII type.
#pragma once

#include "mesh/util/unique_fd.h"

namespace mesh::discovery {
using util::UniqueFd;
}  // namespace mesh::discovery
