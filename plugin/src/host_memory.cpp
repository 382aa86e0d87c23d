#include "chainio/host_memory.h"

#include <linux/mman.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace chainio {

namespace {
constexpr size_t kHugePage = 2u << 20;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct Counters {
    std::atomic<uint64_t> bytes[3]{}, regions[3]{};
    std::atomic<uint64_t> hugetlb_refused{0};
} g_counters;

// --- hugetlb cgroup limits -------------------------------------------------------------------
// The pool is machine-wide, but a cgroup (a Kubernetes pod, for one) may be limited to fewer of
// its pages, often none. A fault-time limit ("hugetlb.2MB.max", v1 "limit_in_bytes") lets mmap
// succeed and then kills the process with SIGBUS when a page over the limit is touched. So: no
// pool when the limits leave less room than the region, and when any limit is set, fault the
// region in at once with MADV_POPULATE_WRITE, which reports a refused page as an error instead.

constexpr size_t kUnlimited = std::numeric_limits<size_t>::max();

size_t read_number(const std::string& path) {  // kUnlimited for "max", missing or unreadable
    std::ifstream in(path);
    std::string v;
    if (!(in >> v) || v == "max") return kUnlimited;
    try {
        unsigned long long n = std::stoull(v);
        return n >= (1ull << 62) ? kUnlimited : static_cast<size_t>(n);  // v1 "unlimited"
    } catch (...) {
        return kUnlimited;
    }
}

struct HugetlbHierarchy {
    std::string dir;  // this process's cgroup directory in it
    bool v2;
};

// Where this process's hugetlb cgroup lives, from /proc/self/cgroup and /proc/self/mountinfo.
std::vector<HugetlbHierarchy> hugetlb_cgroups() {
    std::vector<std::pair<std::string, std::string>> mine;  // (v1 controllers | "" for v2, path)
    std::ifstream cg("/proc/self/cgroup");
    for (std::string line; std::getline(cg, line);) {
        const size_t a = line.find(':'), b = line.find(':', a + 1);
        if (a == std::string::npos || b == std::string::npos) continue;
        mine.emplace_back(line.substr(a + 1, b - a - 1), line.substr(b + 1));
    }
    std::vector<HugetlbHierarchy> out;
    std::ifstream mi("/proc/self/mountinfo");
    for (std::string line; std::getline(mi, line);) {
        std::istringstream f(line);
        std::string id, parent, dev, root, point, field;
        f >> id >> parent >> dev >> root >> point;
        while (f >> field && field != "-") {
        }
        std::string fstype, source, opts;
        f >> fstype >> source >> opts;
        const bool v2 = fstype == "cgroup2";
        if (!v2 && !(fstype == "cgroup" && ("," + opts + ",").find(",hugetlb,") != std::string::npos)) {
            continue;
        }
        for (const auto& [controllers, path] : mine) {
            const bool match = v2 ? controllers.empty()
                                  : ("," + controllers + ",").find(",hugetlb,") != std::string::npos;
            if (!match) continue;
            std::string rel = path;
            if (root != "/" && rel.rfind(root, 0) == 0) rel = rel.substr(root.size());
            out.push_back({point + (rel == "/" ? "" : rel), v2});
        }
    }
    return out;
}

// The least room (limit - usage, bytes of 2 MiB pages) that this cgroup and its ancestors leave,
// fault-time and reservation limits alike; kUnlimited when nothing is limited.
size_t hugetlb_cgroup_room() {
    size_t room = kUnlimited;
    for (const auto& h : hugetlb_cgroups()) {
        for (std::string dir = h.dir;;) {
            const std::string p = dir + "/hugetlb.2MB.";
            for (const char* kind : {"", "rsvd."}) {
                const size_t limit = read_number(p + kind + (h.v2 ? "max" : "limit_in_bytes"));
                if (limit == kUnlimited) continue;
                const size_t used = read_number(p + kind + (h.v2 ? "current" : "usage_in_bytes"));
                const size_t left = used == kUnlimited || used > limit ? 0 : limit - used;
                room = std::min(room, left);
            }
            const size_t slash = dir.find_last_of('/');
            if (slash == std::string::npos || slash == 0) break;
            std::string up = dir.substr(0, slash);
            if (std::ifstream(up + "/hugetlb.2MB." + (h.v2 ? "max" : "limit_in_bytes")).fail()) break;
            dir = up;  // stop at the hierarchy's top, which has no limit file (v2) or is its root
        }
    }
    return room;
}

void count(PageBacking b, size_t bytes) {
    g_counters.bytes[static_cast<int>(b)] += bytes;
    g_counters.regions[static_cast<int>(b)] += 1;
}
}  // namespace

