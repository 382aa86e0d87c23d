#include "chainio/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

namespace chainio::safetensors {

namespace {

// std::map objects: ordered_json finds a key by linear search, so n keys cost O(n^2). The header
// order is recorded by KeyScan instead.
using Json = nlohmann::json;

// First pass over the header, without building anything: finds syntax errors and duplicate keys
// (nlohmann keeps the last of them silently) and records the order of the top-level keys and of
// the keys of __metadata__. (nlohmann's parser callback is no substitute: it rescans the parent
// object each time a child object ends, O(n^2) in the number of tensors.)
class KeyScan final : public nlohmann::json_sax<Json> {
public:
    std::vector<std::string> top_keys;
    std::vector<std::string> metadata_keys;
    std::optional<std::string> duplicate;
    std::string error;

    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override {
        if (!enter()) return false;
        keys_.emplace_back();
        return true;
    }
    bool key(string_t& key) override {
        if (!keys_.back().insert(key).second && !duplicate) duplicate = key;
        if (depth_ == 1) {
            top_keys.push_back(key);
        } else if (depth_ == 2 && top_keys.back() == "__metadata__") {
            metadata_keys.push_back(key);  // a depth-2 key belongs to a top-level value
        }
        return true;
    }
    bool end_object() override {
        --depth_;
        keys_.pop_back();
        return true;
    }
    bool start_array(std::size_t) override { return enter(); }
    bool end_array() override {
        --depth_;
        return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
        error = e.what();
        return false;
    }

private:
    // Like serde_json's recursion limit: a legitimate header is 3 deep, and each level of
    // "[[[[..." costs ~40 bytes of memory per byte of header.
    static constexpr int kMaxDepth = 128;
    bool enter() {
        if (++depth_ <= kMaxDepth) return true;
        error = "nested deeper than " + std::to_string(kMaxDepth) + " levels";
        return false;
    }
    std::vector<std::set<std::string>> keys_;  // of each open object
    int depth_ = 0;
};

Status bad(const std::string& file, const std::string& why) {
    return Status(EINVAL, file + ": invalid safetensors header: " + why);
}

Status bad_tensor(const std::string& file, const std::string& tensor, const std::string& why) {
    return Status(EINVAL, file + ": tensor '" + tensor + "': " + why);
}

// Multiplies with an overflow check.
bool mul(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_mul_overflow(a, b, &out); }

Status parse_tensor(const std::string& file, const std::string& name, const Json& v,
                    uint64_t data_bytes, TensorInfo& out) {
    if (!v.is_object()) return bad_tensor(file, name, "entry is not an object");
    auto dtype = v.find("dtype");
    auto shape = v.find("shape");
    auto offsets = v.find("data_offsets");
    if (dtype == v.end() || shape == v.end() || offsets == v.end()) {
        return bad_tensor(file, name, "needs dtype, shape and data_offsets");
    }
    if (!dtype->is_string()) return bad_tensor(file, name, "dtype is not a string");
    out.name = name;
    out.dtype = dtype->get<std::string>();
    const DtypeInfo* info = find_dtype(out.dtype);
    if (info == nullptr) return bad_tensor(file, name, "unknown dtype '" + out.dtype + "'");
    out.bits = info->bits;
    if (!shape->is_array()) return bad_tensor(file, name, "shape is not an array");
    uint64_t numel = 1;
    for (const Json& d : *shape) {
        if (!d.is_number_unsigned()) {
            return bad_tensor(file, name, "shape has an entry that is not a non-negative integer");
        }
        uint64_t dim = d.get<uint64_t>();
        out.shape.push_back(dim);
        if (!mul(numel, dim, numel)) return bad_tensor(file, name, "shape overflows 64 bits");
    }
    if (!offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
        !(*offsets)[1].is_number_unsigned()) {
        return bad_tensor(file, name, "data_offsets must be two non-negative integers");
    }
    out.begin = (*offsets)[0].get<uint64_t>();
    out.end = (*offsets)[1].get<uint64_t>();
    if (out.begin > out.end) {
        return bad_tensor(file, name, "data_offsets [" + std::to_string(out.begin) + ", " +
                                          std::to_string(out.end) + ") end before they begin");
    }
    if (out.end > data_bytes) {
        return bad_tensor(file, name, "data_offsets end at " + std::to_string(out.end) +
                                          ", past the data region of " +
                                          std::to_string(data_bytes) + " bytes");
    }
    uint64_t bits = 0;
    if (!mul(numel, info->bits, bits)) return bad_tensor(file, name, "size overflows 64 bits");
    if (bits % 8 != 0) {
        return bad_tensor(file, name, std::to_string(numel) + " elements of " + out.dtype +
                                          " are not a whole number of bytes");
    }
    if (bits / 8 != out.nbytes()) {
        return bad_tensor(file, name, "shape x dtype size is " + std::to_string(bits / 8) +
                                          " bytes but data_offsets span " +
                                          std::to_string(out.nbytes()));
    }
    return Status::ok();
}

}  // namespace

const std::vector<DtypeInfo>& all_dtypes() {
    static const std::vector<DtypeInfo> dtypes = {
        {"BOOL", 8},       {"U8", 8},          {"I8", 8},          {"F8_E5M2", 8},
        {"F8_E4M3", 8},    {"F8_E5M2FNUZ", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E8M0", 8},
        {"I16", 16},       {"U16", 16},        {"F16", 16},        {"BF16", 16},
        {"I32", 32},       {"U32", 32},        {"F32", 32},        {"F64", 64},
        {"I64", 64},       {"U64", 64},        {"C64", 64},        {"F4", 4},
        {"F6_E2M3", 6},    {"F6_E3M2", 6},
    };
    return dtypes;
}

const DtypeInfo* find_dtype(const std::string& name) {
    for (const DtypeInfo& d : all_dtypes()) {
        if (name == d.name) return &d;
    }
    return nullptr;
}

Result<Header> parse_header(const uint8_t* prefix, uint64_t prefix_len, uint64_t file_size,
                            const std::string& name, uint64_t* needed) {
    if (file_size < 8 || prefix_len < 8) {
        return bad(name, "file has " + std::to_string(file_size) +
                             " bytes, fewer than the 8-byte header length");
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[i];  // little endian
    if (n > kMaxHeaderBytes) {
        return bad(name, "header length " + std::to_string(n) + " exceeds the limit of " +
                             std::to_string(kMaxHeaderBytes));
    }
    if (n > file_size - 8) {
        return bad(name, "header length " + std::to_string(n) + " runs past the end of the " +
                             std::to_string(file_size) + "-byte file");
    }
    if (prefix_len < 8 + n) {
        if (needed != nullptr) *needed = 8 + n;
        return Status(EAGAIN, name + ": need " + std::to_string(8 + n) + " header bytes");
    }
    Header h;
    h.header_bytes = n;
    h.data_offset = 8 + n;
    h.data_bytes = file_size - h.data_offset;

    const char* begin = reinterpret_cast<const char*>(prefix + 8);
    const char* end = begin + n;
    if (n == 0 || *begin != '{') return bad(name, "header does not start with '{'");
    // nlohmann reads a NUL as the end of its input and would ignore whatever follows it.
    if (const void* nul = std::memchr(begin, 0, n); nul != nullptr) {
        return bad(name, "not valid JSON: NUL byte at header offset " +
                             std::to_string(static_cast<const char*>(nul) - begin));
    }

    KeyScan scan;
    if (!Json::sax_parse(begin, end, &scan)) return bad(name, "not valid JSON: " + scan.error);
    if (scan.duplicate) return bad(name, "duplicate key '" + *scan.duplicate + "'");
    Json doc;
    try {
        doc = Json::parse(begin, end);
    } catch (const Json::exception& e) {
        return bad(name, std::string("not valid JSON: ") + e.what());
    }
    if (!doc.is_object()) return bad(name, "not a JSON object");

    for (const std::string& key : scan.top_keys) {
        const Json& value = doc.at(key);
        if (key == "__metadata__") {
            if (value.is_null()) continue;  // the reference treats null as "no metadata"
            if (!value.is_object()) return bad(name, "__metadata__ is not an object");
            std::vector<std::pair<std::string, std::string>> meta;
            for (const std::string& m : scan.metadata_keys) {
                const Json& v = value.at(m);
                if (!v.is_string()) {
                    return bad(name, "__metadata__ value of '" + m + "' is not a string");
                }
                meta.emplace_back(m, v.get<std::string>());
            }
            h.metadata = std::move(meta);
            continue;
        }
        TensorInfo t;
        CHAINIO_RETURN_IF_ERROR(parse_tensor(name, key, value, h.data_bytes, t));
        h.tensors.push_back(std::move(t));
    }

    // Like the reference implementation: tensors tile the data region exactly, no overlap, no
    // gap, nothing after the last one.
    std::vector<const TensorInfo*> by_offset;
    for (const auto& t : h.tensors) by_offset.push_back(&t);
    std::stable_sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
        return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    uint64_t covered = 0;
    for (const TensorInfo* t : by_offset) {
        if (t->begin < covered) {
            return bad_tensor(name, t->name, "data_offsets [" + std::to_string(t->begin) + ", " +
                                                 std::to_string(t->end) +
                                                 ") overlap the previous tensor, which ends at " +
                                                 std::to_string(covered));
        }
        if (t->begin > covered) {
            return bad_tensor(name, t->name, "gap in the data region: [" + std::to_string(covered) +
                                                 ", " + std::to_string(t->begin) +
                                                 ") belongs to no tensor");
        }
        covered = t->end;
    }
    if (covered != h.data_bytes) {
        return bad(name, "the data region has " + std::to_string(h.data_bytes) +
                             " bytes but the tensors cover " + std::to_string(covered) +
                             " (truncated or trailing bytes)");
    }
    return h;
}

Result<Header> read_header(const std::string& path) {
    // O_NONBLOCK: a FIFO is refused below instead of blocking the open (plain reads of a
    // regular file ignore the flag).
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return Status::from_errno("open(" + path + ")");
    struct stat st {};
    if (fstat(fd, &st) != 0) {
        Status s = Status::from_errno("fstat(" + path + ")");
        close(fd);
        return s;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        if (S_ISDIR(st.st_mode)) return Status(EISDIR, path + ": is a directory");
        return Status(EINVAL, path + ": not a regular file (a FIFO, socket or device)");
    }
    const auto size = static_cast<uint64_t>(st.st_size);
    std::vector<uint8_t> buf(std::min<uint64_t>(size, 64 << 10));
    auto fill = [&](uint64_t want) -> Status {
        buf.resize(want);
        uint64_t got = 0;
        while (got < want) {
            ssize_t r = pread(fd, buf.data() + got, want - got, static_cast<off_t>(got));
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) return Status::from_errno("read(" + path + ")");
            if (r == 0) return Status(EIO, path + ": file shrank while reading its header");
            got += static_cast<uint64_t>(r);
        }
        return Status::ok();
    };
    Status s = fill(buf.size());
    uint64_t needed = 0;
    Result<Header> h = s.is_ok() ? parse_header(buf.data(), buf.size(), size, path, &needed)
                                 : Result<Header>(s);
    if (!h && h.status().code() == -EAGAIN && needed > buf.size()) {
        s = fill(needed);
        h = s.is_ok() ? parse_header(buf.data(), buf.size(), size, path) : Result<Header>(s);
    }
    close(fd);
    return h;
}

LoadPlan plan_load(const Header& header) {
    LoadPlan p;
    p.shift = header.data_offset % LoadPlan::kBufferAlign;
    p.file_offset = header.data_offset;
    p.length = header.data_bytes;
    p.buffer_bytes = p.shift + header.data_bytes;
    return p;
}

}  // namespace chainio::safetensors
