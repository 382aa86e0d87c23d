// chainio_torch._C: the engine seen from Python. Blocking calls release the GIL; errors become
// ValueError (bad input, EINVAL) or the OSError subclass matching the errno.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "chainio/engine.h"
#include "chainio/host_memory.h"
#include "chainio/net.h"
#include "chainio/peer.h"
#include "chainio/safetensors.h"

namespace py = pybind11;
using chainio::Backend;
using chainio::Engine;
using chainio::IoMode;
using chainio::ReadExtent;
using chainio::ReadHandle;
using chainio::Status;

namespace {

// Message text as a Python str. It can quote bytes that are not UTF-8 (a file name, a bad
// header key): those come out as \xNN escapes instead of a UnicodeDecodeError that would hide
// the message.
py::str message_text(const std::string& text) {
    PyObject* o = PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()),
                                       "backslashreplace");
    if (o == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(o);
}

[[noreturn]] void raise_status(const Status& st) {
    if (st.code() == -EINVAL) {
        PyErr_SetObject(PyExc_ValueError, message_text(st.message()).ptr());
        throw py::error_already_set();
    }
    // OSError(errno, text) picks the subclass itself (ENOENT -> FileNotFoundError, ...).
    py::str text = message_text(st.message() + ": " + std::strerror(st.error_number()));
    PyObject* exc = PyObject_CallFunction(PyExc_OSError, "iO", st.error_number(), text.ptr());
    if (exc != nullptr) {
        PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
        Py_DECREF(exc);
    }
    throw py::error_already_set();
}

IoMode parse_mode(const std::string& mode) {
    if (mode == "auto") return IoMode::kAuto;
    if (mode == "direct") return IoMode::kDirect;
    if (mode == "buffered") return IoMode::kBuffered;
    throw py::value_error("mode must be 'auto', 'direct' or 'buffered', got '" + mode + "'");
}

Backend parse_backend(const std::string& backend) {
    if (backend == "auto") return Backend::kAuto;
    if (backend == "io_uring") return Backend::kIoUring;
    if (backend == "pread") return Backend::kPread;
    throw py::value_error("backend must be 'auto', 'io_uring' or 'pread', got '" + backend + "'");
}

// A path (str / os.PathLike) or an open file descriptor (int).
void set_source(ReadExtent& e, const py::handle& src) {
    if (py::isinstance<py::int_>(src)) {
        const long long v = PyLong_AsLongLong(src.ptr());
        if (v == -1 && PyErr_Occurred()) PyErr_Clear();
        if (v < 0 || v > INT_MAX) throw py::value_error("file descriptor must be 0.." + std::to_string(INT_MAX));
        e.fd = static_cast<int>(v);
        return;
    }
    py::module_ os = py::module_::import("os");
    py::object path = os.attr("fspath")(src);
    // The file system's bytes (os.fsencode): names that are not UTF-8 open too.
    if (py::isinstance<py::str>(path)) path = os.attr("fsencode")(path);
    if (!py::isinstance<py::bytes>(path))
        throw py::value_error("path must be str, bytes, os.PathLike or an int fd");
    e.path = path.cast<std::string>();
    if (e.path.empty()) throw py::value_error("empty path");
    if (e.path.find('\0') != std::string::npos)
        throw py::value_error("path has an embedded null byte");
}

uint64_t checked_u64(long long v, const char* what) {
    if (v < 0) throw py::value_error(std::string(what) + " must be >= 0, got " + std::to_string(v));
    return static_cast<uint64_t>(v);
}

/// A handle plus the Python objects whose memory it writes into. Dropping it waits for the
/// read: `keepalive` must outlive every write into it.
struct PyReadHandle {
    ReadHandle handle;
    py::object keepalive;

    PyReadHandle(ReadHandle h, py::object k) : handle(std::move(h)), keepalive(std::move(k)) {}
    PyReadHandle(PyReadHandle&&) = default;
    PyReadHandle(const PyReadHandle&) = delete;
    ~PyReadHandle() {
        if (!handle.valid() || handle.done()) return;
#if PY_VERSION_HEX >= 0x030D0000
        const bool finalizing = Py_IsFinalizing();
#else
        const bool finalizing = _Py_IsFinalizing();
#endif
        std::optional<py::gil_scoped_release> release;  // let other Python threads run
        if (!finalizing && PyGILState_Check()) release.emplace();
        (void)handle.wait();
    }

