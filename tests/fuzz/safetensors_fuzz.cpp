// libFuzzer target for chainio::safetensors::parse_header (loaders/src/safetensors.cpp).
//
// Each input is parsed two ways:
//   - raw:    the input is a whole file (8-byte LE length, JSON header, data region);
//   - framed: when the input starts with '{', it is `JSON | data | L` where the last byte L is the
//             length of the data region; the length field is computed. Mutations of the JSON then
//             keep the file consistent instead of breaking the length field.
// and each file three ways: the whole file at once, the read_header protocol (8 bytes, then the
// `needed` bytes it asks for), and prefixes shorter than the length field. Every prefix is a heap
// copy of exactly its length, so ASan reports any read past what the caller handed over. Accepted
// headers are checked against what the format promises; a broken promise aborts. One of those
// checks looks at the header text itself (JSON is UTF-8 with no raw control characters besides
// whitespace); CHAINIO_FUZZ_TEXT_CHECK=0 in the environment turns it off.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "chainio/safetensors.h"

namespace {

using chainio::Result;
using chainio::Status;
namespace st = chainio::safetensors;

constexpr const char* kName = "fuzz.safetensors";

#define FUZZ_CHECK(cond)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            std::abort();                                                                 \
        }                                                                                 \
    } while (0)

bool g_text_check = true;

/// Whether `s` is well-formed UTF-8 (RFC 3629: no overlongs, surrogates or code points past
/// U+10FFFF) without control characters other than JSON whitespace.
bool is_json_text(const uint8_t* s, size_t n) {
    size_t i = 0;
    while (i < n) {
        const uint8_t c = s[i];
        if (c < 0x80) {
            if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') return false;
            ++i;
            continue;
        }
        size_t len = 0;
        uint8_t lo = 0x80, hi = 0xbf;  // range of the second byte
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else {
            return false;
        }
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi) return false;
        for (size_t k = 2; k < len; ++k) {
            if (s[i + k] < 0x80 || s[i + k] > 0xbf) return false;
        }
        i += len;
    }
    return true;
}

/// A heap copy of the first `len` bytes of `data`, exactly `len` long.
std::unique_ptr<uint8_t[]> exact_copy(const uint8_t* data, size_t len) {
    std::unique_ptr<uint8_t[]> p(new uint8_t[len == 0 ? 1 : len]);
    if (len != 0) std::memcpy(p.get(), data, len);
    return p;
}

Result<st::Header> parse_prefix(const uint8_t* file, size_t prefix_len, uint64_t file_size,
                                uint64_t* needed) {
    auto copy = exact_copy(file, prefix_len);
    return st::parse_header(copy.get(), prefix_len, file_size, kName, needed);
}

/// What an error or an accepted header promises (given the whole header was handed over).
void check(const Result<st::Header>& r, uint64_t file_size) {
    if (!r.is_ok()) {
        const Status s = r.status();
        FUZZ_CHECK(s.code() == -EINVAL);
        FUZZ_CHECK(s.message().find(kName) != std::string::npos);
        return;
    }
    const st::Header& h = r.value();
    FUZZ_CHECK(h.header_bytes >= 2 && h.header_bytes <= st::kMaxHeaderBytes);
    FUZZ_CHECK(h.data_offset == 8 + h.header_bytes);
    FUZZ_CHECK(h.data_offset + h.data_bytes == file_size);

    std::set<std::string> names;
    std::vector<const st::TensorInfo*> by_offset;
    for (const st::TensorInfo& t : h.tensors) {
        FUZZ_CHECK(t.name != "__metadata__");
        FUZZ_CHECK(names.insert(t.name).second);
        const st::DtypeInfo* d = st::find_dtype(t.dtype);
        FUZZ_CHECK(d != nullptr && d->bits == t.bits);
        FUZZ_CHECK(t.begin <= t.end && t.end <= h.data_bytes);
        uint64_t numel = 1;
        for (uint64_t dim : t.shape) FUZZ_CHECK(!__builtin_mul_overflow(numel, dim, &numel));
        uint64_t bits = 0;
        FUZZ_CHECK(!__builtin_mul_overflow(numel, uint64_t{t.bits}, &bits));
        FUZZ_CHECK(bits % 8 == 0 && bits / 8 == t.nbytes());
        by_offset.push_back(&t);
    }
    // The tensors tile the data region: no gap, no overlap, nothing after the last.
    std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
        return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    uint64_t covered = 0;
    for (const st::TensorInfo* t : by_offset) {
        FUZZ_CHECK(t->begin == covered);
        covered = t->end;
    }
    FUZZ_CHECK(covered == h.data_bytes);
    if (h.metadata) {
        std::set<std::string> keys;
        for (const auto& kv : *h.metadata) FUZZ_CHECK(keys.insert(kv.first).second);
    }

    const st::LoadPlan p = st::plan_load(h);
    FUZZ_CHECK(p.shift == h.data_offset % st::LoadPlan::kBufferAlign);
    FUZZ_CHECK(p.buffer_bytes == p.shift + h.data_bytes);
    FUZZ_CHECK(p.file_offset == h.data_offset && p.length == h.data_bytes);
}

