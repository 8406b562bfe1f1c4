#include "mesh/util/memory.h"

#include <malloc.h>

namespace mesh::util {

bool retainFreedMemory() {
  // Setting either threshold also turns off glibc's dynamic adjustment of both.
  bool ok = ::mallopt(M_MMAP_THRESHOLD, static_cast<int>(kMmapThresholdBytes)) == 1;
  ok = ::mallopt(M_TRIM_THRESHOLD, static_cast<int>(kTrimThresholdBytes)) == 1 && ok;
  return ok;
}

}  // namespace mesh::util
