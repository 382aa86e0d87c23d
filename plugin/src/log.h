#pragma once

#include <string>

namespace chainio::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

/// Threshold from CHAINIO_LOG (debug|info|warn|error|off); default warn.
Level threshold();
/// Writes "chainio: <message>" to stderr when `level` passes the threshold. Thread-safe.
void write(Level level, const std::string& message);
/// Like write(), but only the first time `key` is seen in this process.
void once(Level level, const std::string& key, const std::string& message);

}  // namespace chainio::log
