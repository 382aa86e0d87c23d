"""Loading checkpoints from other machines: ``Seeder`` serves a directory, and ``load_file`` /
``load_checkpoint`` with ``peers=[...]`` fetch from one or more seeders.

The byte moving is C++ (``chainio/peer.h``): each file's data region is cut into pieces that the
seeders' sessions take from a shared queue, so a faster seeder carries more of the file; a seeder
that fails or stalls for ``timeout_ms`` gives its unreceived pieces back to the others and, when
none is left, to a local copy (``local_root``). Every chunk's xxh3 digest is checked on arrival.
Here: the names, headers and indexes, the cache, and torch.

One load reads one version of each file: the (size, mtime) the first seeder's stat reports. A
seeder holding another version (a different size or mtime) refuses its reads (ESTALE) and sits
the load out, and a local copy is used only when its size, mtime and header bytes are the same.
So seeders meant to share a load need identical copies with their mtimes kept (``cp -p``,
``rsync -a``, or a ChainIO ``cache_dir``, which keeps the seeder's mtime).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import _C
from .errors import SafetensorError

_PREFIX_BYTES = 64 << 10  # first read of a remote file: the header of most checkpoints
_DONE_MARK = ".chainio-fetched.json"  # a cached directory is complete when this is in it
_ALIGN = 4096
# Errors meaning "no seeder answered" (rather than "a seeder said no").
UNREACHABLE = (errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.ECONNRESET,
               errno.ENETUNREACH, errno.EPIPE, errno.ECONNABORTED, errno.EPROTO)


def _token(token: Optional[str]) -> str:
    token = token if token is not None else os.environ.get("CHAINIO_TOKEN", "")
    if not token:
        raise ValueError("peer transfers need a shared token: pass token=... or set CHAINIO_TOKEN")
    return token


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")


class Seeder:
    """Serves the regular files under ``root`` to fetchers presenting ``token`` (default: the
    ``CHAINIO_TOKEN`` environment variable) until ``stop()`` (or the end of a ``with`` block).

    Paths leaving ``root`` (``..``, absolute paths, symlinks pointing out) and special files are
    refused. At most ``max_sessions`` fetchers are served at once, each holding two chunks of
    ``chunk_bytes`` (and, on AF_XDP, its UMEM): that bounds the seeder's memory.
    """

    def __init__(self, root, token: Optional[str] = None, *, port: int = 0, ip: str = "0.0.0.0",
                 transport: str = "auto", ifname: str = "", timeout_ms: int = 5000,
                 max_sessions: int = 8, chunk_bytes: int = 8 << 20, idle_ms: int = 60000,
                 busy_poll: bool = False):
        root = os.fspath(root)
        _check_int("port", port, 0, 65535)
        _check_int("timeout_ms", timeout_ms, 1, 2**32 - 1)
        _check_int("idle_ms", idle_ms, 1, 2**32 - 1)
        _check_int("max_sessions", max_sessions, 1, 1024)
        _check_int("chunk_bytes", chunk_bytes, 4096, 256 << 20)
        if not os.path.isdir(root):
            raise NotADirectoryError(errno.ENOTDIR, f"seeder root {root!r} is not a directory")
        self.root = root
        self._s = _C.Seeder(root, _token(token), ip=ip, port=port, transport=transport,
                            ifname=ifname, timeout_ms=timeout_ms, max_sessions=max_sessions,
                            chunk_bytes=chunk_bytes, idle_ms=idle_ms, busy_poll=busy_poll)

    @property
    def port(self) -> int:
        return self._s.port

    def stats(self) -> Dict[str, int]:
        return self._s.stats()

    def stop(self) -> None:
        self._s.stop()

    def __enter__(self) -> "Seeder":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def remote_name(path) -> str:
    """The name a seeder resolves under its root: a relative path without ``..``."""
    name = os.path.normpath(os.fspath(path))
    if os.path.isabs(name) or name == ".." or name.startswith("../"):
        raise OSError(errno.EXDEV, f"{path!r} leaves the seeders' root (with peers, paths are "
                                   f"relative to it)")
    return name


class Remote:
    """The seeders of one load: headers, indexes and data regions of remote files."""

    def __init__(self, peers: Sequence[str], token: Optional[str], transport: str,
                 timeout_ms: int, engine, local_root: Optional[str]):
        if isinstance(peers, str):
            peers = [peers]
        _check_int("timeout_ms", timeout_ms, 1, 2**32 - 1)
        if local_root is not None and not os.path.isdir(local_root):
            raise NotADirectoryError(errno.ENOTDIR, f"local_root {local_root!r} is not a directory")
        self.fetcher = _C.PeerFetcher(list(peers), _token(token), transport=transport,
                                      timeout_ms=timeout_ms, engine=engine)
        self.engine = engine
        self.local_root = local_root
        self._versions: Dict[str, Tuple[int, int]] = {}  # name -> (size, mtime_ns) of this load
        self._heads: Dict[str, bytes] = {}  # name -> its header bytes, as the seeders sent them
        self.local_refused: Dict[str, str] = {}  # name -> why its local copy is not used

    def version(self, name: str) -> Tuple[int, int]:
        """(size, mtime_ns) of ``name`` for this whole load: the first stat's answer."""
        if name not in self._versions:
            self._versions[name] = tuple(self.fetcher.stat(name))
        return self._versions[name]

    def local(self, name: str) -> str:
        """The local copy of ``name`` for the last-resort fallback, or "" (none, or one that is
        not the version being loaded: its bytes must not be mixed with the seeders')."""
        if not self.local_root:
            return ""
        p = os.path.join(self.local_root, name)
        if not os.path.isfile(p):
            return ""
        size, mtime = self.version(name)
        st = os.stat(p)
        head = self._heads.get(name, b"")
        why = ""
        if st.st_size != size:
            why = f"it is {st.st_size} bytes, the seeders' {size}"
        elif mtime and st.st_mtime_ns != mtime:
            why = f"its mtime_ns is {st.st_mtime_ns}, the seeders' {mtime} (copy with cp -p or rsync -a)"
        elif head:
            with open(p, "rb") as f:
                if f.read(len(head)) != head:
                    why = "its header differs from the seeders'"
        if why:
            self.local_refused[name] = f"local copy {p} not used: {why}"
            return ""
        return p

    def read(self, name: str, extents, keepalive) -> dict:
        """fetcher.read of this load's version of ``name``; a failure names a local copy that
        was refused."""
        size, mtime = self.version(name)
        local = self.local(name)
        try:
            return self.fetcher.read(name, size, extents, local_path=local, keepalive=keepalive,
                                     mtime_ns=mtime)
        except OSError as e:
            why = self.local_refused.get(name)
            if why:
                raise OSError(e.errno, f"{e.strerror}; {why}") from None
            raise

    def read_bytes(self, name: str, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        if length:
            addr = torch.frombuffer(buf, dtype=torch.uint8).data_ptr()
            self.read(name, [(offset, length, addr)], buf)
        return buf

    def files(self, name: str) -> Tuple[List[str], Optional[str], Optional[Dict[str, str]]]:
        """Like loader._resolve_checkpoint, on the seeders' side: (shards, index, weight_map)."""
        if name.endswith(".json"):
            size, _ = self.version(name)
            raw = self.read_bytes(name, 0, size)
            try:
                index = json.loads(raw)
            except ValueError as e:
                raise SafetensorError(f"{name}: index is not valid JSON: {e}") from None
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str)
                                                           for v in weight_map.values()):
                raise SafetensorError(f"{name}: index has no weight_map of tensor name -> file")
            root = os.path.dirname(name)
            shards = sorted({os.path.join(root, remote_name(s)) for s in weight_map.values()})
            return shards, name, weight_map
        if name.endswith(".safetensors"):
            return [name], None, None
        try:
            listing = dict(self.fetcher.list(name))
        except NotADirectoryError:  # a file whatever its name ends with, as load_file takes
            return [name], None, None
        for f in listing:  # names of files directly in `name`, nothing else
            if not f or "/" in f or "\0" in f or f in (".", ".."):
                raise OSError(errno.EPROTO, f"a seeder listed {f!r} in {name}: not a file name")
        indexes = sorted(f for f in listing if f.endswith(".safetensors.index.json"))
        if indexes:
            return self.files(os.path.join(name, indexes[0]))
        shards = sorted(os.path.join(name, f) for f in listing if f.endswith(".safetensors"))
        if not shards:
            raise FileNotFoundError(errno.ENOENT, f"no *.safetensors files in {name} on the seeders")
        return shards, None, None

    def header(self, name: str):
        """(FileHeader, the file's first data_offset bytes) of a remote safetensors file."""
        from .loader import FileHeader, TensorEntry

        size, mtime = self.version(name)
        prefix = self.read_bytes(name, 0, min(size, _PREFIX_BYTES))
        if len(prefix) >= 8:
            need = 8 + struct.unpack("<Q", prefix[:8])[0]
            if len(prefix) < need <= size:
                prefix = self.read_bytes(name, 0, need)
        try:
            h = _C.parse_safetensors_header(bytes(prefix), size, name)
        except ValueError as e:
            raise SafetensorError(str(e)) from None
        tensors = {n: TensorEntry(n, dtype, list(shape), begin, end)
                   for n, dtype, shape, begin, end in h["tensors"]}
        header = FileHeader(name, h["data_offset"], h["data_bytes"], h["shift"],
                            h["buffer_bytes"], tensors, h["metadata"], (0, 0, size, mtime))
        self._heads[name] = bytes(prefix[:h["data_offset"]])
        return header, self._heads[name]

    def fetch(self, header, buf: torch.Tensor) -> dict:
        """Reads the data region of ``header`` into ``buf`` (at ``header.shift``)."""
        if not header.data_bytes:
            return {"sources": [], "bytes": 0, "seconds": 0.0}
        return self.read(header.path,
                         [(header.data_offset, header.data_bytes, buf.data_ptr() + header.shift)],
                         buf)


