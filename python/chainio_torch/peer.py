"""Loading checkpoints from other machines: ``Seeder`` serves a directory, and ``load_file`` /
``load_checkpoint`` with ``peers=[...]`` fetch from one or more seeders.

The byte moving is C++ (``chainio/peer.h``): each file's data region is cut into pieces that the
seeders' sessions take from a shared queue, so a faster seeder carries more of the file; a seeder
that fails or stalls for ``timeout_ms`` gives its unreceived pieces back to the others and, when
none is left, to a local copy (``local_root``). Every chunk's xxh3 digest is checked on arrival.
Here: the names, headers and indexes, the cache, and torch.
"""

from __future__ import annotations

import errno
import json
import os
import struct
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
               errno.ENETUNREACH)


def _token(token: Optional[str]) -> str:
    token = token if token is not None else os.environ.get("CHAINIO_TOKEN", "")
    if not token:
        raise ValueError("peer transfers need a shared token: pass token=... or set CHAINIO_TOKEN")
    return token


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
        self.fetcher = _C.PeerFetcher(list(peers), _token(token), transport=transport,
                                      timeout_ms=timeout_ms, engine=engine)
        self.engine = engine
        self.local_root = local_root

    def local(self, name: str) -> str:
        """The local copy of ``name`` for the last-resort fallback, or ""."""
        if not self.local_root:
            return ""
        p = os.path.join(self.local_root, name)
        return p if os.path.isfile(p) else ""

    def read_bytes(self, name: str, size: int, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        if length:
            addr = torch.frombuffer(buf, dtype=torch.uint8).data_ptr()
            self.fetcher.read(name, size, [(offset, length, addr)], local_path=self.local(name),
                              keepalive=buf)
        return buf

    def files(self, name: str) -> Tuple[List[str], Optional[str], Optional[Dict[str, str]]]:
        """Like loader._resolve_checkpoint, on the seeders' side: (shards, index, weight_map)."""
        if name.endswith(".json"):
            size, _ = self.fetcher.stat(name)
            raw = self.read_bytes(name, size, 0, size)
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
        listing = dict(self.fetcher.list(name))
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

        size, _ = self.fetcher.stat(name)
        prefix = self.read_bytes(name, size, 0, min(size, _PREFIX_BYTES))
        if len(prefix) >= 8:
            need = 8 + struct.unpack("<Q", prefix[:8])[0]
            if len(prefix) < need <= size:
                prefix = self.read_bytes(name, size, 0, need)
        try:
            h = _C.parse_safetensors_header(bytes(prefix), size, name)
        except ValueError as e:
            raise SafetensorError(str(e)) from None
        tensors = {n: TensorEntry(n, dtype, list(shape), begin, end)
                   for n, dtype, shape, begin, end in h["tensors"]}
        header = FileHeader(name, h["data_offset"], h["data_bytes"], h["shift"],
                            h["buffer_bytes"], tensors, h["metadata"])
        return header, bytes(prefix[:h["data_offset"]])

    def fetch(self, header, buf: torch.Tensor) -> dict:
        """Reads the data region of ``header`` into ``buf`` (at ``header.shift``)."""
        if not header.data_bytes:
            return {"sources": [], "bytes": 0, "seconds": 0.0}
        return self.fetcher.read(
            header.path, header.file_bytes,
            [(header.data_offset, header.data_bytes, buf.data_ptr() + header.shift)],
            local_path=self.local(header.path), keepalive=buf)


def write_cached(path: str, prefix: bytes, header, buf: torch.Tensor) -> None:
    """Writes a fetched file to ``path`` from the buffer it arrived in: the 4 KiB-aligned bulk
    with O_DIRECT straight from ``buf`` (no copy, no page cache), the unaligned head and tail
    buffered; then fsync and rename, so that the name only ever holds a complete file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.part-{os.getpid()}"
    shift, start = header.shift, header.data_offset - header.shift  # start is 4 KiB-aligned
    if shift:  # the header's last bytes go just before the data: one aligned region
        buf[:shift].copy_(torch.frombuffer(bytearray(prefix[start:]), dtype=torch.uint8))
    bulk = (shift + header.data_bytes) // _ALIGN * _ALIGN
    arr = buf.numpy()
    try:
        with open(tmp, "wb") as f:
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
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
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
    size, _ = remote.fetcher.stat(name)
    data = remote.read_bytes(name, size, 0, size)
    dest = os.path.join(cache_dir, name)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    tmp = f"{dest}.part-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)


def mark_complete(cache_dir: str, directory: str, files: List[str]) -> None:
    with open(os.path.join(cache_dir, directory, _DONE_MARK), "w") as f:
        json.dump({"files": files, "time": time.time()}, f)
