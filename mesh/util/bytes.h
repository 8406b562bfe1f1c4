// Byte and text helpers: hex, base64, JSON string escaping, UTF-8 checks, size and duration
// parsing, whole-file I/O. Thread rule: pure functions, safe from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mesh/util/result.h"
#include "mesh/util/unique_fd.h"

namespace mesh::util {

std::string toHex(std::string_view bytes);
Result<std::string> fromHex(std::string_view hex);
std::string toBase64(std::string_view bytes);

// True when `text` is well-formed UTF-8 (no overlongs, no surrogates).
bool isUtf8(std::string_view text);

// Appends `text` as a JSON string literal (with quotes) to `out`. Precondition: isUtf8(text).
void appendJsonString(std::string& out, std::string_view text);
std::string jsonString(std::string_view text);
// `value` as a JSON number with `decimals` digits after the point; JSON has no NaN or
// infinity, so those are written as null.
std::string jsonNumber(double value, int decimals);

// The whole text as a decimal number: digits only, no sign, no overflow. False otherwise.
bool parseU64(std::string_view text, std::uint64_t* out);

// "4096", "64K", "16M", "1G" (powers of 1024) -> bytes.
Result<std::uint64_t> parseSize(std::string_view text);
// "500ms", "30s", "5m", "2h", "30d", or a bare number of seconds -> milliseconds.
Result<std::int64_t> parseDurationMs(std::string_view text);

std::vector<std::string> splitList(std::string_view text, char sep);  // drops empty items

// Whole-file I/O. readFile refuses files larger than maxBytes.
Result<std::string> readFile(const std::string& path, std::uint64_t maxBytes = 1ull << 30);
// Writes to path.tmp, fsyncs, renames over path; the file gets `mode` (e.g. 0600) from birth.
Status writeFileAtomic(const std::string& path, std::string_view data, unsigned mode);

// Takes an exclusive flock on DIR/.lock for as long as the returned fd stays open, and writes
// this process's id into it. Fails, naming the holder's process id, when another process holds
// it: `what` ("nexus", "spore") says in the error who is using DIR.
Result<UniqueFd> lockDir(const std::string& dir, const std::string& what);

}  // namespace mesh::util
