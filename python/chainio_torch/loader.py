"""Safetensors loading through the ChainIO engine.

The C++ side parses and validates the header (``_C.read_safetensors_header``) and reads the data
region with io_uring straight into one 4 KiB-aligned buffer per file; tensors are views into that
buffer at their offsets. Torch objects are only ever made here, in Python: the extension does not
link libtorch.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from . import _C
from .errors import SafetensorError

PathLike = Union[str, os.PathLike]
_ALIGN = 4096
_STAGE_BYTES = 64 << 20

# safetensors dtype -> torch dtype attribute (F4 packs two values per byte, as torch does).
_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32",
    "F64": "float64", "I64": "int64", "U64": "uint64", "C64": "complex64",
    "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E8M0": "float8_e8m0fnu", "F4": "float4_e2m1fn_x2",
}


@dataclass
class TensorEntry:
    name: str
    dtype: str
    shape: List[int]
    begin: int
    end: int

    def whole_bytes(self) -> bool:
        """Whether every element fills whole bytes (not F4/F6), so rows can be cut by bytes."""
        return self.dtype not in ("F4", "F6_E2M3", "F6_E3M2")


@dataclass
class FileHeader:
    path: str
    data_offset: int
    data_bytes: int
    shift: int
    buffer_bytes: int
    tensors: Dict[str, TensorEntry]
    metadata: Optional[Dict[str, str]]
    stat: Tuple[int, int, int, int] = field(default=(0, 0, 0, 0))

    @property
    def file_bytes(self) -> int:
        return self.data_offset + self.data_bytes


def _identity(path: str) -> Tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_header(path: PathLike) -> FileHeader:
    """Parse and validate ``path``'s header (nothing of the data region is read)."""
    path = os.fspath(path)
    ident = _identity(path)  # FileNotFoundError / PermissionError carry the path
    try:
        h = _C.read_safetensors_header(path)
    except ValueError as e:
        raise SafetensorError(str(e)) from None
    tensors = {name: TensorEntry(name, dtype, list(shape), begin, end)
               for name, dtype, shape, begin, end in h["tensors"]}
    return FileHeader(path, h["data_offset"], h["data_bytes"], h["shift"], h["buffer_bytes"],
                      tensors, h["metadata"], ident)


def torch_dtype(entry: TensorEntry, path: str) -> torch.dtype:
    attr = _DTYPES.get(entry.dtype)
    dtype = getattr(torch, attr, None) if attr else None
    if dtype is None:
        raise SafetensorError(
            f"{path}: tensor '{entry.name}': dtype {entry.dtype} has no torch equivalent "
            f"in torch {torch.__version__}")
    return dtype