@contextlib.contextmanager
def _written_atomically(path: str):
    """A temporary name next to ``path``, private to this process and thread, to write to:
    renamed to ``path`` when the block ends, removed when it raises. The name only ever holds a
    complete file."""
    tmp = f"{path}.part-{os.getpid()}-{threading.get_ident()}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _keep_mtime(path: str, mtime_ns: int) -> None:
    """Gives a cached file the seeder's mtime: the cache can then seed the same version."""
    if mtime_ns:
        os.utime(path, ns=(time.time_ns(), mtime_ns))


def write_cached(path: str, prefix: bytes, header, buf: torch.Tensor) -> None:
    """Writes a fetched file to ``path`` from the buffer it arrived in: the 4 KiB-aligned bulk
    with O_DIRECT straight from ``buf`` (no copy, no page cache), the unaligned head and tail
    buffered; then fsync and rename, so that the name only ever holds a complete file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    shift, start = header.shift, header.data_offset - header.shift  # start is 4 KiB-aligned
    if shift:  # the header's last bytes go just before the data: one aligned region
        buf[:shift].copy_(torch.frombuffer(bytearray(prefix[start:]), dtype=torch.uint8))
    bulk = (shift + header.data_bytes) // _ALIGN * _ALIGN
    arr = buf.numpy()
    try:
        with _written_atomically(path) as tmp, open(tmp, "wb") as f:
            f.write(prefix[:start])
            f.flush()
            if bulk:
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_DIRECT)
                except OSError:  # tmpfs and some others refuse O_DIRECT
                    fd = os.open(tmp, os.O_WRONLY)
                try:
                    view = memoryview(arr[:bulk])
                    done = 0
                    while done < bulk:
                        done += os.pwrite(fd, view[done:], start + done)
                finally:
                    os.close(fd)
            f.seek(start + bulk)
            f.write(memoryview(arr[bulk:shift + header.data_bytes]))
            f.flush()
            os.fsync(f.fileno())
            _keep_mtime(tmp, header.stat[3])
    except OSError as e:
        if e.filename is None:  # ENOSPC & co. name no file
            raise OSError(e.errno, f"caching {path}: {e.strerror}") from None
        raise


def cached_checkpoint(cache_dir: Optional[str], name: str) -> Optional[str]:
    """The complete cached copy of ``name`` (a file, or a directory with its done mark)."""
    if not cache_dir:
        return None
    p = os.path.join(cache_dir, name)
    if os.path.isfile(p) and not name.endswith(".json"):
        return p
    if os.path.isfile(p):  # an index: complete when its directory is
        return p if os.path.isfile(os.path.join(os.path.dirname(p), _DONE_MARK)) else None
    if os.path.isdir(p) and os.path.isfile(os.path.join(p, _DONE_MARK)):
        return p
    return None


def copy_small(remote: Remote, cache_dir: str, name: str) -> None:
    """Caches a small file (an index) as it is."""
    size, mtime = remote.version(name)
    data = remote.read_bytes(name, 0, size)
    dest = os.path.join(cache_dir, name)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    with _written_atomically(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
        _keep_mtime(tmp, mtime)


def mark_complete(cache_dir: str, directory: str, files: List[str]) -> None:
    with open(os.path.join(cache_dir, directory, _DONE_MARK), "w") as f:
        json.dump({"files": files, "time": time.time()}, f)