const char* to_string(PageBacking backing) {
    switch (backing) {
        case PageBacking::HugeTlb: return "hugetlb";
        case PageBacking::Transparent: return "thp";
        case PageBacking::Small: return "4k";
    }
    return "?";
}

Result<std::unique_ptr<HostRegion>> HostRegion::allocate(size_t bytes, const HostRegionOptions& options) {
    if (bytes == 0) return Status(EINVAL, "HostRegion: size is 0");
    if (bytes > (size_t(1) << 48))  // also keeps the page rounding below from wrapping
        return Status(ENOMEM, "HostRegion: " + std::to_string(bytes) +
                                  " bytes is more memory than a machine has");
    if (options.hugetlb && bytes >= options.hugetlb_min_bytes) {
        const size_t len = round_up(bytes, kHugePage);
        // mmap first: without a pool (most machines) it fails at once, and the cgroup files are
        // only read when the pool did have the pages.
        void* mem = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);
        if (mem != MAP_FAILED) {
            const size_t room = hugetlb_cgroup_room();
            // Under a limit, fault it all in now: a page the limit refuses (another process may
            // have taken the room meanwhile) is then an error here, not a SIGBUS later.
            if (room < len || (room != kUnlimited && madvise(mem, len, MADV_POPULATE_WRITE) != 0)) {
                munmap(mem, len);
                mem = MAP_FAILED;
            }
        }
        if (mem != MAP_FAILED) {
            count(PageBacking::HugeTlb, bytes);
            return std::unique_ptr<HostRegion>(
                new HostRegion(static_cast<std::byte*>(mem), bytes, len, PageBacking::HugeTlb));
        }
        g_counters.hugetlb_refused += 1;  // pool absent or short: the plain path below
    }
    const size_t len = round_up(bytes, 4096);
    if (options.transparent && len >= kHugePage) {
        // Over-map by one huge page so the region can start on a 2 MiB boundary, then give back
        // the unused head and tail: THP only backs whole, aligned 2 MiB ranges.
        void* raw = mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) {
            return Status::from_errno("HostRegion: mmap of " + std::to_string(bytes) + " bytes");
        }
        auto start = reinterpret_cast<uintptr_t>(raw);
        const uintptr_t aligned = round_up(start, kHugePage);
        if (aligned > start) munmap(raw, aligned - start);
        const uintptr_t end = start + len + kHugePage;
        if (end > aligned + len) munmap(reinterpret_cast<void*>(aligned + len), end - (aligned + len));
        auto* mem = reinterpret_cast<std::byte*>(aligned);
        madvise(mem, len, MADV_HUGEPAGE);  // advisory: THP may be off ("never"), then 4 KiB pages
        count(PageBacking::Transparent, bytes);
        return std::unique_ptr<HostRegion>(new HostRegion(mem, bytes, len, PageBacking::Transparent));
    }
    void* mem = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return Status::from_errno("HostRegion: mmap of " + std::to_string(bytes) + " bytes");
    count(PageBacking::Small, bytes);
    return std::unique_ptr<HostRegion>(new HostRegion(static_cast<std::byte*>(mem), bytes, len, PageBacking::Small));
}

HostRegion::~HostRegion() { munmap(data_, mapped_); }

HostMemoryStats host_memory_stats() {
    HostMemoryStats s;
    auto b = [](PageBacking p) { return g_counters.bytes[static_cast<int>(p)].load(); };
    auto r = [](PageBacking p) { return g_counters.regions[static_cast<int>(p)].load(); };
    s.hugetlb_bytes = b(PageBacking::HugeTlb);
    s.hugetlb_regions = r(PageBacking::HugeTlb);
    s.transparent_bytes = b(PageBacking::Transparent);
    s.transparent_regions = r(PageBacking::Transparent);
    s.small_bytes = b(PageBacking::Small);
    s.small_regions = r(PageBacking::Small);
    s.hugetlb_refused = g_counters.hugetlb_refused.load();
    return s;
}

}  // namespace chainio
