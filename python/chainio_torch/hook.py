"""The model-loading hook: existing safetensors / Hugging Face code loads through ChainIO unchanged.

``patch()`` replaces ``safetensors.safe_open``, ``safetensors.torch.load_file`` and
``safetensors.torch.load`` with the functions of this module, at the source and wherever another
module bound the original objects before the patch (``from safetensors import safe_open`` in
``transformers.modeling_utils``, for instance): every module in ``sys.modules`` is scanned for
attributes that *are* one of the originals. Modules imported later get the replacements from the
source. ``unpatch()`` puts every original object back where it was found, and also where a module
imported while patched had bound a replacement.

What is served by ChainIO: paths (``str`` / ``os.PathLike``) opened for torch (``framework`` "pt",
"torch" or "pytorch") on a CPU device (or CUDA when torch sees one), with safetensors' ``"mmap"``
or ``"pread"`` backend. Everything else goes to the original unchanged: other frameworks, file
descriptors and file-like objects, other devices and backends, unknown keyword arguments,
``safetensors.torch.load(bytes)`` (the bytes are already in memory), and, in the default ``"auto"``
mode, a file that is mostly in the page cache already and asked for with the ``"mmap"`` backend
on the CPU: safetensors then maps it without reading anything, which no copying loader can beat.
A file whose header ChainIO's parser rejects is handed to the original too; if the original
rejects it as well, ChainIO's ``SafetensorError`` is raised (a subclass of safetensors' own).
A served ``safe_open`` reads ahead (``$CHAINIO_HOOK_READAHEAD_MIB``, default 128 MiB) when whole
tensors are read in file order, as ``from_pretrained`` does, so that the engine keeps a deep
queue (see ``chainio_torch.loader.safe_open``).

``stats()`` counts calls, files and bytes on both sides, per path, with the reasons for every
pass-through. This module imports neither torch nor safetensors by itself: it is what the
``CHAINIO_AUTOPATCH`` import hook (``_autopatch.py``) loads at interpreter start.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import types
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["patch", "unpatch", "patched", "is_patched", "stats", "reset_stats", "MODES"]

MODES = ("auto", "always")
_TORCH_FRAMEWORKS = ("pt", "torch", "pytorch")
_SERVED_BACKENDS = ("mmap", "pread")
_HOT_FRACTION = 0.5  # the engine's own rule: a range >= 50% resident is read from the page cache
_READAHEAD_MIB = 128  # default of $CHAINIO_HOOK_READAHEAD_MIB

# (module, attribute) of every object the hook replaces.
_TARGETS: Tuple[Tuple[str, str], ...] = (
    ("safetensors", "safe_open"),
    ("safetensors.torch", "load_file"),
    ("safetensors.torch", "load"),
)
# Replaced when transformers is loaded (now or later), never imported for it: from_pretrained
# calls this to find the shard files, before it builds the model; the replacement starts reading
# the shards then, so that the reads overlap the model's construction (see _prefetch).
_OPTIONAL_TARGETS: Tuple[Tuple[str, str], ...] = (
    ("transformers.modeling_utils", "_get_resolved_checkpoint_files"),
)
# safetensors' own load_file calls the `safe_open` bound in safetensors.torch: that one stays the
# original, so a load_file that the hook passes through runs exactly as it did before the patch.
_KEEP_ORIGINAL = {("safetensors.torch", "safe_open")}

_lock = threading.RLock()
_originals: Dict[Tuple[str, str], Any] = {}  # found once, never change
_sites: List[Tuple[types.ModuleType, str, Any]] = []  # (module, attribute, original) replaced
_active = False
_mode = "auto"


# ---------------------------------------------------------------------------------------- stats

class _Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self._paths: Dict[str, Dict[str, Any]] = {}

    def _entry(self, key: str) -> Dict[str, Any]:
        e = self._paths.get(key)
        if e is None:
            e = self._paths[key] = {"chainio_calls": 0, "chainio_bytes": 0,
                                    "passthrough_calls": 0, "passthrough_bytes": 0,
                                    "readahead_unused_bytes": 0, "prefetched_bytes": 0,
                                    "reasons": set()}
        return e

    def served(self, key: str, calls: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            e = self._entry(key)
            e["chainio_calls"] += calls
            e["chainio_bytes"] += nbytes

    def prefetched(self, key: str, nbytes: int) -> None:
        with self._lock:
            self._entry(key)["prefetched_bytes"] += nbytes

    def read_ahead_unused(self, key: str, nbytes: int) -> None:
        with self._lock:
            self._entry(key)["readahead_unused_bytes"] += nbytes

    def passed(self, key: str, nbytes: int, reason: str) -> None:
        with self._lock:
            e = self._entry(key)
            e["passthrough_calls"] += 1
            e["passthrough_bytes"] += nbytes
            e["reasons"].add(reason)

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            paths = {k: dict(v, reasons=sorted(v["reasons"])) for k, v in self._paths.items()}
        out: Dict[str, Any] = {"patched": _active, "mode": _mode}
        for side in ("chainio", "passthrough"):
            out[side] = {
                "files": sum(1 for v in paths.values() if v[side + "_calls"]),
                "calls": sum(v[side + "_calls"] for v in paths.values()),
                "bytes": sum(v[side + "_bytes"] for v in paths.values()),
            }
        out["paths"] = paths
        return out

    def reset(self) -> None:
        with self._lock:
            self._paths.clear()


_stats = _Stats()


def stats() -> Dict[str, Any]:
    """What the hook did since the last ``reset_stats()``.

    ``{"patched": bool, "mode": str,
       "chainio": {"files", "calls", "bytes"}, "passthrough": {"files", "calls", "bytes"},
       "paths": {path: {"chainio_calls", "chainio_bytes", "passthrough_calls",
                        "passthrough_bytes", "readahead_unused_bytes", "prefetched_bytes",
                        "reasons": [...]}}}``

    ChainIO bytes are the tensor bytes it read and handed out; ``readahead_unused_bytes`` those
    that ``safe_open``'s readahead read but nobody asked for before ``__exit__``;
    ``prefetched_bytes`` what ``from_pretrained``'s prefetch had read (or was reading) when the
    file was opened (see ``_prefetch``; ``CHAINIO_HOOK_PREFETCH=0`` turns it off). Pass-through
    bytes are the size of what was handed to safetensors (the file, or the ``bytes`` object):
    what safetensors then reads is up to it.
    Paths are absolute; an argument that is not a path is keyed ``<bytes>``, ``<fd 5>`` or
    ``<TypeName>``. A path can show up on both sides (opened twice, once hot and once cold).
    """
    return _stats.snapshot()


def reset_stats() -> None:
    """Forget every count (the patch itself is left as it is)."""
    _stats.reset()


# ------------------------------------------------------------------------------ patch / unpatch

def patch(mode: Optional[str] = None) -> None:
    """Route safetensors' loaders through ChainIO (see the module docstring for what is served).

    ``mode``: ``"auto"`` (default, or ``$CHAINIO_HOOK_MODE``) passes through a file that is
    mostly in the page cache when safetensors would map it; ``"always"`` reads every servable
    file with ChainIO. Imports ``safetensors`` and ``safetensors.torch`` (hence torch). Calling it
    again is harmless: it only picks up modules imported since, and changes the mode if given.
    """
    with _lock:
        _set_mode(mode)
        for modname, _ in _TARGETS:
            try:
                importlib.import_module(modname)
            except ImportError as e:
                raise ImportError(f"chainio_torch.patch() replaces safetensors' loaders, but "
                                  f"{modname} cannot be imported: {e}") from e
        _install()


def _patch_loaded(mode: Optional[str] = None) -> None:
    """Patch what is already imported, importing nothing (the CHAINIO_AUTOPATCH import hook)."""
    with _lock:
        _set_mode(mode)
        _install()


def unpatch() -> None:
    """Put every original object back: in safetensors and in every module that had it bound.

    Also removes the ``CHAINIO_AUTOPATCH`` import hook, so a later ``import safetensors.torch``
    does not patch again. Harmless when nothing is patched.
    """
    with _lock:
        global _active
        autopatch = sys.modules.get(__package__ + "._autopatch")
        if autopatch is not None:
            autopatch.uninstall()
        # The recorded sites first: they include modules no longer in sys.modules that are
        # still referenced somewhere; then every loaded module (some were imported while patched).
        replacement_of = {id(orig): _REPLACEMENTS[key] for key, orig in _originals.items()}
        for mod, name, orig in reversed(_sites):
            if mod.__dict__.get(name) is replacement_of[id(orig)]:
                mod.__dict__[name] = orig
        _sites.clear()
        original_of = {id(_REPLACEMENTS[key]): (_REPLACEMENTS[key], orig)
                       for key, orig in _originals.items()}
        for _name, _mod, d in _module_dicts():
            if original_of.keys().isdisjoint(map(id, list(d.values()))):
                continue
            hits = [(name, value) for name, value in list(d.items()) if id(value) in original_of]
            for name, value in hits:
                repl, orig = original_of[id(value)]
                if value is repl:
                    d[name] = orig
        _active = False
    _drop_prefetched()


def is_patched() -> bool:
    return _active


@contextlib.contextmanager
def patched(mode: Optional[str] = None):
    """``with chainio_torch.patched(): ...`` patches for the block; on exit it unpatches, unless
    the hook was already active when the block began (then it stays, with its previous mode)."""
    with _lock:
        was_active, old_mode = _active, _mode
        patch(mode)
    try:
        yield
    finally:
        with _lock:
            if was_active:
                _set_mode(old_mode)
            else:
                unpatch()


def _set_mode(mode: Optional[str]) -> None:
    global _mode
    if mode is None:
        if _active:
            return
        mode = os.environ.get("CHAINIO_HOOK_MODE", "auto") or "auto"
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _mode = mode


def _install() -> None:
    """Record the originals of the targets whose modules are loaded, then replace them in every
    loaded module. Caller holds _lock."""
    global _active
    for key in _TARGETS + _OPTIONAL_TARGETS:
        mod = sys.modules.get(key[0])
        if mod is None or key in _originals:
            continue
        obj = mod.__dict__.get(key[1])
        if obj is None or obj is _REPLACEMENTS[key]:
            continue
        _originals[key] = obj
    if not _originals:
        return
    by_id = {id(orig): (orig, _REPLACEMENTS[key]) for key, orig in _originals.items()}
    keep = {id(_REPLACEMENTS[key]): _originals[key] for key in _originals}
    for modname, mod, d in _module_dicts():
        if by_id.keys().isdisjoint(map(id, list(d.values()))):  # most modules; runs in C
            continue
        hits = [(name, value) for name, value in list(d.items()) if id(value) in by_id]
        for name, value in hits:
            orig, repl = by_id[id(value)]
            if value is orig and (modname, name) not in _KEEP_ORIGINAL:
                d[name] = repl
                _sites.append((mod, name, value))
    if "transformers.modeling_utils" not in sys.modules:
        from . import _autopatch

        _autopatch.watch_transformers()  # patched right after it is imported
    for modname, name in _KEEP_ORIGINAL:  # imported while patched: it must see the original
        d = _dict_of(sys.modules.get(modname))
        if d is not None and id(d.get(name)) in keep:
            d[name] = keep[id(d[name])]
    _active = True


def _dict_of(mod) -> Optional[dict]:
    """A module's __dict__, read without getattr (lazy modules such as transformers' load
    nothing), or None for what is not a module."""
    if not isinstance(mod, types.ModuleType):
        return None
    try:
        return object.__getattribute__(mod, "__dict__")
    except AttributeError:
        return None


def _module_dicts():
    """(name in sys.modules, module, its __dict__) for every loaded module."""
    for name, mod in list(sys.modules.items()):
        d = _dict_of(mod)
        if d is not None:
            yield name, mod, d


def _original(key: Tuple[str, str]):
    orig = _originals.get(key)
    if orig is None:  # called before any patch (a stale reference, or directly)
        orig = getattr(importlib.import_module(key[0]), key[1])
        if orig is _REPLACEMENTS[key]:
            raise RuntimeError(f"{key[0]}.{key[1]} is chainio's replacement but the original "
                               f"is unknown")
    return orig


# ------------------------------------------------------------------------------------ deciding

def _path_key(obj) -> Tuple[Optional[str], str]:
    """(path to serve or None, key for the stats)."""
    if isinstance(obj, (str, os.PathLike)):
        try:
            p = os.fspath(obj)
        except TypeError:
            return None, f"<{type(obj).__name__}>"
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        return p, os.path.abspath(p)
    if isinstance(obj, int):
        return None, f"<fd {obj}>"
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return None, "<bytes>"
    return None, f"<{type(obj).__name__}>"


def _file_size(path: Optional[str]) -> int:
    if path is None:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _device_type(device) -> Optional[str]:
    """The torch device type ChainIO would load to, or None when it does not serve ``device``."""
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"  # safetensors' convention for an int device
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return None
    if dev.type == "cpu" or (dev.type == "cuda" and torch.cuda.is_available()):
        return dev.type
    return None


def _why_not(path: Optional[str], framework: str, device, backend, extra) -> Optional[str]:
    """Why a call goes to the original (None: ChainIO serves it)."""
    if not _active:
        return "not patched"
    if path is None:
        return "not a path"
    if framework not in _TORCH_FRAMEWORKS:
        return f"framework {framework!r}"
    if extra:
        return "options " + ", ".join(sorted(extra))
    if backend not in _SERVED_BACKENDS:
        return f"backend {backend!r}"
    dev_type = _device_type(device)
    if dev_type is None:
        return f"device {device!r}"
    # Auto mode: a CPU load of a mostly cached file with the mmap backend stays with safetensors.
    # Mapping cached pages reads nothing; copying them into new memory cannot be faster.
    if _mode == "auto" and backend == "mmap" and dev_type == "cpu":
        with _prefetch_lock:
            if os.path.abspath(path) in _prefetched:
                return None  # being read for from_pretrained already (its header is cached)
        frac = resident_fraction(path)
        if frac is not None and frac >= _HOT_FRACTION:
            return "in the page cache (safetensors maps it)"
    return None


def _readahead_bytes() -> int:
    """safe_open's readahead window: $CHAINIO_HOOK_READAHEAD_MIB (0 turns it off), default 128.

    transformers materializes tensor after tensor from a few threads; without readahead ChainIO
    would see one or two tensors in flight instead of a deep queue."""
    raw = os.environ.get("CHAINIO_HOOK_READAHEAD_MIB", "")
    try:
        mib = float(raw) if raw.strip() else _READAHEAD_MIB
    except ValueError:
        raise ValueError(f"CHAINIO_HOOK_READAHEAD_MIB must be a number of MiB, "
                         f"got {raw!r}") from None
    return max(0, int(mib * 2**20))


# ------------------------------------------------------------------------ page cache residency

def resident_fraction(path: str) -> Optional[float]:
    """Fraction of ``path`` in the page cache, measured as the engine's auto mode does
    (cachestat(2), or RWF_NOWAIT probes where the kernel lacks it). None if it cannot be told
    (the file is then treated as cold)."""
    from ._C import page_cache_fraction

    try:
        return page_cache_fraction(path)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------ the replacements

def load_file(filename, device="cpu", *args, **kwargs):
    """``safetensors.torch.load_file`` through ChainIO: same arguments, same result (a dict of
    CPU or CUDA tensors, in the file's order), same exceptions."""
    path, key = _path_key(filename)
    backend = kwargs.get("backend", "mmap")
    extra = set(kwargs) - {"backend"}
    if args:
        extra.add(f"{len(args)} extra positional")
    reason = _why_not(path, "pt", device, backend, extra)
    if reason is None:
        from . import loader
        from .errors import SafetensorError

        try:
            header = loader.read_header(path)
        except SafetensorError as ours:
            return _rejected(ours, key, path, lambda: _original(("safetensors.torch", "load_file"))(
                filename, device, *args, **kwargs))
        _stats.served(key, calls=1)
        out = loader._load_many([header], device, None, progress=False)
        _stats.served(key, nbytes=header.data_bytes)
        return out
    _stats.passed(key, _file_size(path), reason)
    return _original(("safetensors.torch", "load_file"))(filename, device, *args, **kwargs)


def load(data, *args, **kwargs):
    """``safetensors.torch.load(bytes)``: always safetensors' own (the bytes are in memory
    already, there is nothing to read); counted in ``stats()`` under ``<bytes>``."""
    try:
        n = len(data)
    except TypeError:
        n = 0
    _stats.passed("<bytes>", n, "bytes in memory")
    return _original(("safetensors.torch", "load"))(data, *args, **kwargs)


def _rejected(ours, key, path, call):
    """ChainIO's parser refused the file: let safetensors try. If it refuses it as malformed
    too, raise ours (it names file, tensor and reason); any other error of the original (an
    OSError for /dev/null, say) is raised as it is, so that callers catch what they would
    unpatched."""
    import safetensors

    try:
        out = call()
    except safetensors.SafetensorError:
        raise ours from None
    _stats.passed(key, _file_size(path), f"ChainIO's parser rejected it: {ours}"[:300])
    return out


class _SafeOpenMeta(type):
    def __instancecheck__(cls, obj):
        served = _SERVED_CLASS
        if served is not None and isinstance(obj, served):
            return True
        orig = _originals.get(("safetensors", "safe_open"))
        return orig is not None and isinstance(obj, orig)


class safe_open(metaclass=_SafeOpenMeta):  # noqa: N801 - replaces safetensors.safe_open
    """``safetensors.safe_open`` through ChainIO: lazy like the original (the header is read on
    open, each tensor when asked for), same methods (``keys``, ``offset_keys``, ``metadata``,
    ``get_tensor``, ``get_slice``, ``get_tensors``, context manager), same errors. What the hook
    does not serve is opened by the original and returned as is."""

    def __new__(cls, filename, framework, device="cpu", *args, **kwargs):
        path, key = _path_key(filename)
        backend = kwargs.get("backend", "mmap")
        extra = set(kwargs) - {"backend"}
        if args:
            extra.add(f"{len(args)} extra positional")
        fw = framework if isinstance(framework, str) else repr(framework)
        reason = _why_not(path, fw, device, backend, extra)
        orig = _original(("safetensors", "safe_open"))
        if reason is None:
            from .errors import SafetensorError

            try:
                f = _served_class()(path, device, key)
            except SafetensorError as ours:
                return _rejected(ours, key, path,
                                 lambda: orig(filename, framework, device, *args, **kwargs))
            _stats.served(key, calls=1)
            return f
        _stats.passed(key, _file_size(path), reason)
        return orig(filename, framework, device, *args, **kwargs)


_SERVED_CLASS = None


def _served_class():
    """The ChainIO-backed safe_open (built on first use: it needs torch)."""
    global _SERVED_CLASS
    if _SERVED_CLASS is not None:
        return _SERVED_CLASS
    from . import loader
    from .errors import SafetensorError

    class ChainIOSafeOpen(loader.safe_open):
        """chainio_torch.loader.safe_open that counts its reads and closes like safetensors'."""

        def __init__(self, path, device, key):
            super().__init__(path, framework="pt", device=device, readahead=_readahead_bytes())
            self._key = key
            self._closed = False
            # The whole data region, when from_pretrained's prefetch already read it.
            self._whole_file = None
            pre = _take_prefetched(key)
            if pre is not None and pre[0].stat == self._header.stat:
                self._whole_file = pre[1:]
                _stats.prefetched(key, self._header.data_bytes)
            elif pre is not None and pre[2] is not None:
                try:
                    pre[2].wait()
                except OSError:
                    pass

        def _check_open(self):
            if self._closed:
                raise SafetensorError("File is closed")

        def __exit__(self, *exc):
            self._closed = True
            self._whole_file = None  # the tensors handed out keep the buffer alive
            unused = self._drain()
            self._close_fd()
            if unused:
                _stats.read_ahead_unused(self._key, unused)
            return None

        def keys(self):
            self._check_open()
            return super().keys()

        def offset_keys(self):
            self._check_open()
            return super().offset_keys()

        def metadata(self):
            self._check_open()
            return super().metadata()

        def get_tensor(self, name):
            self._check_open()
            return super().get_tensor(name)

        def get_slice(self, name):
            self._check_open()
            return super().get_slice(name)

        def get_tensors(self, names=None):
            self._check_open()
            if names is not None:
                return super().get_tensors(names)
            # Every tensor: one read of the whole data region into one buffer.
            out = loader._load_many([self._header], self._device, self._engine, progress=False)
            _stats.served(self._key, nbytes=self._header.data_bytes)
            return out

        def _read(self, entry):
            whole = self._whole_file
            if whole is not None:
                buf, handle = whole
                if handle is not None:
                    handle.wait()  # a read error raises here, as the read itself would
                loader._check_unchanged(self._header, self._source())
                t = loader.view_tensor(buf, self._header.shift, entry, self._header.path)
                if self._device.type != "cpu":
                    t = t.to(self._device)
            else:
                t = super()._read(entry)
            _stats.served(self._key, nbytes=entry.end - entry.begin)
            return t

    ChainIOSafeOpen.__name__ = ChainIOSafeOpen.__qualname__ = "safe_open"
    ChainIOSafeOpen.__module__ = __name__
    _SERVED_CLASS = ChainIOSafeOpen
    return ChainIOSafeOpen


# ------------------------------------------------------------------ prefetch for from_pretrained

_prefetch_lock = threading.Lock()
_prefetched: Dict[str, Any] = {}  # absolute path -> (FileHeader, buffer, handle)


def _get_resolved_checkpoint_files(*args, **kwargs):
    """transformers' shard lookup, then the prefetch of the shards it found (never an error of
    its own: a prefetch that cannot start just does not happen)."""
    out = _original(_OPTIONAL_TARGETS[0])(*args, **kwargs)
    try:
        files = out[0] if isinstance(out, tuple) else None
        if files:
            _prefetch(list(files))
    except Exception:  # noqa: BLE001 - the load goes on without the prefetch
        pass
    return out


def _memory_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _prefetch(files: List[str]) -> None:
    """Starts reading the data region of every shard ChainIO would serve, each into the buffer
    its tensors will be views of, while transformers builds the model. The served ``safe_open``
    of a prefetched file takes the buffer over. Buffers in hugetlb pool pages are limited by the
    pool only; the others take at most half of MemAvailable (which does not count the pool); the
    other shards load as usual. Entries nobody takes are dropped at the next prefetch and by
    ``unpatch()``."""
    if not _active or not _prefetch_enabled():
        return
    from . import default_engine, loader

    budget = _memory_available() // 2
    engine = None  # created on first use: a hot checkpoint must not pay for it
    fresh: Dict[str, Any] = {}
    for f in files:
        path, key = _path_key(f)
        if path is None or not path.endswith(".safetensors") or key in fresh:
            continue
        if _why_not(path, "pt", "cpu", "mmap", set()) is not None:
            continue  # hot (safetensors maps it) or not servable
        try:
            h = loader.read_header(path)
        except Exception:  # noqa: BLE001 - safe_open will report it
            continue
        if h.buffer_bytes:
            buf, backing = loader.host_tensor(h.buffer_bytes)  # mapped, not touched yet
        else:
            buf, backing = loader.aligned_buffer(0), "4k"
        if backing != "hugetlb":
            if h.buffer_bytes > budget:
                break
            budget -= h.buffer_bytes
        engine = engine or default_engine()
        handle = engine.submit([(h.path, h.data_offset, h.data_bytes, buf.data_ptr() + h.shift)],
                               keepalive=buf) if h.data_bytes else None
        fresh[key] = (h, buf, handle)
    _drop_prefetched()
    with _prefetch_lock:
        _prefetched.update(fresh)


def _prefetch_enabled() -> bool:
    return os.environ.get("CHAINIO_HOOK_PREFETCH", "1").strip().lower() not in ("0", "false",
                                                                                 "no", "off")


def _take_prefetched(key: str):
    with _prefetch_lock:
        return _prefetched.pop(key, None)


def _drop_prefetched() -> None:
    with _prefetch_lock:
        stale = list(_prefetched.values())
        _prefetched.clear()
    for _, _, handle in stale:
        if handle is not None:
            try:
                handle.wait()  # the buffer must outlive its read
            except OSError:
                pass


_REPLACEMENTS = {
    ("transformers.modeling_utils", "_get_resolved_checkpoint_files"):
        _get_resolved_checkpoint_files,
    ("safetensors", "safe_open"): safe_open,
    ("safetensors.torch", "load_file"): load_file,
    ("safetensors.torch", "load"): load,
}
