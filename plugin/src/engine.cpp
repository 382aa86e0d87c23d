#include "chainio/engine.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "chainio/buffer_pool.h"
#include "log.h"
#include "request.h"
#include "worker.h"

namespace chainio {

const char* to_string(Backend backend) {
    switch (backend) {
        case Backend::kAuto: return "auto";
        case Backend::kIoUring: return "io_uring";
        case Backend::kPread: return "pread";
    }
    return "?";
}

const char* to_string(IoMode mode) {
    switch (mode) {
        case IoMode::kAuto: return "auto";
        case IoMode::kDirect: return "direct";
        case IoMode::kBuffered: return "buffered";
    }
    return "?";
}

// ---- ReadHandle ---------------------------------------------------------------------------

Status ReadHandle::wait() const {
    if (!req_) return Status(EINVAL, "wait() on an empty ReadHandle");
    std::unique_lock lock(req_->mu);
    req_->cv.wait(lock, [this] { return req_->finished; });
    return req_->status;
}

Status ReadHandle::wait_for(std::chrono::milliseconds timeout) const {
    if (!req_) return Status(EINVAL, "wait_for() on an empty ReadHandle");
    std::unique_lock lock(req_->mu);
    if (!req_->cv.wait_for(lock, timeout, [this] { return req_->finished; })) {
        return Status(ETIMEDOUT, "read still running after " + std::to_string(timeout.count()) + " ms");
    }
    return req_->status;
}

bool ReadHandle::done() const {
    if (!req_) return true;
    std::lock_guard lock(req_->mu);
    return req_->finished;
}

uint64_t ReadHandle::bytes_done() const {
    return req_ ? req_->bytes_done.load(std::memory_order_relaxed) : 0;
}

uint64_t ReadHandle::bytes_total() const { return req_ ? req_->bytes_total : 0; }

Status ReadHandle::status() const {
    if (!req_) return Status::ok();
    std::lock_guard lock(req_->mu);
    return req_->status;
}

// ---- Engine -------------------------------------------------------------------------------

namespace {

// Bumped in every child that fork() makes: an engine compares it with the value at its
// creation instead of calling getpid() on every read.
std::atomic<unsigned> g_forks{0};
std::once_flag g_atfork_once;

constexpr double kBufferedWhenCached = 0.5;  // auto mode: page cache copy beats the device

Backend backend_from_env(Backend requested) {
    if (requested != Backend::kAuto) return requested;
    const char* env = std::getenv("CHAINIO_BACKEND");
    if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return Backend::kAuto;
    if (std::strcmp(env, "pread") == 0) return Backend::kPread;
    if (std::strcmp(env, "io_uring") == 0 || std::strcmp(env, "uring") == 0) return Backend::kIoUring;
    log::once(log::Level::kWarn, "bad-backend-env",
              std::string("CHAINIO_BACKEND=") + env + " is not auto|io_uring|pread; using auto");
    return Backend::kAuto;
}

bool env_disables(const char* name) {
    const char* env = std::getenv(name);
    return env != nullptr && (std::strcmp(env, "0") == 0 || std::strcmp(env, "false") == 0);
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::create(const EngineOptions& options) {
    EngineOptions opt = options;
    if (opt.workers == 0) {
        unsigned cores = std::max(1u, std::thread::hardware_concurrency());
        opt.workers = std::min(cores, 4u);
    }
    if (opt.workers > 64) return Status(EINVAL, "workers must be at most 64");
    if (opt.io_bytes < 4096 || opt.io_bytes > (64u << 20) || opt.io_bytes % 4096 != 0) {
        return Status(EINVAL, "io_bytes must be a multiple of 4096 between 4 KiB and 64 MiB, got " +
                                  std::to_string(opt.io_bytes));
    }
    if (opt.queue_depth == 0 || opt.queue_depth > 4096) {
        return Status(EINVAL, "queue_depth must be in 1..4096, got " + std::to_string(opt.queue_depth));
    }
    // Every worker needs at least one chunk; beyond that the pool size is the caller's bound.
    opt.pool_bytes = std::max(opt.pool_bytes, opt.io_bytes * opt.workers);
    if (env_disables("CHAINIO_REGISTER_BUFFERS")) opt.register_buffers = false;

    if (opt.pool_bytes > (size_t(1) << 48))  // also keeps the rounding below from wrapping
        return Status(ENOMEM, "pool_bytes " + std::to_string(opt.pool_bytes) +
                                  " is more memory than a machine has");
    std::unique_ptr<Engine> engine(new Engine());
    std::call_once(g_atfork_once, [] {
        pthread_atfork(nullptr, nullptr, [] { g_forks.fetch_add(1, std::memory_order_relaxed); });
    });
    engine->owner_pid_ = getpid();
    engine->fork_generation_ = g_forks.load();
    EngineInfo& info = engine->info_;
    info.workers = opt.workers;
    info.queue_depth = opt.queue_depth;
    info.io_bytes = opt.io_bytes;

    auto pool = BufferPool::create({opt.pool_bytes, opt.io_bytes, true});
    if (!pool) return pool.status();
    engine->pool_ = std::move(pool).value();
    info.pool_bytes = engine->pool_->size();
    info.hugetlb_pool = engine->pool_->hugetlb();

    Backend backend = backend_from_env(opt.backend);
    if (backend != Backend::kPread) {
        int r = probe_io_uring();
        if (r < 0) {
            if (backend == Backend::kIoUring) return Status(r, "io_uring_setup");
            std::string note = std::string("io_uring unavailable (") + std::strerror(-r) +
                               "): using the pread thread pool";
            info.notes.push_back(note);
            log::once(log::Level::kWarn, "fallback-pread", note);
            backend = Backend::kPread;
        } else {
            backend = Backend::kIoUring;
        }
    } else {
        info.notes.push_back("pread thread pool requested");
    }
    info.backend = backend;

    // Hot reads: the last worker streams aligned ops with O_DIRECT while the others copy from
    // the page cache (copies are CPU-bound, the device is idle); needs a second worker.
    info.hybrid_hot_reads = opt.hybrid_hot_reads && opt.workers >= 2 &&
                            !env_disables("CHAINIO_HYBRID_HOT_READS");
    const size_t per_worker = engine->pool_->chunk_count() / opt.workers;
    bool all_registered = backend == Backend::kIoUring && opt.register_buffers;
    bool all_single_issuer = backend == Backend::kIoUring;
    int register_error = 0;
    for (unsigned i = 0; i < opt.workers; ++i) {
        WorkerConfig wc{i, engine->pool_.get(), i * per_worker, per_worker, opt.queue_depth,
                        opt.register_buffers, info.hybrid_hot_reads && i + 1 == opt.workers};
        if (backend == Backend::kPread) {
            engine->workers_.push_back(make_pread_worker(wc));
            continue;
        }
        WorkerInitInfo wi;
        auto worker = make_uring_worker(wc, wi);
        if (!worker) return worker.status();
        engine->workers_.push_back(std::move(worker).value());
        all_registered = all_registered && wi.registered_buffers;
        all_single_issuer = all_single_issuer && wi.single_issuer;
        if (wi.register_error != 0) register_error = wi.register_error;
    }
    info.registered_buffers = all_registered;
    info.single_issuer = all_single_issuer;
    if (register_error != 0) {
        std::string note = std::string("registering the buffer pool failed (") +
                           std::strerror(register_error) +
                           (register_error == ENOMEM ? ", RLIMIT_MEMLOCK too low?" : "") +
                           "): using unregistered buffers";
        info.notes.push_back(note);
        log::once(log::Level::kWarn, "fallback-unregistered", note);
    } else if (backend == Backend::kIoUring && !opt.register_buffers) {
        info.notes.push_back("buffer registration disabled by option");
    }
    log::once(log::Level::kInfo, "engine-backend",
              std::string("engine: ") + to_string(backend) + ", " + std::to_string(opt.workers) +
                  " workers, queue depth " + std::to_string(opt.queue_depth) + ", pool " +
                  std::to_string(info.pool_bytes >> 20) + " MiB" +
                  (info.hugetlb_pool ? " (hugetlb)" : "") +
                  (info.registered_buffers ? ", registered buffers" : ""));
    return engine;
}

Engine::~Engine() {
    if (owner_pid_ != 0 && getpid() != owner_pid_) {
        // A child after fork(): the worker threads were not copied, and joining them would
        // wait forever. Their objects are left to the process's end.
        for (auto& w : workers_) (void)w.release();
        return;
    }
    workers_.clear();
}

Result<ReadHandle> Engine::read(const std::vector<ReadExtent>& extents, const ReadOptions& options) {
    if (g_forks.load(std::memory_order_relaxed) != fork_generation_ && getpid() != owner_pid_)
        return Status(ECHILD, "this engine's workers belong to process " +
                                  std::to_string(owner_pid_) +
                                  " (used after fork()): create a new engine in this process");
    auto req = std::make_shared<detail::Request>();
    const bool want_direct = options.mode != IoMode::kBuffered;

    // Open each distinct file once per request.
    std::map<std::pair<std::string, int>, std::shared_ptr<FileRef>> files;
    std::vector<const FileRef*> extent_file(extents.size());
    for (size_t i = 0; i < extents.size(); ++i) {
        const ReadExtent& e = extents[i];
        if (e.fd < 0 && e.path.empty()) return Status(EINVAL, "extent " + std::to_string(i) + ": no path or fd");
        if (e.length > 0 && e.dst == nullptr) {
            return Status(EINVAL, "extent " + std::to_string(i) + ": null destination");
        }
        auto key = std::make_pair(e.fd >= 0 ? std::string() : e.path, e.fd);
        auto it = files.find(key);
        if (it == files.end()) {
            auto file = open_file(e.path, e.fd, want_direct);
            if (!file) return file.status();
            if (want_direct && file.value()->direct_fd < 0) {
                log::once(log::Level::kWarn, "no-direct:" + file.value()->name,
                          "O_DIRECT refused on " + file.value()->name + " (" +
                              std::strerror(file.value()->direct_error) +
                              "): using buffered reads");
            }
            it = files.emplace(key, std::move(file).value()).first;
            req->files.push_back(it->second);
        }
        const FileRef& f = *it->second;
        if (e.offset > f.size || e.length > f.size - e.offset) {
            return Status(EINVAL, f.name + ": extent [" + std::to_string(e.offset) + ", " +
                                      std::to_string(e.offset + e.length) +
                                      ") is past the end of the file (size " +
                                      std::to_string(f.size) + ")");
        }
        extent_file[i] = &f;
    }

    std::vector<Op>& ops = req->ops;
    for (size_t i = 0; i < extents.size(); ++i) {
        const ReadExtent& e = extents[i];
        const FileRef& f = *extent_file[i];
        PlanMode plan = options.mode == IoMode::kBuffered ? PlanMode::kBuffered : PlanMode::kDirect;
        if (f.direct_fd < 0) {
            plan = PlanMode::kBuffered;
        } else if (options.mode == IoMode::kAuto &&
                   cached_fraction(f, e.offset, e.length) >= kBufferedWhenCached) {
            plan = info_.hybrid_hot_reads ? PlanMode::kHybrid : PlanMode::kBuffered;
        }
        size_t first_op = ops.size();
        plan_extent(e, f, plan, info_.io_bytes, ops);
        if (options.populate) {
            for (size_t k = first_op; k < ops.size(); ++k) ops[k].populate = true;
        }
        req->bytes_total += e.length;
    }

    ReadHandle handle(req);
    requests_.fetch_add(1, std::memory_order_relaxed);
    if (ops.empty()) {
        req->finish_now();
        return handle;
    }
    req->ops_left.store(ops.size(), std::memory_order_relaxed);

    // Offer the request to as many workers as it has ops (all of them for large reads); they
    // pull ops from its cursor, so a worker that runs faster takes a larger share.
    const size_t w = workers_.size();
    const size_t offer = std::min(w, ops.size());
    unsigned first = next_worker_.fetch_add(1, std::memory_order_relaxed);
    for (size_t i = 0; i < offer; ++i) workers_[(first + i) % w]->enqueue(req);
    return handle;
}

Status Engine::read_sync(const std::vector<ReadExtent>& extents, const ReadOptions& options) {
    auto handle = read(extents, options);
    if (!handle) return handle.status();
    return handle->wait();
}

EngineStats Engine::stats() const {
    EngineStats s;
    for (const auto& w : workers_) w->add_to(s);
    s.requests = requests_.load(std::memory_order_relaxed);
    s.syscalls_avoided = s.ops > s.enter_calls ? s.ops - s.enter_calls : 0;
    return s;
}

Result<double> page_cache_fraction(const std::string& path) {
    auto f = open_file(path, -1, false);
    if (!f) return f.status();
    if (f.value()->size == 0) return Status(EINVAL, path + ": empty file");
    return cached_fraction(*f.value(), 0, f.value()->size);
}

}  // namespace chainio
