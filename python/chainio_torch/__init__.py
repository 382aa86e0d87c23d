"""ChainIO for PyTorch: io_uring reads of model weights straight into tensor memory.

The compiled core lives in ``chainio_torch._C`` and never links libtorch: tensors are handed
over as raw addresses and sizes, so this package works with any torch build.
"""

from __future__ import annotations

import os
import threading
from typing import Optional, Union

from ._C import Engine, ReadHandle, __version__

__all__ = [
    "Engine", "ReadHandle", "SafetensorError", "__version__", "default_engine", "empty_aligned",
    "host_memory_stats", "load_checkpoint", "load_file", "read_into", "safe_open", "Seeder",
    "patch", "unpatch", "patched", "stats", "reset_stats",
]

_HOOK_NAMES = ("patch", "unpatch", "patched", "stats", "reset_stats")


def __getattr__(name):
    # The loaders import torch and errors imports safetensors: load them on first use so that
    # `import chainio_torch` stays cheap (the CHAINIO_AUTOPATCH hook imports it at start-up).
    if name in ("load_file", "load_checkpoint", "safe_open", "host_memory_stats"):
        from . import loader

        return getattr(loader, name)
    if name == "Seeder":
        from .peer import Seeder

        return Seeder
    if name == "SafetensorError":
        from .errors import SafetensorError

        return SafetensorError
    if name in _HOOK_NAMES:
        from . import hook

        return getattr(hook, name)
    raise AttributeError(f"module 'chainio_torch' has no attribute {name!r}")

PathOrFd = Union[str, os.PathLike, int]

_engine_lock = threading.Lock()
_default_engine: Optional[Engine] = None


def default_engine() -> Engine:
    """The process-wide engine, created on first use with default options (in a child after
    ``fork()``, a new one: an engine's worker threads stay in the process that made it)."""
    global _default_engine
    with _engine_lock:
        if _default_engine is None:
            _default_engine = Engine()
        return _default_engine


def _after_fork_in_child() -> None:
    global _default_engine, _engine_lock
    _engine_lock = threading.Lock()  # another thread may have held it at the fork
    _default_engine = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def empty_aligned(nbytes: int, alignment: int = 4096):
    """A zero-filled ``numpy.uint8`` array of ``nbytes`` whose data starts on ``alignment``.

    O_DIRECT reads land straight in memory only when it is aligned (512 B here); numpy and
    torch allocate large arrays 16 or 64 bytes past a page boundary, which makes every read
    bounce through the engine's pool. Zero-filling faults the pages in now rather than during
    the read. ``torch.from_numpy`` turns the result into a tensor sharing the memory.
    """
    import numpy as np

    if nbytes < 0 or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"bad size {nbytes} or alignment {alignment} (must be a power of two)")
    raw = np.zeros(nbytes + alignment, dtype=np.uint8)
    skip = -raw.ctypes.data % alignment
    return raw[skip:skip + nbytes]


def read_into(source: PathOrFd, dest, offset: int = 0, length: Optional[int] = None,
              mode: str = "auto", engine: Optional[Engine] = None) -> int:
    """Read bytes of ``source`` (a path or an fd) at ``offset`` into ``dest``.

    ``dest`` is a contiguous CPU ``torch.Tensor`` (its storage is written in place) or any
    writable buffer (``bytearray``, ``memoryview``, ``numpy.ndarray``). ``length`` defaults to
    the size of ``dest``. Returns the number of bytes read.

    Raises ``ValueError`` for bad arguments or a range past the end of the file, and the
    ``OSError`` subclass of the failure otherwise (``FileNotFoundError``, ``PermissionError``...).
    """
    engine = engine or default_engine()
    if _is_tensor(dest):
        if dest.device.type != "cpu":
            raise ValueError(f"read_into needs a CPU tensor, got one on {dest.device}")
        if not dest.is_contiguous():
            raise ValueError("read_into needs a contiguous tensor")
        capacity = dest.numel() * dest.element_size()
        n = capacity if length is None else length
        if n < 0 or n > capacity:
            raise ValueError(f"length {n} does not fit the tensor's {capacity} bytes")
        return engine.read_into_address(source, dest.data_ptr(), n, offset, mode)
    return engine.read_into(source, dest, offset, length, mode)


def _is_tensor(obj) -> bool:
    torch = _torch_if_loaded()
    return torch is not None and isinstance(obj, torch.Tensor)


def _torch_if_loaded():
    import sys

    return sys.modules.get("torch")