    uint64_t wait(std::optional<double> timeout) {
        if (timeout && std::isnan(*timeout)) throw py::value_error("timeout is NaN");
        // Beyond a day (inf included) is no limit; the clock cannot hold much more.
        if (timeout && *timeout > 86400.0) timeout.reset();
        Status st;
        {
            py::gil_scoped_release release;
            st = timeout ? handle.wait_for(std::chrono::milliseconds(
                               static_cast<long long>(std::max(*timeout, 0.0) * 1000.0)))
                         : handle.wait();
        }
        if (st.code() == -ETIMEDOUT && !handle.done()) {
            PyErr_SetObject(PyExc_TimeoutError, message_text(st.message()).ptr());
            throw py::error_already_set();
        }
        if (!st.is_ok()) raise_status(st);
        return handle.bytes_done();
    }
};

uint64_t run_sync(Engine& engine, std::vector<ReadExtent> extents, IoMode mode, bool populate = false) {
    Status st;
    uint64_t total = 0;
    for (auto& e : extents) total += e.length;
    {
        py::gil_scoped_release release;
        st = engine.read_sync(extents, {mode, populate});
    }
    if (!st.is_ok()) raise_status(st);
    return total;
}

py::dict stats_dict(const chainio::EngineStats& s) {
    py::dict d;
    d["bytes_read"] = s.bytes_read;
    d["requests"] = s.requests;
    d["ops"] = s.ops;
    d["direct_ops"] = s.direct_ops;
    d["bounce_ops"] = s.bounce_ops;
    d["buffered_ops"] = s.buffered_ops;
    d["fixed_ops"] = s.fixed_ops;
    d["retries"] = s.retries;
    d["populate_ops"] = s.populate_ops;
    d["enter_calls"] = s.enter_calls;
    d["syscalls_avoided"] = s.syscalls_avoided;
    d["busy_ns"] = s.busy_ns;
    d["idle_ns"] = s.idle_ns;
    return d;
}

py::dict info_dict(const chainio::EngineInfo& i) {
    py::dict d;
    d["backend"] = chainio::to_string(i.backend);
    d["workers"] = i.workers;
    d["queue_depth"] = i.queue_depth;
    d["io_bytes"] = i.io_bytes;
    d["pool_bytes"] = i.pool_bytes;
    d["hugetlb_pool"] = i.hugetlb_pool;
    d["registered_buffers"] = i.registered_buffers;
    d["single_issuer"] = i.single_issuer;
    d["notes"] = i.notes;
    return d;
}

py::dict header_dict(const chainio::safetensors::Header& h) {
    py::list tensors;
    for (const auto& t : h.tensors) {
        py::list shape;
        for (uint64_t d : t.shape) shape.append(d);
        tensors.append(py::make_tuple(t.name, t.dtype, shape, t.begin, t.end));
    }
    py::dict d;
    d["header_bytes"] = h.header_bytes;
    d["data_offset"] = h.data_offset;
    d["data_bytes"] = h.data_bytes;
    d["tensors"] = tensors;
    if (h.metadata) {
        py::dict meta;
        for (const auto& [k, v] : *h.metadata) meta[py::str(k)] = v;
        d["metadata"] = meta;
    } else {
        d["metadata"] = py::none();
    }
    auto plan = chainio::safetensors::plan_load(h);
    d["shift"] = plan.shift;
    d["buffer_bytes"] = plan.buffer_bytes;
    return d;
}

// ---- peer transfers (chainio/net.h)

chainio::net::NetOptions net_options(const std::string& transport, const std::string& ifname,
                                     uint32_t timeout_ms, bool busy_poll,
                                     size_t send_arena_bytes = 0, int spin_us = -1) {
    auto kind = chainio::net::parse_transport(transport);
    if (!kind) raise_status(kind.status());
    chainio::net::NetOptions o;
    o.transport = kind.value();
    o.ifname = ifname;
    o.timeout_ms = timeout_ms;
    o.busy_poll = busy_poll;
    o.send_arena_bytes = send_arena_bytes;
    if (spin_us >= 0) o.spin_us = static_cast<uint32_t>(spin_us);
    return o;
}

