#pragma once

// Weight distribution between machines: a Seeder serves the files under one directory to any
// number of fetchers; a Fetcher reads byte ranges of those files into its own memory, striped
// across several seeders, moving the ranges of a seeder that fails or stalls to the others and,
// last, to a local copy of the file.
//
// Protocol (on top of net::Session, whose objects are digest-checked end to end): the fetcher
// sends one JSON request object; the seeder answers with one JSON reply object and, for reads,
// with the requested bytes in chunks of at most `chunk_bytes`, one send() per chunk. The seeder
// reads chunk k+1 from storage (Engine, O_DIRECT) while chunk k is on the wire; on AF_XDP with
// multi-buffer frames the reads land in the session's UMEM (Session::send_arena()) and the
// frames' payload descriptors point at them, so no user-space copy happens on the seeder.
//
//   {"op":"stat","path":P}                      -> {"ok":true,"size":N,"mtime_ns":T}
//   {"op":"list","path":D}                      -> {"ok":true,"files":[[name,size],...]}
//   {"op":"read","path":P,"size":N,"mtime_ns":T,
//    "extents":[[offset,length],...]}           -> {"ok":true,"chunk":C}, then the bytes
//   any failure                                 -> {"ok":false,"errno":E,"error":"..."}
//
// Paths are relative to the seeder's root and resolved with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_MAGICLINKS): `..` out of the root, absolute paths and symlinks leaving the root are
// refused (EXDEV/EACCES), and so is anything that is not a regular file.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chainio/net.h"
#include "chainio/status.h"

namespace chainio {
class Engine;
}

namespace chainio::peer {

struct SeederOptions {
    std::string root;             ///< directory whose regular files are served
    std::string ip = "0.0.0.0";
    uint16_t port = 0;            ///< 0: any free port (see Seeder::port())
    /// Transport, interface, the shared token (net.auth; required non-empty) and the peer
    /// timeout. A fetcher silent this long while a transfer runs is dropped.
    net::NetOptions net;
    /// Fetchers served at once; more wait in the listen backlog until one leaves. With the
    /// chunk size this bounds the seeder's memory: 2 chunks per session (on AF_XDP with
    /// multi-buffer frames they are the session's send arena, UMEM), plus each AF_XDP
    /// session's UMEM frames (net.umem_bytes).
    unsigned max_sessions = 8;
    size_t chunk_bytes = 8u << 20;  ///< read→send unit (multiple of 4096)
    /// A session whose fetcher sends no request for this long is closed (the fetcher
    /// reconnects when it needs the seeder again).
    uint32_t idle_ms = 60'000;
};

struct SeederStats {
    uint64_t sessions = 0;         ///< accepted and authenticated
    uint64_t active = 0;           ///< running now
    uint64_t refused = 0;          ///< hellos refused (wrong token, bad protocol)
    uint64_t requests = 0;
    uint64_t requests_failed = 0;  ///< answered with an error (bad path, stale file, ...)
    uint64_t bytes_served = 0;     ///< file bytes sent and verified by the fetcher
    uint64_t bytes_zero_copy = 0;  ///< ... of which read into UMEM and sent from there (AF_XDP
                                   ///< with multi-buffer frames) with no user-space copy
    uint64_t xdp_sessions = 0;     ///< sessions that ran on AF_XDP (the others on TCP)
};

/// Serves files from `root` on a background accept thread plus one thread per session.
class Seeder {
public:
    /// Checks the options (root must be a directory, a token is required), creates the
    /// storage engine and starts listening. Errors: -EINVAL, the listen errno, open(root).
    static Result<std::unique_ptr<Seeder>> start(const SeederOptions& options);
    ~Seeder();  ///< stop()
    Seeder(const Seeder&) = delete;
    Seeder& operator=(const Seeder&) = delete;

    uint16_t port() const;
    SeederStats stats() const;
    /// Stops accepting, ends every session (fetchers see ECONNRESET) and joins the threads.
    void stop();

    struct State;

private:
    explicit Seeder(std::shared_ptr<State> state) : state_(std::move(state)) {}
    std::shared_ptr<State> state_;
};

/// One range of a remote file and where it goes.
struct FetchExtent {
    uint64_t offset = 0;
    uint64_t length = 0;
    void* dst = nullptr;
};

struct FetchOptions {
    /// Transport, timeout (a seeder silent this long counts as failed) and the token (net.auth).
    net::NetOptions net;
    /// Ranges are cut into pieces at offsets that are multiples of the piece size: at most
    /// this, at least 1 MiB, and about a quarter of a read's bytes per live seeder. Idle seeders
    /// take the next piece, so faster seeders carry more of the file.
    size_t piece_bytes = 64u << 20;
    Engine* engine = nullptr;  ///< for the local fallback; nullptr: a private one when needed
};

/// Who delivered what in one read().
struct FetchReport {
    struct Source {
        std::string name;          ///< "ip:port", or "local:<path>"
        std::string transport;     ///< "xdp", "tcp", "local" or "" (never connected)
        uint64_t bytes = 0;
        std::string error;         ///< why this source was dropped ("" while healthy)
    };
    std::vector<Source> sources;
    uint64_t bytes = 0;
    double seconds = 0;
};

/// Sessions to a set of seeders, kept open across calls. Not thread-safe (one read() at a
/// time); the calls themselves use one thread per live seeder.
class Fetcher {
public:
    /// `peers` are "host:port" (an IPv4 address or a name resolving to one). Connecting is lazy and per seeder: an unreachable seeder only
    /// counts as failed. Errors: -EINVAL for an empty or malformed peer list.
    static Result<std::unique_ptr<Fetcher>> create(const std::vector<std::string>& peers,
                                                   const FetchOptions& options);
    ~Fetcher();
    Fetcher(const Fetcher&) = delete;
    Fetcher& operator=(const Fetcher&) = delete;

    struct FileInfo {
        uint64_t size = 0;
        int64_t mtime_ns = 0;  ///< the version: 0 = any file of this size
    };
    /// Size and mtime of `path` on the first seeder that answers. A file every seeder lacks
    /// gives the seeder's error (-ENOENT, -EXDEV for a path leaving the root, ...); when no
    /// seeder can be reached, -EHOSTUNREACH listing each seeder's failure.
    Result<FileInfo> stat(const std::string& path);
    /// Regular files directly in directory `path` (name, size), sorted by name: what a read of
    /// `path/name` would open, so symlinks that stay inside the root count.
    Result<std::vector<std::pair<std::string, uint64_t>>> list(const std::string& path);
    /// Reads `extents` of `path` into their destinations, striped across the live seeders,
    /// failing over as described above; what no seeder delivered is read from `local_path`
    /// ("" = fail: with the seeders' errno when they all refused alike, else -EHOSTUNREACH; the
    /// message names each seeder's answer). A seeder whose file is not `info.size` bytes, or
    /// (when `info.mtime_ns` is set) was not modified at `info.mtime_ns`, refuses (-ESTALE) and
    /// sits this call out: the bytes of one read come from one version of the file. Fills
    /// `report` when given.
    Status read(const std::string& path, const FileInfo& info,
                const std::vector<FetchExtent>& extents, const std::string& local_path = "",
                FetchReport* report = nullptr);
    /// From another thread: ends the read() in progress, which returns -ECANCELED once no
    /// thread of it touches a destination any more (a seeder connecting at that moment may take
    /// up to the timeout). Its sessions are closed; the next read() connects again.
    void cancel();

    struct State;

private:
    explicit Fetcher(std::unique_ptr<State> state);
    std::unique_ptr<State> state_;
};

}  // namespace chainio::peer
