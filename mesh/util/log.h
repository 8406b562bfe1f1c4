// Logging: one line per event on stderr, "2026-11-22T10:00:00.123Z nexus WARN  message".
// Thread rule: safe from any thread (each line is written with one write(2)).
#pragma once

#include <string>

namespace mesh::util {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Set once at start-up by main(); lines below the level are dropped.
void setLogLevel(LogLevel level);
void setLogName(const std::string& name);  // the process's name in each line ("nexus", ...)
bool parseLogLevel(const std::string& text, LogLevel* out);
bool logEnabled(LogLevel level);

void logf(LogLevel level, const char* format, ...) __attribute__((format(printf, 2, 3)));

}  // namespace mesh::util

#define MESH_DEBUG(...) \
  do { if (::mesh::util::logEnabled(::mesh::util::LogLevel::kDebug)) ::mesh::util::logf(::mesh::util::LogLevel::kDebug, __VA_ARGS__); } while (0)
#define MESH_INFO(...) ::mesh::util::logf(::mesh::util::LogLevel::kInfo, __VA_ARGS__)
#define MESH_WARN(...) ::mesh::util::logf(::mesh::util::LogLevel::kWarn, __VA_ARGS__)
#define MESH_ERROR(...) ::mesh::util::logf(::mesh::util::LogLevel::kError, __VA_ARGS__)
