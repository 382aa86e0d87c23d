"""The _C module seen from Python: real io_uring reads into Python-owned memory."""

import errno
import os

import numpy as np
import pytest

import chainio_torch
from chainio_torch import Engine

torch = pytest.importorskip("torch")

SIZES = [0, 1, 511, 4096, 4097, (3 << 20) + 3]


@pytest.fixture(scope="module")
def engine():
    return Engine(workers=2, pool_bytes=16 << 20, io_bytes=256 << 10)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["auto", "direct", "buffered"])
def test_bytearray_and_numpy(engine, data_file, size, mode):
    path, payload = data_file(size, seed=size)
    buf = bytearray(size)
    assert engine.read_into(path, buf, mode=mode) == size
    assert bytes(buf) == payload
    arr = chainio_torch.empty_aligned(size)
    assert engine.read_into(path, arr, mode=mode) == size
    assert arr.tobytes() == payload


def test_offset_length_and_misaligned_destination(engine, data_file):
    path, payload = data_file(1 << 20, seed=5)
    backing = np.zeros((1 << 20) + 7, dtype=np.uint8)
    dest = backing[7:]  # 7 bytes past an aligned start: forces the bounce path
    n = engine.read_into(path, dest, offset=12345, length=500000, mode="direct")
    assert n == 500000
    assert dest[:500000].tobytes() == payload[12345:12345 + 500000]
    assert not dest[500000:].any(), "bytes past `length` must stay untouched"
    assert backing[:7].sum() == 0


def test_torch_tensor_storage(data_file):
    path, payload = data_file((2 << 20) + 5, seed=9)
    t = torch.empty(len(payload), dtype=torch.uint8)
    assert chainio_torch.read_into(path, t) == len(payload)
    assert t.numpy().tobytes() == payload
    # A typed tensor: its storage receives the raw bytes.
    f = torch.zeros(1000, dtype=torch.float32)
    chainio_torch.read_into(path, f, offset=4096)
    assert f.numpy().tobytes() == payload[4096:4096 + 4000]
    # A tensor sharing memory with an aligned numpy array goes straight in with O_DIRECT.
    aligned = torch.from_numpy(chainio_torch.empty_aligned(len(payload) - 5))
    chainio_torch.read_into(path, aligned, mode="direct")
    assert aligned.numpy().tobytes() == payload[:-5]


def test_read_by_fd_and_pathlike(engine, data_file, tmp_path):
    import pathlib

    path, payload = data_file(10000, seed=3)
    buf = bytearray(10000)
    engine.read_into(pathlib.Path(path), buf)
    assert bytes(buf) == payload
    fd = os.open(path, os.O_RDONLY)
    try:
        buf2 = bytearray(5000)
        engine.read_into(fd, buf2, offset=5000)
        assert bytes(buf2) == payload[5000:]
    finally:
        os.close(fd)


def test_submit_and_wait(engine, data_file):
    path, payload = data_file(3 << 20, seed=4)
    a = chainio_torch.empty_aligned(1 << 20)
    b = chainio_torch.empty_aligned(2 << 20)
    h = engine.submit([(path, 0, 1 << 20, a.ctypes.data), (path, 1 << 20, 2 << 20, b.ctypes.data)],
                      keepalive=(a, b))
    assert h.bytes_total == 3 << 20
    assert h.wait(timeout=30) == 3 << 20
    assert h.done and h.bytes_done == 3 << 20
    assert a.tobytes() + b.tobytes() == payload


def test_missing_file_is_file_not_found(engine, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        engine.read_into(str(tmp_path / "missing.bin"), bytearray(10))
    assert info.value.errno == errno.ENOENT
    assert "missing.bin" in str(info.value)


def test_permission_error_as_other_user(data_file):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    import pwd
    import subprocess
    import sys

    path, _ = data_file(100, seed=1)
    os.chmod(path, 0o600)
    os.chmod(os.path.dirname(path), 0o755)
    nobody = pwd.getpwnam("nobody")
    code = (
        "import os, chainio_torch\n"
        f"os.setgid({nobody.pw_gid}); os.setuid({nobody.pw_uid})\n"
        "try:\n"
        f"    chainio_torch.Engine(workers=1).read_into({path!r}, bytearray(100))\n"
        "except PermissionError as e:\n"
        "    print('PermissionError', e.errno)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"PermissionError {errno.EACCES}", out.stderr


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda e, p: e.read_into(p, bytearray(10), offset=-1), "offset"),
        (lambda e, p: e.read_into(p, bytearray(10), length=11), "exceeds"),
        (lambda e, p: e.read_into(p, bytearray(200), offset=0), "past the end"),
        (lambda e, p: e.read_into(p, bytearray(10), mode="fast"), "mode"),
        (lambda e, p: e.read_into("", bytearray(10)), "empty path"),
        (lambda e, p: e.read_into(-3, bytearray(10)), "descriptor"),
        (lambda e, p: e.read_into_address(p, 0, 10), "address"),
        (lambda e, p: e.submit([(p, 0, 10)]), "extent"),
        (lambda e, p: e.read_into(p, np.zeros((4, 4))[:, 1]), "contiguous"),
    ],
)
def test_bad_arguments_raise_value_error(engine, data_file, call, message):
    path, _ = data_file(100, seed=2)
    with pytest.raises(ValueError, match=message):
        call(engine, path)


def test_read_only_destination_is_rejected(engine, data_file):
    path, _ = data_file(100, seed=2)
    with pytest.raises((BufferError, TypeError, ValueError)):
        engine.read_into(path, b"immutable bytes")


def test_bad_engine_options():
    with pytest.raises(ValueError):
        Engine(io_bytes=1000)
    with pytest.raises(ValueError):
        Engine(backend="spdk")


def test_tensor_checks():
    with pytest.raises(ValueError, match="contiguous"):
        chainio_torch.read_into("/dev/null", torch.zeros(4, 4).t())


def test_pread_backend_gives_identical_bytes(data_file):
    path, payload = data_file((1 << 20) + 77, seed=8)
    e = Engine(workers=2, backend="pread")
    assert e.info()["backend"] == "pread"
    buf = bytearray(len(payload))
    e.read_into(path, buf, mode="direct")
    assert bytes(buf) == payload


def test_info_and_stats(engine, data_file):
    path, payload = data_file(1 << 20, seed=6)
    info = engine.info()
    assert info["backend"] == "io_uring" and info["workers"] == 2
    before = engine.stats()
    engine.read_into(path, chainio_torch.empty_aligned(len(payload)), mode="direct")
    after = engine.stats()
    assert after["bytes_read"] - before["bytes_read"] == len(payload)
    assert after["direct_ops"] > before["direct_ops"]
    assert after["enter_calls"] > before["enter_calls"]


def test_empty_aligned():
    a = chainio_torch.empty_aligned(12345, alignment=4096)
    assert a.ctypes.data % 4096 == 0 and a.size == 12345 and not a.any()
    with pytest.raises(ValueError):
        chainio_torch.empty_aligned(10, alignment=3)