struct PySession {
    std::unique_ptr<chainio::net::Session> s;
    chainio::net::Session& get() {
        if (!s) throw py::value_error("the session is closed");
        return *s;
    }
};

py::dict net_stats_dict(const chainio::net::NetStats& s) {
    py::dict d;
    d["bytes_sent"] = s.bytes_sent;
    d["bytes_received"] = s.bytes_received;
    d["frames_sent"] = s.frames_sent;
    d["frames_zero_copy"] = s.frames_zero_copy;
    d["frames_received"] = s.frames_received;
    d["acks_sent"] = s.acks_sent;
    d["acks_received"] = s.acks_received;
    d["retransmits"] = s.retransmits;
    d["duplicates"] = s.duplicates;
    d["dropped_bad_token"] = s.dropped_bad_token;
    d["dropped_bad_check"] = s.dropped_bad_check;
    d["dropped_bad_len"] = s.dropped_bad_len;
    d["dropped_stale"] = s.dropped_stale;
    d["kicks"] = s.kicks;
    d["ring_enters"] = s.ring_enters;
    d["recv_probes"] = s.recv_probes;
    d["timeouts_fired"] = s.timeouts_fired;
    d["xsk_rx_dropped"] = s.xsk_rx_dropped;
    d["xsk_rx_ring_full"] = s.xsk_rx_ring_full;
    d["xsk_rx_fill_empty"] = s.xsk_rx_fill_empty;
    d["xsk_invalid_descs"] = s.xsk_invalid_descs;
    return d;
}

void net_recv(PySession& self, const std::function<void*(size_t, size_t)>& place) {
    Status st;
    {
        py::gil_scoped_release release;
        st = self.get().recv(place);
    }
    if (!st.is_ok()) raise_status(st);
}

py::dict seeder_stats_dict(const chainio::peer::SeederStats& s) {
    py::dict d;
    d["sessions"] = s.sessions;
    d["active"] = s.active;
    d["refused"] = s.refused;
    d["requests"] = s.requests;
    d["requests_failed"] = s.requests_failed;
    d["bytes_served"] = s.bytes_served;
    d["bytes_zero_copy"] = s.bytes_zero_copy;
    d["xdp_sessions"] = s.xdp_sessions;
    return d;
}