/// The same outcome: the same error, or the same header.
void check_same(const Result<st::Header>& a, const Result<st::Header>& b) {
    FUZZ_CHECK(a.is_ok() == b.is_ok());
    if (!a.is_ok()) {
        FUZZ_CHECK(a.status().code() == b.status().code());
        FUZZ_CHECK(a.status().message() == b.status().message());
        return;
    }
    const st::Header& x = a.value();
    const st::Header& y = b.value();
    FUZZ_CHECK(x.header_bytes == y.header_bytes && x.data_offset == y.data_offset &&
               x.data_bytes == y.data_bytes);
    FUZZ_CHECK(x.tensors.size() == y.tensors.size());
    for (size_t i = 0; i < x.tensors.size(); ++i) {
        const st::TensorInfo& s = x.tensors[i];
        const st::TensorInfo& t = y.tensors[i];
        FUZZ_CHECK(s.name == t.name && s.dtype == t.dtype && s.bits == t.bits &&
                   s.shape == t.shape && s.begin == t.begin && s.end == t.end);
    }
    FUZZ_CHECK(x.metadata == y.metadata);
}

void fuzz_file(const uint8_t* file, size_t size) {
    // The whole file at once (libFuzzer's own buffer is exactly `size` long).
    uint64_t needed = 0;
    const Result<st::Header> whole = st::parse_header(file, size, size, kName, &needed);
    check(whole, size);
    if (whole.is_ok() && g_text_check) {
        FUZZ_CHECK(is_json_text(file + 8, whole.value().header_bytes));
    }

    // Fewer bytes than the length field: an error, and nothing read past them.
    FUZZ_CHECK(parse_prefix(file, size % 8, size, nullptr).status().code() == -EINVAL);
    if (size < 8) return;

    // The read_header protocol: the length field first, then what it asks for.
    needed = 0;
    const Result<st::Header> first = parse_prefix(file, 8, size, &needed);
    if (!first.is_ok() && first.status().code() == -EAGAIN) {
        FUZZ_CHECK(needed > 8 && needed <= size && needed - 8 <= st::kMaxHeaderBytes);
        FUZZ_CHECK(first.status().message().find(kName) != std::string::npos);
        // One byte short: asked again for the same.
        uint64_t again = 0;
        const Result<st::Header> short_by_one = parse_prefix(file, needed - 1, size, &again);
        FUZZ_CHECK(short_by_one.status().code() == -EAGAIN && again == needed);
        // Exactly the header: the same answer as with the whole file.
        uint64_t unused = 0;
        const Result<st::Header> exact = parse_prefix(file, needed, size, &unused);
        FUZZ_CHECK(exact.status().code() != -EAGAIN);
        check_same(exact, whole);
    } else {
        check_same(first, whole);
    }

    // The header in hand, the file claimed longer: only the data-region checks may change.
    const uint64_t longer = size + 1 + file[size - 1];
    needed = 0;
    const Result<st::Header> r = st::parse_header(file, size, longer, kName, &needed);
    if (!r.is_ok() && r.status().code() == -EAGAIN) {
        FUZZ_CHECK(needed > size && needed <= longer);  // the length field reaches past `size`
    } else {
        check(r, longer);
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* v = std::getenv("CHAINIO_FUZZ_TEXT_CHECK");
    g_text_check = v == nullptr || std::strcmp(v, "0") != 0;
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz_file(data, size);

    if (size >= 1 && data[0] == '{') {
        const size_t body = size - 1;
        const size_t data_bytes = std::min<size_t>(data[size - 1], body);
        const size_t json_bytes = body - data_bytes;
        std::vector<uint8_t> file(8 + body);  // exactly sized
        for (int i = 0; i < 8; ++i) file[i] = static_cast<uint8_t>(uint64_t{json_bytes} >> (8 * i));
        std::memcpy(file.data() + 8, data, body);
        fuzz_file(file.data(), file.size());
    }
    return 0;
}
