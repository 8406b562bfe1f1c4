// Process-wide memory allocator settings for the node binaries.
//
// Thread rule: call retainFreedMemory() once, first thing in main(), before any other thread
// exists.
#pragma once

#include <cstddef>

namespace mesh::util {

// What retainFreedMemory() sets (exposed for its test).
inline constexpr std::size_t kMmapThresholdBytes = 64u << 20;  // larger blocks get their own mmap
inline constexpr std::size_t kTrimThresholdBytes = 256u << 20;  // free heap kept before trimming

// Makes glibc's malloc keep freed memory for reuse instead of returning it to the kernel at
// once. Frames, payloads and Curve buffers of a few MiB are allocated and freed all the time; by
// default glibc serves each from a fresh mmap (or trims the heap after it), and the first touch
// of every 4 KiB page of fresh memory is a page fault, which costs ~11 us on the VMs we measured
// (64 MiB: 175 ms). With this a node faults its working set in once. The price: the resident size
// stays near its peak after a burst instead of shrinking (the peak itself does not change).
// Returns false when glibc refused a setting (the process then runs with the defaults).
bool retainFreedMemory();

}  // namespace mesh::util
