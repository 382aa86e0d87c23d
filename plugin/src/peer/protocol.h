#pragma once

// The seeder protocol's messages (see chainio/peer.h): JSON requests and replies carried as
// session objects, and the chunking rule both ends apply to a read's extents.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "chainio/status.h"

namespace chainio::peer::proto {

/// Largest request or reply object accepted.
constexpr size_t kMaxMessage = 1u << 20;
/// Most extents one read request may carry.
constexpr size_t kMaxExtents = 4096;
/// Longest shared token (it travels in the hello, whose size the transport bounds).
constexpr size_t kMaxToken = 4096;

using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;  // (offset, length)

/// The extents cut into the pieces of at most `chunk` bytes that travel one send() each, in
/// order: extent by extent, front to back.
Ranges chunks(const Ranges& extents, uint64_t chunk);

nlohmann::json error_reply(const Status& st);
/// The Status a reply stands for: ok, or the seeder's errno and message prefixed by `who`.
Status reply_status(const nlohmann::json& reply, const std::string& who);

/// Parses an object that must be a JSON object (-EPROTO otherwise).
Result<nlohmann::json> parse(const std::vector<uint8_t>& bytes, const std::string& who);

}  // namespace chainio::peer::proto
