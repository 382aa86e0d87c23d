#include "file.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/stat.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>

namespace chainio {

namespace {

#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x00002000U
#endif
#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif

struct CachestatRange {
    uint64_t off;
    uint64_t len;
};
struct Cachestat {
    uint64_t nr_cache;
    uint64_t nr_dirty;
    uint64_t nr_writeback;
    uint64_t nr_evicted;
    uint64_t nr_recently_evicted;
};

// glibc 2.36 has no stx_dio_* fields: use the kernel's struct statx through the raw syscall.
uint32_t direct_alignment(int fd) {
    struct statx stx {};
    if (syscall(SYS_statx, fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align != 0) {
        return std::max<uint32_t>({stx.stx_dio_mem_align, stx.stx_dio_offset_align, 512});
    }
    return 4096;
}

double sampled_fraction(const FileRef& file, uint64_t offset, uint64_t length) {
    constexpr int kSamples = 8;
    alignas(4096) static thread_local std::array<char, 4096> scratch;
    int hits = 0;
    for (int i = 0; i < kSamples; ++i) {
        uint64_t pos = offset + length / kSamples * i;
        iovec iov{scratch.data(), std::min<uint64_t>(scratch.size(), offset + length - pos)};
        if (iov.iov_len == 0) break;
        if (preadv2(file.fd, &iov, 1, static_cast<off_t>(pos), RWF_NOWAIT) > 0) ++hits;
    }
    return static_cast<double>(hits) / kSamples;
}

}  // namespace

FileRef::~FileRef() {
    if (owns_fd && fd >= 0) close(fd);
    if (direct_fd >= 0) close(direct_fd);
}

Result<std::shared_ptr<FileRef>> open_file(const std::string& path, int fd, bool want_direct) {
    auto file = std::make_shared<FileRef>();
    if (fd >= 0) {
        file->name = path.empty() ? "fd " + std::to_string(fd) : path;
        file->fd = fd;
        // The O_DIRECT reopen below goes through /proc: it must not grant what the caller's
        // descriptor does not (a write-only fd is not readable; plain reads find that out).
        if (want_direct) {
            const int fl = fcntl(fd, F_GETFL);
            if (fl < 0) return Status::from_errno(file->name);
            if ((fl & O_ACCMODE) == O_WRONLY)
                return Status(EBADF, file->name + ": opened write-only");
        }
    } else {
        file->name = path;
        // O_NONBLOCK so that a FIFO is refused below instead of blocking the open until a
        // writer appears; cleared again for the files we read (io_uring honours it).
        file->fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (file->fd < 0) return Status::from_errno("open(" + path + ")");
        file->owns_fd = true;
    }
    struct stat st {};
    if (fstat(file->fd, &st) != 0) return Status::from_errno("fstat(" + file->name + ")");
    if (file->owns_fd && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
        const int fl = fcntl(file->fd, F_GETFL);
        if (fl < 0 || fcntl(file->fd, F_SETFL, fl & ~O_NONBLOCK) != 0)
            return Status::from_errno("fcntl(" + file->name + ")");
    }
    if (S_ISREG(st.st_mode)) {
        file->size = static_cast<uint64_t>(st.st_size);
    } else if (S_ISBLK(st.st_mode)) {
        if (ioctl(file->fd, BLKGETSIZE64, &file->size) != 0) {
            return Status::from_errno("ioctl(BLKGETSIZE64, " + file->name + ")");
        }
    } else {
        return Status(EINVAL, file->name + ": not a regular file or block device");
    }
    if (want_direct) {
        // Reopen through /proc: the very file already opened and checked above (a path may
        // name another one by now), and a caller's descriptor flags stay untouched.
        const std::string target = "/proc/self/fd/" + std::to_string(file->fd);
        file->direct_fd = open(target.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
        if (file->direct_fd < 0) {
            file->direct_error = errno;
        } else {
            file->dio_align = direct_alignment(file->direct_fd);
        }
    }
    return file;
}

double cached_fraction(const FileRef& file, uint64_t offset, uint64_t length) {
    if (length == 0) return 1.0;
    static std::atomic<bool> have_cachestat{true};
    if (have_cachestat) {
        CachestatRange range{offset, length};
        Cachestat cs{};
        if (syscall(__NR_cachestat, file.fd, &range, &cs, 0) == 0) {
            double pages = static_cast<double>((offset + length + 4095) / 4096 - offset / 4096);
            return std::min(1.0, static_cast<double>(cs.nr_cache) / pages);
        }
        if (errno == ENOSYS) have_cachestat = false;
    }
    return sampled_fraction(file, offset, length);
}

}  // namespace chainio