def _torch_shape(entry: TensorEntry, path: str) -> List[int]:
    if entry.dtype != "F4":
        return entry.shape
    if not entry.shape or entry.shape[-1] % 2:
        raise SafetensorError(f"{path}: tensor '{entry.name}': F4 needs an even last dimension "
                              f"to map to torch.float4_e2m1fn_x2, got shape {entry.shape}")
    return entry.shape[:-1] + [entry.shape[-1] // 2]


def _use_hugetlb() -> bool:
    return os.environ.get("CHAINIO_HUGETLB", "1") != "0"


def aligned_buffer(nbytes: int, device: Union[str, torch.device] = "cpu",
                   pin_memory: bool = False) -> torch.Tensor:
    """An uninitialized uint8 tensor of ``nbytes`` starting on a 4 KiB boundary.

    Its pages are not touched here: the read faults them in where the data lands. Plain CPU
    buffers are a ``_C.HostBuffer`` that the tensor owns (freed with its last view): pages of the
    hugetlb pool when ``vm.nr_hugepages`` leaves enough free ones (``CHAINIO_HUGETLB=0`` turns
    that off), else plain 4 KiB pages (THP advice measured no better here, see BENCHMARKS.md).
    On a VM the pool's pages stay backed by the host once touched, so a load pays the kernel's
    zeroing (~12 GB/s) instead of a host fault per 4 KiB page (~2 GB/s).
    """
    if torch.device(device).type == "cpu" and not pin_memory and nbytes > 0:
        return host_tensor(nbytes)[0]
    raw = torch.empty(nbytes + _ALIGN, dtype=torch.uint8, device=device, pin_memory=pin_memory)
    skip = -raw.data_ptr() % _ALIGN
    return raw[skip:skip + nbytes]


def host_tensor(nbytes: int) -> Tuple[torch.Tensor, str]:
    """A fresh uint8 CPU tensor of ``nbytes`` (> 0) owning a ``_C.HostBuffer``, and where its
    pages come from: ``"hugetlb"`` (the pool), ``"thp"`` or ``"4k"``."""
    hb = _C.HostBuffer(nbytes, hugetlb=_use_hugetlb())
    return torch.frombuffer(hb, dtype=torch.uint8), hb.backing


def host_memory_stats() -> Dict[str, int]:
    """Bytes and regions of ChainIO's host memory so far (loader buffers and engine pools), by
    page backing (hugetlb, thp, 4k), and how often the hugetlb pool was asked for and was short."""
    return dict(_C.host_memory_stats())


def hugetlb_free_pages() -> int:
    """Free 2 MiB pages in the hugetlb pool (HugePages_Free of /proc/meminfo; 0 if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("HugePages_Free:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_summary(before: Dict[str, int], after: Dict[str, int]) -> str:
    """One line on where the buffers allocated between two host_memory_stats() went."""
    d = {k: after[k] - before[k] for k in after}
    parts = []
    if d["hugetlb_regions"]:
        parts.append(f"{d['hugetlb_bytes'] / 1e9:.3f} GB in hugetlb pool pages")
    small = d["small_bytes"] + d["thp_bytes"]
    if small:
        parts.append(f"{small / 1e9:.3f} GB in 4 KiB pages")
    if d["hugetlb_refused"]:
        parts.append(f"the hugetlb pool had no room for {d['hugetlb_refused']} buffer(s) "
                     f"(vm.nr_hugepages)")
    return "memory: " + ("; ".join(parts) if parts else "no new buffers")


def view_tensor(buf: torch.Tensor, base: int, entry: TensorEntry, path: str) -> torch.Tensor:
    """The tensor ``entry`` over its bytes in ``buf`` (whose byte ``base`` is data offset 0),
    without a copy; a copy when its offset is not a multiple of the element size (never a
    misaligned view).

    On the CPU each tensor gets a storage of its own over just its bytes (as safetensors' own
    tensors have): ``torch.save`` then writes only those bytes, and a file's tensors of different
    dtypes do not share one storage, which ``torch.save`` refuses. The memory is still the one
    buffer, freed with the last tensor of the file."""
    dtype = torch_dtype(entry, path)
    shape = _torch_shape(entry, path)
    if entry.begin == entry.end:  # no bytes, no alignment to keep (torch's data_ptr() is 0)
        return torch.empty(shape, dtype=dtype, device=buf.device)
    flat = buf[base + entry.begin: base + entry.end]
    if flat.device.type == "cpu":
        flat = torch.frombuffer(flat.numpy(), dtype=torch.uint8)  # holds `flat`, hence `buf`
    if flat.data_ptr() % dtype.itemsize == 0:
        return flat.view(dtype).reshape(shape)
    out = torch.empty(shape, dtype=dtype, device=buf.device)
    out.reshape(-1).view(torch.uint8).copy_(flat)
    return out


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bit pattern (NaNs and float8 compare by their bits)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.detach().cpu().contiguous().reshape(-1).view(torch.uint8),
                       b.detach().cpu().contiguous().reshape(-1).view(torch.uint8))


def _check_unchanged(header: FileHeader, fd: Optional[int] = None) -> None:
    """Raises OSError(EIO) when the file (by path, or the open ``fd``) is not the one whose
    header was read."""
    if fd is None:
        now = _identity(header.path)
    else:
        st = os.fstat(fd)
        now = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if now != header.stat:
        raise OSError(5, f"{header.path}: file changed while loading (size {header.stat[2]} -> "
                         f"{now[2]}, or replaced/modified); the loaded bytes are discarded")


def _engine(engine):
    from . import default_engine

    return engine or default_engine()


def _cpu_buffers(headers: Sequence[FileHeader], engine) -> List[Tuple[torch.Tensor, object]]:
    """Allocates one aligned buffer per file and submits every data region at once."""
    out = []
    for h in headers:
        buf = aligned_buffer(h.buffer_bytes)
        handle = engine.submit([(h.path, h.data_offset, h.data_bytes, buf.data_ptr() + h.shift)],
                               keepalive=buf) if h.data_bytes else None
        out.append((buf, handle))
    return out


def _wait_all(headers: Sequence[FileHeader], pending, progress: bool, desc: str) -> None:
    handles = [h for _, h in pending if h is not None]
    if progress and handles:
        from tqdm import tqdm

        total = sum(h.bytes_total for h in handles)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar:
            done = 0
            while not all(h.done for h in handles):
                time.sleep(0.05)
                now = sum(h.bytes_done for h in handles)
                bar.update(now - done)
                done = now
            bar.update(sum(h.bytes_done for h in handles) - done)
    for h in handles:
        h.wait()
    for h in headers:
        _check_unchanged(h)


def _tensors(header: FileHeader, buf: torch.Tensor, base: int, out: Dict[str, torch.Tensor]) -> None:
    for name in sorted(header.tensors, key=lambda n: header.tensors[n].begin):
        out[name] = view_tensor(buf, base, header.tensors[name], header.path)


def _load_staged(header: FileHeader, device: torch.device, engine, pin: bool,
                 stage_bytes: int = _STAGE_BYTES) -> Dict[str, torch.Tensor]:
    """Reads the data region in chunks into two host staging buffers and copies each to
    ``device`` while the next chunk is read (for GPUs: pinned memory, async copies)."""
    dest = torch.empty(header.data_bytes, dtype=torch.uint8, device=device)
    stages = [aligned_buffer(stage_bytes + _ALIGN, pin_memory=pin) for _ in range(2)]
    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None
    copied = [None, None]  # per stage: event recorded after its last copy
    for i, off in enumerate(range(0, header.data_bytes, stage_bytes)):
        s = i % 2
        if copied[s] is not None:
            copied[s].synchronize()  # the stage is free again once its copy has finished
        n = min(stage_bytes, header.data_bytes - off)
        shift = (header.data_offset + off) % _ALIGN
        stage = stages[s]
        engine.read_into_address(header.path, stage.data_ptr() + shift, n, header.data_offset + off)
        if cuda:
            with torch.cuda.stream(stream):
                dest[off:off + n].copy_(stage[shift:shift + n], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(stream)
                copied[s] = ev
        else:
            dest[off:off + n].copy_(stage[shift:shift + n])
    if cuda:
        stream.synchronize()
    _check_unchanged(header)
    out: Dict[str, torch.Tensor] = {}
    _tensors(header, dest, 0, out)
    return out


def _resolve_device(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but torch sees no CUDA device")
    return dev


def load_file(path: PathLike, device: Union[str, torch.device] = "cpu",
              engine=None, *, peers: Optional[Sequence[str]] = None, token: Optional[str] = None,
              cache_dir: Optional[PathLike] = None, local_root: Optional[PathLike] = None,
              transport: str = "auto", timeout_ms: int = 5000,
              report: Optional[list] = None) -> Dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file, like ``safetensors.torch.load_file``.

    Same names, dtypes, shapes and bytes. The data region is read once, with io_uring, into one
    new aligned buffer; tensors are views of it (or copies, for a tensor whose offset is not a
    multiple of its element size). ``device="cuda"`` streams through pinned staging buffers.

    With ``peers=["ip:port", ...]`` the file comes from ChainIO seeders (``chainio seed``) and
    ``path`` is relative to their root; see ``load_checkpoint`` for ``token``, ``cache_dir``,
    ``local_root``, ``transport``, ``timeout_ms`` and ``report``.

    Raises ``SafetensorError`` (a ``ValueError``) for a malformed file, ``FileNotFoundError`` /
    ``PermissionError`` from open, and ``OSError`` if the file changes while it is read.
    """
    if peers is not None:
        if not os.fspath(path).endswith(".safetensors") and os.path.isdir(os.fspath(path)):
            raise ValueError(f"load_file takes a file, {path!r} is a directory")
        return _load_from_peers(path, device, engine, False, peers, token, cache_dir, local_root,
                                transport, timeout_ms, report)
    return _load_many([read_header(path)], device, engine, progress=False)


def _check_unique(headers: Sequence[FileHeader]) -> None:
    seen: Dict[str, str] = {}
    for h in headers:
        for name in h.tensors:
            if name in seen:
                raise SafetensorError(f"tensor '{name}' is in both {seen[name]} and {h.path}")
            seen[name] = h.path


def _load_many(headers: Sequence[FileHeader], device, engine, progress: bool) -> Dict[str, torch.Tensor]:
    dev = _resolve_device(device)
    engine = _engine(engine)
    _check_unique(headers)
    out: Dict[str, torch.Tensor] = {}
    if dev.type == "cpu":
        pending = _cpu_buffers(headers, engine)
        _wait_all(headers, pending, progress, "loading")
        for h, (buf, _) in zip(headers, pending):
            _tensors(h, buf, h.shift, out)
        return out
    if dev.type == "cuda":
        for h in headers:
            out.update(_load_staged(h, dev, engine, pin=True))
        return out
    cpu = _load_many(headers, "cpu", engine, progress)
    return {k: v.to(dev) for k, v in cpu.items()}


def checkpoint_files(path: PathLike) -> List[str]:
    """The safetensors files of a checkpoint: a file, a directory (its index's shards, or every
    ``*.safetensors`` in it), or a ``*.safetensors.index.json``."""
    return _resolve_checkpoint(path)[0]


def _resolve_checkpoint(path: PathLike) -> Tuple[List[str], Optional[str], Optional[Dict[str, str]]]:
    """(shard files, index path, index weight_map); the last two are None without an index."""
    path = os.fspath(path)
    if os.path.isdir(path):
        indexes = sorted(f for f in os.listdir(path) if f.endswith(".safetensors.index.json"))
        if indexes:
            return _resolve_checkpoint(os.path.join(path, indexes[0]))
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(2, f"no *.safetensors files in directory {path}")
        return files, None, None
    if not path.endswith(".json"):
        return [path], None, None
    with open(path, "rb") as f:
        try:
            index = json.loads(f.read().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise SafetensorError(f"{path}: index is not UTF-8 text: {e}") from None
        except json.JSONDecodeError as e:
            raise SafetensorError(f"{path}: index is not valid JSON: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise SafetensorError(f"{path}: index has no weight_map of tensor name -> file")
    if not weight_map:
        raise SafetensorError(f"{path}: index lists no tensors (empty weight_map)")
    root = os.path.dirname(path)
    shards = set()
    for shard in weight_map.values():
        if os.path.isabs(shard) or ".." in shard.split(os.sep):
            raise SafetensorError(f"{path}: shard path {shard!r} leaves the checkpoint directory")
        # One file however the index spells it ("./a.safetensors" and "a.safetensors").
        shards.add(os.path.normpath(os.path.join(root, shard)))
    return sorted(shards), path, weight_map


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu",
                    progress: bool = False, engine=None, *,
                    peers: Optional[Sequence[str]] = None, token: Optional[str] = None,
                    cache_dir: Optional[PathLike] = None, local_root: Optional[PathLike] = None,
                    transport: str = "auto", timeout_ms: int = 5000,
                    report: Optional[list] = None) -> Dict[str, torch.Tensor]:
    """Load a whole checkpoint (a file, a directory, or a sharded ``model.safetensors.index.json``)
    into one ``{name: tensor}`` dict. Every shard is read concurrently; ``progress=True`` shows a
    tqdm bar with the read rate. Tensor names must be unique across shards, and when an index is
    given every tensor it lists must be in the shard it names.

    From other machines: with ``peers=["ip:port", ...]`` (seeders started with ``chainio seed
    ROOT`` or ``chainio_torch.Seeder``), ``path`` is relative to the seeders' ROOT. Each file's
    bytes are striped across the seeders; one that fails or stays silent for ``timeout_ms`` hands
    its share to the others and, when none is left, to ``local_root/path`` if that exists.

    - ``token``: the seeders' shared token (default: ``CHAINIO_TOKEN``); a wrong one raises
      ``PermissionError``. A path leaving the seeders' root raises ``OSError`` (EXDEV).
    - ``cache_dir``: what arrives is also written to ``cache_dir/path`` (O_DIRECT, renamed into
      place when complete); a later call with the same ``cache_dir`` loads from there and does
      not contact the seeders. A ``Seeder`` on ``cache_dir`` relays the checkpoint further.
    - ``transport``: ``auto`` (AF_XDP when both sides can, else TCP), ``xdp`` or ``tcp``.
    - ``report``: a list; one dict per file is appended: ``path``, ``bytes``, ``seconds``,
      ``from_cache`` and ``sources`` (``name``, ``transport``, ``bytes``, ``error`` of each
      seeder, plus ``local:...`` when the local copy was used).
    """
    if peers is not None:
        return _load_from_peers(path, device, engine, progress, peers, token, cache_dir,
                                local_root, transport, timeout_ms, report)
    files, index_path, weight_map = _resolve_checkpoint(path)
    headers = [read_header(f) for f in files]
    if weight_map is not None:
        _check_index(index_path, weight_map, headers)
    return _load_many(headers, device, engine, progress)


def _check_index(index_path: str, weight_map: Dict[str, str], headers: Sequence[FileHeader]) -> None:
    root = os.path.dirname(index_path)
    by_file = {h.path: h for h in headers}
    for name, shard in weight_map.items():
        h = by_file.get(os.path.normpath(os.path.join(root, shard)))
        if h is None or name not in h.tensors:
            raise SafetensorError(f"{index_path}: tensor '{name}' is not in {shard}")


def _load_from_peers(path, device, engine, progress, peers, token, cache_dir, local_root,
                     transport, timeout_ms, report) -> Dict[str, torch.Tensor]:
    from . import peer

    name = peer.remote_name(path)
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
    cached = peer.cached_checkpoint(cache_dir, name)
    if cached is not None:
        t0 = time.perf_counter()
        out = load_checkpoint(cached, device, progress, engine)
        if report is not None:
            for f in checkpoint_files(cached):
                report.append({"path": os.path.relpath(f, cache_dir), "bytes": os.path.getsize(f),
                               "seconds": time.perf_counter() - t0, "sources": [],
                               "from_cache": True})
        return out
    dev = _resolve_device(device)
    engine = _engine(engine)
    remote = peer.Remote(peers, token, transport, timeout_ms, engine,
                         os.fspath(local_root) if local_root is not None else None)
    try:
        files, index_name, weight_map = remote.files(name)
        fetched = [remote.header(f) for f in files]
    except OSError as e:
        local = os.path.join(os.fspath(local_root), name) if local_root is not None else None
        if e.errno not in peer.UNREACHABLE or local is None or not os.path.exists(local):
            raise
        # No seeder answers at all: the local copy is the last resort for everything.
        t0 = time.perf_counter()
        out = load_checkpoint(local, device, progress, engine)
        if report is not None:
            for f in checkpoint_files(local):
                size = os.path.getsize(f)
                report.append({"path": os.path.relpath(f, os.fspath(local_root)), "bytes": size,
                               "seconds": time.perf_counter() - t0, "from_cache": False,
                               "sources": [{"name": "local:" + f, "transport": "local",
                                            "bytes": size, "error": ""}]})
        return out
    headers = [h for h, _ in fetched]
    if weight_map is not None:
        _check_index(index_name, weight_map, headers)
    _check_unique(headers)
    out: Dict[str, torch.Tensor] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(h.data_bytes for h in headers), unit="B", unit_scale=True,
                   unit_divisor=1024, desc="fetching")
    try:
        for h, prefix in fetched:
            buf = aligned_buffer(h.buffer_bytes)
            r = remote.fetch(h, buf)
            if cache_dir is not None:
                peer.write_cached(os.path.join(cache_dir, h.path), prefix, h, buf)
            if report is not None:
                report.append({"path": h.path, "bytes": r["bytes"], "seconds": r["seconds"],
                               "sources": r["sources"], "from_cache": False})
            if bar is not None:
                bar.update(h.data_bytes)
            _tensors(h, buf, h.shift, out)
    finally:
        if bar is not None:
            bar.close()
    if cache_dir is not None and index_name is not None:
        peer.copy_small(remote, cache_dir, index_name)
    if cache_dir is not None and not name.endswith(".safetensors"):
        directory = os.path.dirname(name) if name.endswith(".json") else name
        peer.mark_complete(cache_dir, directory, [os.path.relpath(f, directory) for f in files])
    if dev.type != "cpu":
        out = {k: v.to(dev) for k, v in out.items()}
    return out


class _Slice:
    """What ``safe_open.get_slice`` returns: shape and dtype without reading, ``[...]`` reads."""

    def __init__(self, handle: "safe_open", entry: TensorEntry):
        self._handle = handle
        self._entry = entry

    def get_shape(self) -> List[int]:
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        return self._entry.dtype

    def __getitem__(self, index) -> torch.Tensor:
        entry = self._entry
        if not isinstance(index, tuple):
            index = (index,)
        first, rest = (index[0], index[1:]) if index else (slice(None), ())
        rows = entry.shape[0] if entry.shape else None
        # Leading-dimension slices and integers read only the rows they need.
        # (A bool is an int to Python but a new dimension to torch: the full read handles it.)
        is_int = isinstance(first, int) and not isinstance(first, bool)
        if rows is not None and entry.whole_bytes() and (
                is_int or (isinstance(first, slice) and first.step in (None, 1))):
            if is_int:
                i = first + rows if first < 0 else first
                if not 0 <= i < rows:
                    raise IndexError(f"index {first} is out of bounds for dimension 0 with size {rows}")
                start, stop = i, i + 1
            else:
                start, stop, _ = first.indices(rows)
                stop = max(start, stop)
            row_bytes = (entry.end - entry.begin) // rows if rows else 0
            part = TensorEntry(entry.name, entry.dtype, [stop - start] + entry.shape[1:],
                               entry.begin + start * row_bytes, entry.begin + stop * row_bytes)
            t = self._handle._read(part)
            lead = 0 if isinstance(first, int) else slice(None)
            return t[(lead,) + rest]
        return self._handle._read(entry)[index]


class safe_open:  # noqa: N801 - mirrors safetensors.safe_open
    """Lazy access to one safetensors file, like ``safetensors.safe_open(path, framework="pt")``:
    the header is parsed on open, each ``get_tensor`` reads just that tensor.

    ``readahead`` (bytes, default 0 = off): when whole tensors are read in file order (each the
    next one by offset, or one that was read ahead), the tensors that follow, up to ``readahead``
    bytes, are submitted to the engine at once, each into its own buffer, so the disk sees a deep
    queue instead of one tensor at a time (what a loader that materializes tensor after tensor,
    like transformers' ``from_pretrained``, otherwise gets). Like the kernel's readahead for a
    mapped file, it may read tensors that are never asked for; the memory they hold is dropped
    on ``__exit__``. Row reads (``get_slice(name)[a:b]``) never start or use it.
    """

    def __init__(self, filename: PathLike, framework: str = "pt",
                 device: Union[str, torch.device] = "cpu", engine=None, readahead: int = 0):
        if framework not in ("pt", "torch"):
            raise ValueError(f"chainio_torch.safe_open serves framework='pt' only, got {framework!r}")
        if readahead < 0:
            raise ValueError(f"readahead must be >= 0 bytes, got {readahead}")
        self._fd = -1
        self._header = read_header(filename)
        # Reads go through a descriptor opened now, as safetensors maps the file at open: a
        # file renamed over, deleted or a changed working directory later do not matter.
        fd = os.open(self._header.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            os.set_blocking(fd, True)
            _check_unchanged(self._header, fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._device = _resolve_device(device)
        self._engine = _engine(engine)
        self._readahead = int(readahead)
        self._ra_lock = threading.Lock()
        self._pending: Dict[str, Tuple[torch.Tensor, object, int]] = {}  # name -> buf, handle, shift
        self._consumed: set = set()
        self._last = -1  # offset index of the last whole tensor asked for
        self._order: Optional[List[str]] = None  # offset order, made on first use
        self._index: Dict[str, int] = {}

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, *exc) -> None:
        self._drain()
        self._close_fd()
        return None

    def __del__(self):
        try:
            self._drain()
            self._close_fd()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass

    def _close_fd(self) -> None:
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def _source(self) -> int:
        """The file's descriptor; after ``__exit__`` the file is closed, as in safetensors."""
        if self._fd < 0:
            raise SafetensorError("File is closed")
        return self._fd

    def _drain(self) -> int:
        """Wait for the reads still in flight (their buffers must outlive them) and drop every
        tensor read ahead but never asked for; returns how many bytes those were."""
        lock = getattr(self, "_ra_lock", None)
        if lock is None:
            return 0
        with lock:
            pending, self._pending = self._pending, {}
        unused = 0
        for name, (_, handle, _) in pending.items():
            e = self._header.tensors[name]
            unused += e.end - e.begin
            if handle is not None:
                try:
                    handle.wait()
                except OSError:
                    pass  # nobody asked for that tensor: its read error does not matter
        return unused

    def keys(self) -> List[str]:
        return sorted(self._header.tensors)

    def offset_keys(self) -> List[str]:
        return sorted(self._header.tensors, key=lambda n: self._header.tensors[n].begin)

    def metadata(self) -> Optional[Dict[str, str]]:
        return None if self._header.metadata is None else dict(self._header.metadata)

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self._header.tensors[name]
        except KeyError:
            raise SafetensorError(f"File does not contain tensor {name}") from None

    def _read(self, entry: TensorEntry) -> torch.Tensor:
        h = self._header
        if self._readahead and h.tensors.get(entry.name) is entry:
            buf, handle, shift = self._whole(entry)
            if handle is not None:
                handle.wait()
        else:
            n = entry.end - entry.begin
            shift = (h.data_offset + entry.begin) % _ALIGN
            buf = aligned_buffer(shift + n)
            if n:
                try:
                    self._engine.read_into_address(self._source(), buf.data_ptr() + shift, n,
                                                   h.data_offset + entry.begin)
                except ValueError:  # e.g. an extent past the end: did the file change?
                    _check_unchanged(h, self._source())
                    raise
        _check_unchanged(h, self._source())
        t = view_tensor(buf, shift - entry.begin, entry, h.path)
        return t if self._device.type == "cpu" else t.to(self._device)

    def _submit(self, entry: TensorEntry) -> Tuple[torch.Tensor, object, int]:
        h = self._header
        n = entry.end - entry.begin
        shift = (h.data_offset + entry.begin) % _ALIGN
        buf = aligned_buffer(shift + n)
        handle = self._engine.submit([(self._source(), h.data_offset + entry.begin, n,
                                       buf.data_ptr() + shift)], keepalive=buf) if n else None
        return buf, handle, shift

    def _whole(self, entry: TensorEntry) -> Tuple[torch.Tensor, object, int]:
        """A whole tensor's read (already in flight if it was read ahead), and the readahead."""
        with self._ra_lock:
            if self._order is None:
                t = self._header.tensors
                self._order = sorted(t, key=lambda n: t[n].begin)
                self._index = {n: i for i, n in enumerate(self._order)}
            i = self._index[entry.name]
            got = self._pending.pop(entry.name, None)
            in_order = got is not None or i == self._last + 1
            self._last = i
            self._consumed.add(entry.name)
            if got is None:
                got = self._submit(entry)
            if in_order:
                budget = self._readahead
                for name in self._order[i + 1:]:
                    if name in self._consumed:
                        continue
                    e = self._header.tensors[name]
                    n = e.end - e.begin
                    if n > budget:
                        break
                    budget -= n
                    if name not in self._pending:
                        self._pending[name] = self._submit(e)
        return got

    def get_tensor(self, name: str) -> torch.Tensor:
        return self._read(self._entry(name))

    def get_slice(self, name: str) -> _Slice:
        return _Slice(self, self._entry(name))

    def get_tensors(self, names: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
        names = self.keys() if names is None else list(names)
        return {n: self.get_tensor(n) for n in names}
