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


def test_dropping_a_handle_waits_for_its_read(data_file):
    # The handle holds the destinations (keepalive): dropped while the read runs, it must wait
    # for it instead of freeing memory the workers still write into.
    path, payload = data_file(32 << 20, seed=8)
    e = Engine(workers=1, queue_depth=1, io_bytes=256 << 10, pool_bytes=1 << 20)
    for _ in range(5):
        a = np.empty(32 << 20, dtype=np.uint8)
        before = e.stats()["bytes_read"]
        h = e.submit([(path, 0, 32 << 20, a.ctypes.data)], mode="direct", keepalive=a)
        del h, a  # the read had barely started (O_DIRECT, one 256 KiB read at a time)
        assert e.stats()["bytes_read"] - before == 32 << 20


def test_wait_timeouts_infinite_huge_and_nan(engine, data_file):
    path, payload = data_file(1 << 20, seed=9)
    a = chainio_torch.empty_aligned(1 << 20)
    h = engine.submit([(path, 0, 1 << 20, a.ctypes.data)], keepalive=a)
    with pytest.raises(ValueError, match="NaN"):
        h.wait(timeout=float("nan"))
    assert h.wait(timeout=float("inf")) == 1 << 20
    assert h.wait(timeout=1e10) == 1 << 20
    assert a.tobytes() == payload


def test_paths_with_a_null_byte_are_refused(engine, data_file):
    path, _ = data_file(100, seed=10)
    with pytest.raises(ValueError, match="null byte"):
        engine.read_into(path + "\0.bin", bytearray(10))
    with pytest.raises(ValueError, match="null byte"):
        chainio_torch._C.read_safetensors_header(path + "\0")


def test_fd_out_of_range_is_a_value_error(engine):
    for fd in (2**31, 2**63, -1):
        with pytest.raises(ValueError, match="file descriptor"):
            engine.read_into(fd, bytearray(10))


def test_engine_after_fork(data_file):
    # An engine's workers are threads of the process that made it: in a child an explicit
    # engine refuses (ChildProcessError), and the default engine is a new one there.
    path, payload = data_file(1 << 20, seed=11)
    e = Engine(workers=2)
    assert chainio_torch.read_into(path, bytearray(1 << 20)) == 1 << 20  # default engine made
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                e.read_into(path, bytearray(10))
            except ChildProcessError as err:
                assert "fork" in str(err)
                buf = bytearray(1 << 20)
                chainio_torch.read_into(path, buf)
                code = 0 if bytes(buf) == payload else 3
            else:
                code = 2
        finally:
            os.write(w, bytes([code]))
            os._exit(code)
    os.close(w)
    import select

    ready, _, _ = select.select([r], [], [], 30)
    got = os.read(r, 1) if ready else b""
    os.close(r)
    if not got:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    assert got == b"\0", (got, status)
    assert e.read_into(path, bytearray(10)) == 10  # the parent's engine still works


def test_session_buffers_must_be_contiguous():
    from chainio_torch import _C

    import threading

    listener = _C.NetListener("127.0.0.1", 0, transport="tcp", timeout_ms=5000)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("s", listener.accept(timeout_ms=5000)))
    t.start()
    c = _C.net_connect("127.0.0.1", listener.port, transport="tcp", timeout_ms=5000)
    t.join()
    s = box["s"]
    try:
        with pytest.raises(ValueError, match="C-contiguous"):
            c.send([np.arange(20, dtype=np.int32)[::2]])
        with pytest.raises(ValueError, match="C-contiguous"):
            s.recv_into([np.zeros(16, np.int32)[4:12][::-1]])
        # The session still works (send() returns once the peer confirmed: recv alongside).
        sender = threading.Thread(target=c.send, args=([np.arange(10, dtype=np.int32)],))
        sender.start()
        assert bytes(s.recv()[0]) == np.arange(10, dtype=np.int32).tobytes()
        sender.join()
    finally:
        c.close()
        s.close()
