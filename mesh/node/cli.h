// The `mesh` command line: runs one parsed command and returns its exit code
// (0 success, 1 some tasks failed or the nexus said no, 2 usage, 3 cannot reach or
// authenticate to the nexus). Errors go to stderr as one line that says what to do.
#pragma once

#include "mesh/config/config.h"

namespace mesh::node {

int runCli(const config::CliCommand& command);

}  // namespace mesh::node