py::dict fetch_report_dict(const chainio::peer::FetchReport& r) {
    py::list sources;
    for (const auto& src : r.sources) {
        py::dict d;
        d["name"] = src.name;
        d["transport"] = src.transport;
        d["bytes"] = src.bytes;
        d["error"] = src.error;
        sources.append(d);
    }
    py::dict d;
    d["sources"] = sources;
    d["bytes"] = r.bytes;
    d["seconds"] = r.seconds;
    return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "ChainIO engine: io_uring storage reads into caller memory";
    m.attr("__version__") = CHAINIO_VERSION;

    py::class_<PyReadHandle>(m, "ReadHandle", "A submitted read; keeps its destinations alive.")
        .def("wait", &PyReadHandle::wait, py::arg("timeout") = py::none(),
             "Block until done; returns bytes read. Raises OSError/ValueError on failure, "
             "TimeoutError if `timeout` seconds pass first.")
        .def_property_readonly("done", [](const PyReadHandle& h) { return h.handle.done(); })
        .def_property_readonly("bytes_done", [](const PyReadHandle& h) { return h.handle.bytes_done(); })
        .def_property_readonly("bytes_total", [](const PyReadHandle& h) { return h.handle.bytes_total(); });

    py::class_<chainio::HostRegion>(m, "HostBuffer", py::buffer_protocol(),
                                    "Writable anonymous memory for tensors to own: hugetlb pool "
                                    "pages when the pool has room (and `hugetlb`), else 4 KiB pages, "
                                    "2 MiB-aligned and THP-advised if `transparent`. Unmapped when "
                                    "the last reference goes.")
        .def(py::init([](size_t nbytes, bool hugetlb, bool transparent) {
                 chainio::HostRegionOptions o;
                 o.hugetlb = hugetlb;
                 o.transparent = transparent;
                 auto r = chainio::HostRegion::allocate(nbytes, o);
                 if (!r) raise_status(r.status());
                 return std::move(r).value();
             }),
             py::arg("nbytes"), py::arg("hugetlb") = true, py::arg("transparent") = false)
        .def_buffer([](chainio::HostRegion& r) {
            return py::buffer_info(r.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                                   {static_cast<py::ssize_t>(r.size())}, {py::ssize_t{1}},
                                   /*readonly=*/false);
        })
        .def("__len__", &chainio::HostRegion::size)
        .def_property_readonly("address", [](const chainio::HostRegion& r) {
            return reinterpret_cast<uintptr_t>(r.data());
        })
        .def_property_readonly("mapped_bytes", &chainio::HostRegion::mapped_bytes)
        .def_property_readonly("backing", [](const chainio::HostRegion& r) {
            return std::string(chainio::to_string(r.backing()));
        });

    m.attr("hugetlb_min_bytes") = chainio::HostRegionOptions{}.hugetlb_min_bytes;  // smaller: 4 KiB pages
    m.def("host_memory_stats", [] {
        auto s = chainio::host_memory_stats();
        py::dict d;
        d["hugetlb_bytes"] = s.hugetlb_bytes;
        d["hugetlb_regions"] = s.hugetlb_regions;
        d["thp_bytes"] = s.transparent_bytes;
        d["thp_regions"] = s.transparent_regions;
        d["small_bytes"] = s.small_bytes;
        d["small_regions"] = s.small_regions;
        d["hugetlb_refused"] = s.hugetlb_refused;
        return d;
    }, "Process-wide counts of ChainIO's host memory regions (HostBuffers and the engines' "
       "pools) by page backing, in bytes asked for; hugetlb_refused: the pool was short.");

    py::class_<Engine>(m, "Engine", "W workers, each owning one io_uring, sharing one buffer pool.")
        .def(py::init([](unsigned workers, size_t pool_bytes, size_t io_bytes, unsigned queue_depth,
                         const std::string& backend, bool register_buffers) {
                 chainio::EngineOptions opt;
                 opt.workers = workers;
                 opt.pool_bytes = pool_bytes;
                 opt.io_bytes = io_bytes;
                 opt.queue_depth = queue_depth;
                 opt.backend = parse_backend(backend);
                 opt.register_buffers = register_buffers;
                 auto e = Engine::create(opt);
                 if (!e) raise_status(e.status());
                 return std::move(e).value();
             }),
             py::arg("workers") = 0, py::arg("pool_bytes") = size_t{64} << 20,
             py::arg("io_bytes") = size_t{1} << 20, py::arg("queue_depth") = 32,
             py::arg("backend") = "auto", py::arg("register_buffers") = true)
        .def(
            "read_into",
            [](Engine& engine, const py::handle& source, const py::buffer& dest, long long offset,
               std::optional<long long> length, const std::string& mode) {
                py::buffer_info info = dest.request(true);  // raises BufferError if read-only
                if (!PyBuffer_IsContiguous(info.view(), 'C')) {
                    throw py::value_error("destination buffer must be C-contiguous");
                }
                const auto capacity = static_cast<uint64_t>(info.size * info.itemsize);
                ReadExtent e;
                set_source(e, source);
                e.offset = checked_u64(offset, "offset");
                e.length = length ? checked_u64(*length, "length") : capacity;
                if (e.length > capacity) {
                    throw py::value_error("length " + std::to_string(e.length) +
                                          " exceeds the destination's " + std::to_string(capacity) + " bytes");
                }
                e.dst = info.ptr;
                return run_sync(engine, {e}, parse_mode(mode));
            },
            py::arg("source"), py::arg("dest"), py::arg("offset") = 0, py::arg("length") = py::none(),
            py::arg("mode") = "auto",
            "Read `length` bytes (default: the destination's size) at `offset` of `source` (path or "
            "fd) into the writable buffer `dest`. Returns the bytes read.")
        .def(
            "read_into_address",
            [](Engine& engine, const py::handle& source, uintptr_t address, long long length,
               long long offset, const std::string& mode, bool populate) {
                ReadExtent e;
                set_source(e, source);
                e.length = checked_u64(length, "length");
                e.offset = checked_u64(offset, "offset");
                if (address == 0 && e.length > 0) throw py::value_error("address is 0");
                e.dst = reinterpret_cast<void*>(address);
                return run_sync(engine, {e}, parse_mode(mode), populate);
            },
            py::arg("source"), py::arg("address"), py::arg("length"), py::arg("offset") = 0,
            py::arg("mode") = "auto", py::arg("populate") = false,
            "Like read_into for raw memory (e.g. tensor.data_ptr()); the caller guarantees "
            "`length` writable bytes at `address`.")
        .def(
            "submit",
            [](Engine& engine, const py::list& extents, const std::string& mode, py::object keepalive,
               bool populate) {
                std::vector<ReadExtent> list;
                list.reserve(extents.size());
                for (const auto& item : extents) {
                    auto t = item.cast<py::tuple>();
                    if (t.size() != 4) throw py::value_error("extent must be (source, offset, length, address)");
                    ReadExtent e;
                    set_source(e, t[0]);
                    e.offset = checked_u64(t[1].cast<long long>(), "offset");
                    e.length = checked_u64(t[2].cast<long long>(), "length");
                    auto address = t[3].cast<uintptr_t>();
                    if (address == 0 && e.length > 0) throw py::value_error("address is 0");
                    e.dst = reinterpret_cast<void*>(address);
                    list.push_back(std::move(e));
                }
                IoMode m = parse_mode(mode);
                chainio::Result<ReadHandle> h = Status(EINVAL, "unset");
                {
                    py::gil_scoped_release release;
                    h = engine.read(list, {m, populate});
                }
                if (!h) raise_status(h.status());
                return PyReadHandle(*h, std::move(keepalive));
            },
            py::arg("extents"), py::arg("mode") = "auto", py::arg("keepalive") = py::none(),
            py::arg("populate") = false,
            "Submit [(source, offset, length, address), ...] and return a ReadHandle at once. "
            "`keepalive` is held until the handle is dropped (pass the destination owners). "
            "`populate=True` faults fresh destination memory in ahead of each read "
            "(MADV_POPULATE_WRITE through the ring), much faster than first-touch faults.")
        .def("stats", [](const Engine& e) { return stats_dict(e.stats()); })
        .def("info", [](const Engine& e) { return info_dict(e.info()); });

    m.def(
        "page_cache_fraction",
        [](const py::handle& path) -> py::object {
            ReadExtent e;
            set_source(e, path);
            if (e.fd >= 0) throw py::value_error("page_cache_fraction takes a path");
            chainio::Result<double> frac = Status(EINVAL, "unset");
            {
                py::gil_scoped_release release;
                frac = chainio::page_cache_fraction(e.path);
            }
            if (!frac) return py::none();
            return py::float_(frac.value());
        },
        py::arg("path"),
        "Fraction of the file in the page cache (cachestat(2), or RWF_NOWAIT probes where the "
        "kernel lacks it), the engine's own measure; None for an empty or unreadable file.");

    m.def(
        "read_safetensors_header",
        [](const py::handle& path) {
            ReadExtent e;
            set_source(e, path);
            if (e.fd >= 0) throw py::value_error("read_safetensors_header takes a path");
            chainio::Result<chainio::safetensors::Header> h = Status(EINVAL, "unset");
            {
                py::gil_scoped_release release;
                h = chainio::safetensors::read_header(e.path);
            }
            if (!h) raise_status(h.status());
            return header_dict(h.value());
        },
        py::arg("path"),
        "Parse and validate a safetensors header. Returns data_offset, data_bytes, tensors "
        "[(name, dtype, shape, begin, end)], metadata (dict or None), and the load plan "
        "(shift, buffer_bytes). Malformed files raise ValueError naming file, tensor and reason.");

    py::class_<PySession>(m, "NetSession", py::buffer_protocol(),
                          "A connection to one ChainIO peer: whole objects, digest-checked, over "
                          "AF_XDP or TCP. Blocking calls release the GIL. As a buffer "
                          "(memoryview(s), numpy.frombuffer(s, numpy.uint8)) it is its send "
                          "arena: UMEM that send() transmits from without copying, "
                          "send_arena_bytes long on AF_XDP with multi-buffer frames, else empty. "
                          "A view keeps the session's memory alive.")
        .def_buffer([](PySession& self) {
            const std::span<std::byte> a = self.get().send_arena();
            return py::buffer_info(a.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                                   {static_cast<py::ssize_t>(a.size())}, {py::ssize_t{1}},
                                   /*readonly=*/false);
        })
        .def(
            "send",
            [](PySession& self, const py::list& objects) {
                std::vector<py::buffer_info> infos;
                std::vector<chainio::net::Span> spans;
                for (const py::handle& o : objects) {
                    infos.push_back(py::reinterpret_borrow<py::buffer>(o).request());
                    if (!PyBuffer_IsContiguous(infos.back().view(), 'C'))
                        throw py::value_error("object " + std::to_string(infos.size() - 1) +
                                              " is not a C-contiguous buffer");
                    spans.push_back({infos.back().ptr,
                                     static_cast<size_t>(infos.back().size * infos.back().itemsize)});
                }
                Status st;
                {
                    py::gil_scoped_release release;
                    st = self.get().send(spans);
                }
                if (!st.is_ok()) raise_status(st);
            },
            py::arg("objects"),
            "Send every object (buffers) at once and return when the peer verified all of them.")
        .def(
            "recv",
            [](PySession& self) {
                py::list out;
                auto place = [&](size_t, size_t size) -> void* {
                    py::gil_scoped_acquire gil;
                    py::object b = py::reinterpret_steal<py::object>(
                        PyByteArray_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size)));
                    if (!b) return nullptr;
                    out.append(b);
                    return size ? PyByteArray_AsString(b.ptr()) : reinterpret_cast<void*>(1);
                };
                net_recv(self, place);
                return out;
            },
            "Receive the objects of the peer's next send() as a list of bytearrays.")
        .def(
            "recv_into",
            [](PySession& self, const py::list& buffers) {
                std::vector<py::buffer_info> infos;
                for (const py::handle& o : buffers) {
                    infos.push_back(py::reinterpret_borrow<py::buffer>(o).request(true));
                    if (!PyBuffer_IsContiguous(infos.back().view(), 'C'))
                        throw py::value_error("buffer " + std::to_string(infos.size() - 1) +
                                              " is not C-contiguous");
                }
                auto place = [&](size_t i, size_t size) -> void* {
                    if (i >= infos.size()) return nullptr;
                    const size_t cap = static_cast<size_t>(infos[i].size * infos[i].itemsize);
                    if (cap != size) return nullptr;
                    return size ? infos[i].ptr : reinterpret_cast<void*>(1);
                };
                net_recv(self, place);
            },
            py::arg("buffers"),
            "Receive the peer's next send() into writable buffers whose sizes match its objects "
            "(a mismatch fails the transfer on both sides with ENOMEM).")
        .def_property_readonly("kind",
                               [](PySession& self) {
                                   return std::string(
                                       chainio::net::transport_name(self.get().kind()));
                               })
        .def_property_readonly("fallback_reason",
                               [](PySession& self) { return self.get().fallback_reason(); })
        .def("describe", [](PySession& self) { return self.get().describe(); })
        .def("stats", [](PySession& self) { return net_stats_dict(self.get().stats()); })
        .def("close", [](PySession& self) {
            if (self.s) {
                py::gil_scoped_release release;
                self.s->close();
            }
        })
        .def("abort", [](PySession& self) {
            if (self.s) self.s->abort();
        }, "From another thread: end the session now; a send()/recv() in progress fails with "
           "a connection error (then close() it).");

    py::class_<chainio::net::Listener>(m, "NetListener", "A TCP port accepting ChainIO peers.")
        .def(py::init([](const std::string& ip, uint16_t port, const std::string& transport,
                         const std::string& ifname, uint32_t timeout_ms, bool busy_poll,
                         size_t send_arena_bytes, int spin_us) {
                 auto l = chainio::net::Listener::create(
                     ip, port,
                     net_options(transport, ifname, timeout_ms, busy_poll, send_arena_bytes,
                                 spin_us));
                 if (!l) raise_status(l.status());
                 return std::move(l.value());
             }),
             py::arg("ip"), py::arg("port") = 0, py::arg("transport") = "auto",
             py::arg("ifname") = "", py::arg("timeout_ms") = 5000, py::arg("busy_poll") = false,
             py::arg("send_arena_bytes") = 0, py::arg("spin_us") = -1)
        .def_property_readonly("port", &chainio::net::Listener::port)
        .def(
            "accept",
            [](chainio::net::Listener& l, uint32_t timeout_ms) {
                chainio::Result<std::unique_ptr<chainio::net::Session>> r =
                    Status(EINVAL, "unset");
                {
                    py::gil_scoped_release release;
                    r = l.accept(timeout_ms);
                }
                if (!r) raise_status(r.status());
                return PySession{std::move(r.value())};
            },
            py::arg("timeout_ms") = 10000, "Wait for one peer and run the hello.");

    m.def(
        "net_connect",
        [](const std::string& ip, uint16_t port, const std::string& transport,
           const std::string& ifname, uint32_t timeout_ms, bool busy_poll,
           size_t send_arena_bytes, int spin_us) {
            const auto o = net_options(transport, ifname, timeout_ms, busy_poll, send_arena_bytes,
                                       spin_us);
            chainio::Result<std::unique_ptr<chainio::net::Session>> r = Status(EINVAL, "unset");
            {
                py::gil_scoped_release release;
                r = chainio::net::Session::connect(ip, port, o);
            }
            if (!r) raise_status(r.status());
            return PySession{std::move(r.value())};
        },
        py::arg("ip"), py::arg("port"), py::arg("transport") = "auto", py::arg("ifname") = "",
        py::arg("timeout_ms") = 5000, py::arg("busy_poll") = false,
        py::arg("send_arena_bytes") = 0, py::arg("spin_us") = -1,
        "Connect to a NetListener; transport 'auto' uses AF_XDP when both sides can. "
        "send_arena_bytes: see NetSession's buffer (the send arena). spin_us: without "
        "busy_poll, how long a session spins (AF_XDP on its rings, TCP probing its socket) "
        "before it sleeps (-1: the default, 20).");

    m.def(
        "parse_safetensors_header",
        [](const py::bytes& prefix, uint64_t file_size, const std::string& name) {
            const std::string_view v = prefix;
            uint64_t needed = 0;
            auto h = chainio::safetensors::parse_header(
                reinterpret_cast<const uint8_t*>(v.data()), v.size(), file_size, name, &needed);
            if (!h) {
                if (h.status().code() == -EAGAIN)
                    raise_status(Status(EINVAL, name + ": header needs " + std::to_string(needed) +
                                                    " bytes, got " + std::to_string(v.size())));
                raise_status(h.status());
            }
            return header_dict(h.value());
        },
        py::arg("prefix"), py::arg("file_size"), py::arg("name"),
        "Like read_safetensors_header, from the file's first 8 + N bytes (e.g. fetched from a "
        "seeder).");

    // ---- weight distribution (chainio/peer.h)
    py::class_<chainio::peer::Seeder>(m, "Seeder",
                                      "Serves the files under `root` to ChainIO fetchers.")
        .def(py::init([](const std::string& root, const std::string& token, const std::string& ip,
                         uint16_t port, const std::string& transport, const std::string& ifname,
                         uint32_t timeout_ms, unsigned max_sessions, size_t chunk_bytes,
                         uint32_t idle_ms, bool busy_poll) {
                 chainio::peer::SeederOptions o;
                 o.root = root;
                 o.ip = ip;
                 o.port = port;
                 o.net = net_options(transport, ifname, timeout_ms, busy_poll);
                 o.net.auth = token;
                 o.max_sessions = max_sessions;
                 o.chunk_bytes = chunk_bytes;
                 o.idle_ms = idle_ms;
                 chainio::Result<std::unique_ptr<chainio::peer::Seeder>> r = Status(EINVAL, "unset");
                 {
                     py::gil_scoped_release release;
                     r = chainio::peer::Seeder::start(o);
                 }
                 if (!r) raise_status(r.status());
                 return std::move(r.value());
             }),
             py::arg("root"), py::arg("token"), py::arg("ip") = "0.0.0.0", py::arg("port") = 0,
             py::arg("transport") = "auto", py::arg("ifname") = "", py::arg("timeout_ms") = 5000,
             py::arg("max_sessions") = 8, py::arg("chunk_bytes") = size_t(8) << 20,
             py::arg("idle_ms") = 60000, py::arg("busy_poll") = false)
        .def_property_readonly("port", &chainio::peer::Seeder::port)
        .def("stats", [](const chainio::peer::Seeder& s) { return seeder_stats_dict(s.stats()); })
        .def(
            "stop",
            [](chainio::peer::Seeder& s) {
                py::gil_scoped_release release;
                s.stop();
            },
            "Stop accepting, end every session and join the threads.");

    py::class_<chainio::peer::Fetcher>(m, "PeerFetcher",
                                       "Sessions to seeders (\"ip:port\"); reads striped across "
                                       "them with failover. Blocking calls release the GIL.")
        .def(py::init([](const std::vector<std::string>& peers, const std::string& token,
                         const std::string& transport, uint32_t timeout_ms, size_t piece_bytes,
                         Engine* engine, bool busy_poll) {
                 chainio::peer::FetchOptions o;
                 o.net = net_options(transport, "", timeout_ms, busy_poll);
                 o.net.auth = token;
                 o.piece_bytes = piece_bytes;
                 o.engine = engine;
                 auto r = chainio::peer::Fetcher::create(peers, o);
                 if (!r) raise_status(r.status());
                 return std::move(r.value());
             }),
             py::arg("peers"), py::arg("token"), py::arg("transport") = "auto",
             py::arg("timeout_ms") = 5000, py::arg("piece_bytes") = size_t(64) << 20,
             py::arg("engine") = nullptr, py::arg("busy_poll") = false,
             py::keep_alive<1, 7>())
        .def(
            "stat",
            [](chainio::peer::Fetcher& f, const std::string& path) {
                chainio::Result<chainio::peer::Fetcher::FileInfo> r = Status(EINVAL, "unset");
                {
                    py::gil_scoped_release release;
                    r = f.stat(path);
                }
                if (!r) raise_status(r.status());
                return py::make_tuple(r.value().size, r.value().mtime_ns);
            },
            py::arg("path"), "(size, mtime_ns) of `path` on the first seeder that has it.")
        .def(
            "list",
            [](chainio::peer::Fetcher& f, const std::string& path) {
                chainio::Result<std::vector<std::pair<std::string, uint64_t>>> r =
                    Status(EINVAL, "unset");
                {
                    py::gil_scoped_release release;
                    r = f.list(path);
                }
                if (!r) raise_status(r.status());
                return r.value();
            },
            py::arg("path"), "[(name, size)] of the regular files directly in directory `path`.")
        .def(
            "read",
            [](chainio::peer::Fetcher& f, const std::string& path, uint64_t size,
               const py::list& extents, const std::string& local_path, const py::object& keepalive,
               int64_t mtime_ns) {
                (void)keepalive;  // held by the caller's frame for the duration of this call
                std::vector<chainio::peer::FetchExtent> ex;
                for (const py::handle& item : extents) {
                    auto t = item.cast<py::tuple>();
                    if (t.size() != 3) throw py::value_error("extents are (offset, length, address)");
                    ex.push_back({t[0].cast<uint64_t>(), t[1].cast<uint64_t>(),
                                  reinterpret_cast<void*>(t[2].cast<uintptr_t>())});
                }
                chainio::peer::Fetcher::FileInfo info;
                info.size = size;
                info.mtime_ns = mtime_ns;
                chainio::peer::FetchReport report;
                // The read runs on its own thread so that this one can take Ctrl-C (signals
                // are handled on the main thread): the fetch is cancelled, and once it let go
                // of the destinations the KeyboardInterrupt propagates.
                Status st;
                bool done = false;
                std::mutex mu;
                std::condition_variable cv;
                std::thread reader([&] {
                    Status r = f.read(path, info, ex, local_path, &report);
                    std::lock_guard<std::mutex> lock(mu);
                    st = r;
                    done = true;
                    cv.notify_all();
                });
                for (;;) {
                    {
                        py::gil_scoped_release release;
                        std::unique_lock<std::mutex> lock(mu);
                        if (cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return done; }))
                            break;
                    }
                    if (PyErr_CheckSignals() != 0) {
                        f.cancel();
                        {
                            py::gil_scoped_release release;
                            reader.join();
                        }
                        throw py::error_already_set();  // after the join: no thread writes
                    }
                }
                {
                    py::gil_scoped_release release;
                    reader.join();
                }
                if (!st.is_ok()) raise_status(st);
                return fetch_report_dict(report);
            },
            py::arg("path"), py::arg("size"), py::arg("extents"), py::arg("local_path") = "",
            py::arg("keepalive") = py::none(), py::arg("mtime_ns") = 0,
            "Read [(offset, length, address)] of `path` (a `size`-byte file) from the seeders; "
            "what none delivers comes from `local_path`. With `mtime_ns` (from stat), a seeder "
            "whose file has another mtime refuses (ESTALE): one version per read. Returns who "
            "delivered what.");
}
