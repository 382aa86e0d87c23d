#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "chainio/status.h"

namespace chainio {

/// An open file shared by the ops of one request: a buffered descriptor and, when the file
/// system accepts it, an O_DIRECT one with its alignment.
struct FileRef {
    std::string name;        ///< path, or "fd N", for messages
    int fd = -1;             ///< buffered descriptor
    bool owns_fd = false;
    int direct_fd = -1;      ///< O_DIRECT descriptor (owned), -1 when refused or not asked for
    uint64_t size = 0;       ///< size at open time
    uint32_t dio_align = 4096;  ///< max(memory, offset) alignment O_DIRECT needs
    int direct_error = 0;    ///< errno of the refused O_DIRECT open, 0 when not refused

    FileRef() = default;
    FileRef(const FileRef&) = delete;
    FileRef& operator=(const FileRef&) = delete;
    ~FileRef();
};

/// Opens `path` (when fd < 0) or wraps `fd`; with `want_direct`, also an O_DIRECT descriptor
/// (EINVAL from the file system is not an error: direct_fd stays -1 and direct_error says why).
/// Errors: the open(2) errno (ENOENT, EACCES, ...), -EINVAL for something that is not a
/// regular file or block device.
Result<std::shared_ptr<FileRef>> open_file(const std::string& path, int fd, bool want_direct);

/// Fraction of [offset, offset+length) resident in the page cache, from cachestat(2) (Linux
/// 6.5+); falls back to sampling with preadv2(RWF_NOWAIT) when cachestat is missing.
double cached_fraction(const FileRef& file, uint64_t offset, uint64_t length);

}  // namespace chainio
