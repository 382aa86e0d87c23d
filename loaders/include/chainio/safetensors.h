#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "chainio/status.h"

namespace chainio::safetensors {

/// Largest header accepted (the format's own limit).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

/// One dtype of the format: its name in the header and its width in bits (F4 = 4, F6_* = 6).
struct DtypeInfo {
    const char* name;
    uint32_t bits;
};

/// Every dtype of the format; nullptr when `name` is not one of them.
const DtypeInfo* find_dtype(const std::string& name);
const std::vector<DtypeInfo>& all_dtypes();

/// One tensor of a file. Offsets are relative to the data region, as in the header.
struct TensorInfo {
    std::string name;
    std::string dtype;
    uint32_t bits = 0;
    std::vector<uint64_t> shape;
    uint64_t begin = 0;
    uint64_t end = 0;
    uint64_t nbytes() const { return end - begin; }
};

/// A parsed, validated header.
struct Header {
    uint64_t header_bytes = 0;  ///< N, the JSON length
    uint64_t data_offset = 0;   ///< 8 + N: where the data region starts in the file
    uint64_t data_bytes = 0;    ///< file size - data_offset
    std::vector<TensorInfo> tensors;  ///< in header order
    std::optional<std::vector<std::pair<std::string, std::string>>> metadata;
};

/// Parses and validates the first bytes of a safetensors file. `prefix` holds at least the first
/// 8 bytes; if it holds fewer than 8 + N the error says how many are needed (-EAGAIN with
/// `needed` set) so a caller can read more and retry. `file_size` is the whole file's size.
/// Every rejection is -EINVAL with a message naming `name`, the tensor (if any) and the reason:
/// header length beyond the limit or the file, not UTF-8 JSON, not an object, duplicate keys,
/// unknown dtype, bad shape, offsets out of order / overlapping / outside the data region /
/// not covering it exactly, size mismatch, non-string metadata.
Result<Header> parse_header(const uint8_t* prefix, uint64_t prefix_len, uint64_t file_size,
                            const std::string& name, uint64_t* needed = nullptr);

/// Opens `path`, reads the header with pread and parses it. Errors: open/stat errno, or the
/// parse errors above.
Result<Header> read_header(const std::string& path);

/// Where a file's data region goes in memory so that O_DIRECT can read it in place: a buffer
/// aligned to `kBufferAlign` of `buffer_bytes`, with the data region starting `shift` bytes in
/// (shift == data_offset mod kBufferAlign, so file offsets and addresses share their
/// misalignment and only the first and last blocks bounce).
struct LoadPlan {
    static constexpr uint64_t kBufferAlign = 4096;
    uint64_t shift = 0;
    uint64_t buffer_bytes = 0;
    uint64_t file_offset = 0;  ///< = data_offset
    uint64_t length = 0;       ///< = data_bytes
};

LoadPlan plan_load(const Header& header);

}  // namespace chainio::safetensors
