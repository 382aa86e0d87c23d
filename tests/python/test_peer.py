"""Loading from seeders on loopback (TCP): load_file / load_checkpoint(peers=...), cache_dir,
relaying, errors, and the `chainio seed` / `chainio load --peer` commands. tests/net runs the
same between network namespaces over AF_XDP, with peers killed and frames corrupted."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")

import chainio_torch  # noqa: E402
from chainio_torch import SafetensorError  # noqa: E402
from chainio_torch.loader import same_bytes  # noqa: E402

TOKEN = "pytest-token"


@pytest.fixture
def root(tmp_path_factory):
    """A seeder root on a real disk with a 3-shard checkpoint `ck` (index included) and a
    single file `one.safetensors`; returns (root, reference tensors of ck)."""
    base = os.environ.get("CHAINIO_TEST_DIR", "/var/tmp")
    d = os.path.join(base, f"chainio-peer-{os.getpid()}-{len(os.listdir(base))}")
    os.makedirs(os.path.join(d, "ck"))
    gen = torch.Generator().manual_seed(3)
    ref, weight_map = {}, {}
    for i in range(3):
        shard = {f"layers.{i}.w": torch.randn(700, 1031, generator=gen).to(torch.bfloat16),
                 f"layers.{i}.b": torch.randn(13, generator=gen),
                 f"layers.{i}.step": torch.tensor(i, dtype=torch.int64),
                 f"layers.{i}.empty": torch.empty(0, 5)}
        name = f"model-{i + 1:05d}-of-00003.safetensors"
        st.save_file(shard, os.path.join(d, "ck", name), metadata={"format": "pt"})
        ref.update(shard)
        weight_map.update({k: name for k in shard})
    with open(os.path.join(d, "ck", "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    st.save_file({"x": torch.arange(10_000_000, dtype=torch.int32)}, os.path.join(d, "one.safetensors"))
    yield d, ref
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def seeder(root):
    with chainio_torch.Seeder(root[0], TOKEN, ip="127.0.0.1", transport="tcp",
                              chunk_bytes=1 << 20) as s:
        yield s


def peers(*seeders):
    return [f"127.0.0.1:{s.port}" for s in seeders]


def assert_same(got, ref):
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
        assert same_bytes(got[k], v), k


@pytest.mark.parametrize("path", ["ck", "ck/model.safetensors.index.json"])
def test_checkpoint_from_a_seeder_is_bit_identical(root, seeder, path):
    report = []
    got = chainio_torch.load_checkpoint(path, peers=peers(seeder), token=TOKEN, transport="tcp",
                                        report=report)
    assert_same(got, root[1])
    assert [r["path"] for r in report] == [f"ck/model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]
    for r in report:
        assert not r["from_cache"]
        assert r["sources"][0]["transport"] == "tcp"
        assert r["sources"][0]["bytes"] == r["bytes"] > 0
    assert seeder.stats()["bytes_served"] >= sum(r["bytes"] for r in report)
    got[next(iter(got))].view(-1).view(torch.uint8)[0] ^= 1  # tensors own writable memory


def test_load_file_matches_safetensors(root, seeder):
    # A host name works as well as an address.
    got = chainio_torch.load_file("one.safetensors", peers=[f"localhost:{seeder.port}"],
                                  token=TOKEN)
    assert_same(got, st.load_file(os.path.join(root[0], "one.safetensors")))


def test_token_from_environment_and_wrong_token(root, seeder, monkeypatch):
    monkeypatch.setenv("CHAINIO_TOKEN", TOKEN)
    assert chainio_torch.load_file("one.safetensors", peers=peers(seeder))["x"][-1] == 9_999_999
    with pytest.raises(PermissionError, match="token"):
        chainio_torch.load_file("one.safetensors", peers=peers(seeder), token="nope")
    monkeypatch.delenv("CHAINIO_TOKEN")
    with pytest.raises(ValueError, match="token"):
        chainio_torch.load_file("one.safetensors", peers=peers(seeder))


def test_refusals_are_clear(root, seeder, tmp_path):
    outside = tmp_path / "secret.safetensors"
    st.save_file({"s": torch.zeros(3)}, str(outside))
    os.symlink(outside, os.path.join(root[0], "link.safetensors"))
    kw = dict(peers=peers(seeder), token=TOKEN)
    for bad in ("../secret.safetensors", str(outside), "link.safetensors"):
        with pytest.raises(OSError, match="leaves the") as e:
            chainio_torch.load_file(bad, **kw)
        assert e.value.errno == 18  # EXDEV
    with pytest.raises(FileNotFoundError, match="none.safetensors"):
        chainio_torch.load_file("none.safetensors", **kw)
    # A listing shows regular files only: the symlink out of the root is not offered.
    assert sorted(chainio_torch.load_checkpoint(".", **kw)) == ["x"]
    # A Hugging Face cache snapshot: every shard a symlink into ../../blobs, inside the root.
    snap, blobs = os.path.join(root[0], "hf", "snapshots", "abc"), os.path.join(root[0], "hf", "blobs")
    os.makedirs(snap)
    os.makedirs(blobs)
    for f in os.listdir(os.path.join(root[0], "ck")):
        os.rename(os.path.join(root[0], "ck", f), os.path.join(blobs, f))
        os.symlink(os.path.join("..", "..", "blobs", f), os.path.join(snap, f))
    assert_same(chainio_torch.load_checkpoint("hf/snapshots/abc", **kw), root[1])
    os.makedirs(os.path.join(root[0], "emptydir"))
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        chainio_torch.load_checkpoint("emptydir", **kw)


def test_malformed_remote_header_is_a_safetensor_error(root, seeder):
    with open(os.path.join(root[0], "bad.safetensors"), "wb") as f:
        f.write((100).to_bytes(8, "little") + b'{"a": {"dtype": "F32", "shape": [4], "data_'
                b'offsets": [0, 8]}}' + b" " * 50 + b"\0" * 8)
    with pytest.raises(SafetensorError, match="bad.safetensors"):
        chainio_torch.load_file("bad.safetensors", peers=peers(seeder), token=TOKEN)


def test_cache_dir_then_relay_then_local_fallback(root, seeder, tmp_path):
    cache = str(tmp_path / "cache")
    report = []
    chainio_torch.load_checkpoint("ck", peers=peers(seeder), token=TOKEN, cache_dir=cache,
                                  report=report)
    for f in os.listdir(os.path.join(root[0], "ck")):
        with open(os.path.join(root[0], "ck", f), "rb") as a, open(os.path.join(cache, "ck", f), "rb") as b:
            assert a.read() == b.read(), f
    assert not [f for f in os.listdir(os.path.join(cache, "ck")) if ".part" in f]
    # Second start: from the cache, without a request to the seeder.
    before = seeder.stats()["requests"]
    report = []
    assert_same(chainio_torch.load_checkpoint("ck", peers=peers(seeder), token=TOKEN,
                                              cache_dir=cache, report=report), root[1])
    assert report and all(r["from_cache"] for r in report)
    assert seeder.stats()["requests"] == before
    # The cache relays: a fetcher given both seeders gets bytes from both.
    with chainio_torch.Seeder(cache, TOKEN, ip="127.0.0.1", transport="tcp") as relay:
        report = []
        got = chainio_torch.load_checkpoint("ck", peers=peers(seeder, relay), token=TOKEN,
                                            report=report)
        assert_same(got, root[1])
        by_source = {}
        for r in report:
            for src in r["sources"]:
                by_source[src["name"]] = by_source.get(src["name"], 0) + src["bytes"]
        assert all(v > 0 for v in by_source.values()) and len(by_source) == 2, by_source
        assert relay.stats()["bytes_served"] > 0
    # Every seeder gone: the local copy (local_root) is the last resort; without one, an error.
    seeder.stop()
    report = []
    got = chainio_torch.load_checkpoint("ck", peers=peers(seeder), token=TOKEN, timeout_ms=500,
                                        local_root=cache, report=report)
    assert_same(got, root[1])
    assert [s["transport"] for r in report for s in r["sources"]] == ["local"] * 3
    with pytest.raises(ConnectionRefusedError, match="127.0.0.1"):
        chainio_torch.load_file("one.safetensors", peers=peers(seeder), token=TOKEN, timeout_ms=500)


def test_seed_and_load_commands(root, tmp_path):
    env = dict(os.environ, CHAINIO_TOKEN=TOKEN)
    seed = subprocess.Popen([sys.executable, "-m", "chainio_torch", "seed", root[0], "--ip",
                             "127.0.0.1", "--port", "0", "--transport", "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = seed.stdout.readline()
        assert line.startswith("chainio seed: serving"), line + seed.stderr.read()
        port = int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1])
        out = subprocess.run([sys.executable, "-m", "chainio_torch", "load", "ck", "--peer",
                              f"127.0.0.1:{port}", "--transport", "tcp", "--cache-dir",
                              str(tmp_path / "c")], capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert "12 tensors from 3 file(s)" in out.stdout, out.stdout
        assert f"127.0.0.1:{port} (tcp)" in out.stdout, out.stdout
        bad = subprocess.run([sys.executable, "-m", "chainio_torch", "load", "../x", "--peer",
                              f"127.0.0.1:{port}"], capture_output=True, text=True, env=env,
                             timeout=60)
        assert bad.returncode == 2 and "leaves the seeders' root" in bad.stderr, bad.stderr
    finally:
        seed.send_signal(signal.SIGTERM)
        rest, err = seed.communicate(timeout=20)
    assert seed.returncode == 0, err
    assert "chainio seed: stopped" in rest and '"bytes_served"' in rest, rest


def _other_version(root_dir, name, mtime_shift_s=100):
    """A second seeder root holding another version of ``name``: the same size and header,
    different bytes after the first MiB, another mtime."""
    other = root_dir + "-other"
    os.makedirs(os.path.dirname(os.path.join(other, name)), exist_ok=True)
    src, dst = os.path.join(root_dir, name), os.path.join(other, name)
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(1 << 20)
        tail = f.read()
        f.seek(1 << 20)
        f.write(bytes(b ^ 0xFF for b in tail[:4096]) + tail[4096:])
    t = os.stat(src).st_mtime_ns + mtime_shift_s * 10**9
    os.utime(dst, ns=(t, t))
    return other


def test_seeders_holding_another_version_sit_the_load_out(root, seeder):
    # Same size and header, other bytes: striping across both would mix the two versions with
    # every digest passing. The second seeder refuses (ESTALE) and the first delivers it all.
    other = _other_version(root[0], "one.safetensors")
    try:
        with chainio_torch.Seeder(other, TOKEN, ip="127.0.0.1", transport="tcp",
                                  chunk_bytes=1 << 20) as stale:
            report = []
            got = chainio_torch.load_file("one.safetensors", peers=peers(seeder, stale),
                                          token=TOKEN, report=report)
            assert_same(got, st.load_file(os.path.join(root[0], "one.safetensors")))
            sources = {s["name"]: s for s in report[0]["sources"]}
            assert sources[peers(stale)[0]]["bytes"] == 0
            assert "mtime_ns" in sources[peers(stale)[0]]["error"], sources
            assert sources[peers(seeder)[0]]["bytes"] == report[0]["bytes"]
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_local_copy_of_another_version_is_not_mixed_in(root, tmp_path):
    # The seeder stops answering after the header: the rest would come from the local copy,
    # which is another version, so the load fails and says why instead of mixing the two.
    other = _other_version(root[0], "one.safetensors")
    try:
        s = chainio_torch.Seeder(root[0], TOKEN, ip="127.0.0.1", transport="tcp", chunk_bytes=1 << 20)
        from chainio_torch import peer

        remote = peer.Remote(peers(s), TOKEN, "tcp", 2000, None, other)
        header, _ = remote.header("one.safetensors")
        s.stop()
        buf = torch.empty(header.buffer_bytes, dtype=torch.uint8)
        with pytest.raises(OSError, match="local copy .* not used: its mtime_ns"):
            remote.fetch(header, buf)
        # The same bytes with the seeder's mtime are the same version: used.
        t = os.stat(os.path.join(root[0], "one.safetensors")).st_mtime_ns
        shutil.copyfile(os.path.join(root[0], "one.safetensors"), os.path.join(other, "one.safetensors"))
        os.utime(os.path.join(other, "one.safetensors"), ns=(t, t))
        r = remote.fetch(header, buf)
        assert r["sources"][-1]["name"].startswith("local:")
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_a_peer_that_hangs_up_falls_back_to_the_local_copy(root, tmp_path):
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()

    def hang_up():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                srv.accept()[0].close()
            except OSError:
                pass

    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    try:
        got = chainio_torch.load_file("one.safetensors", peers=[f"127.0.0.1:{srv.getsockname()[1]}"],
                                      token=TOKEN, local_root=root[0], timeout_ms=2000)
        assert_same(got, st.load_file(os.path.join(root[0], "one.safetensors")))
    finally:
        stop.set()
        t.join()
        srv.close()


def test_load_file_from_peers_takes_any_file_name(root, seeder):
    shutil.copyfile(os.path.join(root[0], "one.safetensors"), os.path.join(root[0], "one.bin"))
    got = chainio_torch.load_file("one.bin", peers=peers(seeder), token=TOKEN)
    assert_same(got, st.load_file(os.path.join(root[0], "one.safetensors")))


def test_cache_keeps_the_seeders_mtime_and_threads_share_a_cache_dir(root, seeder, tmp_path):
    import concurrent.futures

    cache = str(tmp_path / "cache")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        runs = [pool.submit(chainio_torch.load_checkpoint, "ck", peers=peers(seeder), token=TOKEN,
                            cache_dir=cache) for _ in range(3)]
        for r in runs:
            assert_same(r.result(), root[1])
    for f in os.listdir(os.path.join(root[0], "ck")):
        assert (os.stat(os.path.join(cache, "ck", f)).st_mtime_ns ==
                os.stat(os.path.join(root[0], "ck", f)).st_mtime_ns), f
    assert not [f for f in os.listdir(os.path.join(cache, "ck")) if ".part-" in f]


@pytest.mark.parametrize("kwargs", [{"port": -1}, {"port": 70000}, {"timeout_ms": 0},
                                    {"idle_ms": 0}, {"max_sessions": -3}, {"chunk_bytes": 5000},
                                    {"ifname": "nosuch0"}])
def test_seeder_settings_that_cannot_work_are_refused_at_start(root, kwargs):
    with pytest.raises((ValueError, OSError)) as info:
        chainio_torch.Seeder(root[0], TOKEN, ip="127.0.0.1", transport="tcp", **kwargs)
    key = next(iter(kwargs))
    assert key in str(info.value) or "nosuch0" in str(info.value), str(info.value)


def test_fetch_settings_that_cannot_work_are_refused(root, seeder):
    with pytest.raises(ValueError, match="timeout_ms"):
        chainio_torch.load_file("one.safetensors", peers=peers(seeder), token=TOKEN, timeout_ms=0)
    with pytest.raises(NotADirectoryError, match="local_root"):
        chainio_torch.load_file("one.safetensors", peers=peers(seeder), token=TOKEN,
                                local_root=os.path.join(root[0], "no-such-dir"))


@pytest.mark.parametrize("argv, message", [
    (["seed", "{root}", "--port", "70000"], "outside 0..65535"),
    (["seed", "{root}", "--max-sessions", "-3"], "outside 1..1024"),
    (["seed", "{root}", "--stats-every", "nan"], "not a number of seconds"),
    (["load", "x", "--peer", "127.0.0.1:1", "--timeout-ms", "-5"], "outside 1.."),
    (["load", "x", "--peer", "127.0.0.1:1", "--compare"], "do not go with --peer"),
    (["doctor", "{root}/no-such-checkpoint"], "chainio doctor:"),
])
def test_cli_bad_arguments_are_one_line_errors(root, argv, message):
    argv = [a.format(root=root[0]) for a in argv]
    out = subprocess.run([sys.executable, "-m", "chainio_torch", *argv], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "CHAINIO_TOKEN": TOKEN})
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_ctrl_c_ends_a_fetch_stalled_on_a_seeder(root, tmp_path):
    # The seeder (its own process) is stopped with SIGSTOP once the fetcher has the header; the
    # fetch then waits on it (timeout 30 s) until SIGINT, which must end it at once.
    seeder = subprocess.Popen(
        [sys.executable, "-c", f"""
import sys, time, chainio_torch
s = chainio_torch.Seeder({root[0]!r}, {TOKEN!r}, ip="127.0.0.1", transport="tcp")
print(s.port, flush=True)
time.sleep(120)
"""], stdout=subprocess.PIPE, text=True)
    fetcher = None
    try:
        port = int(seeder.stdout.readline())
        fetcher = subprocess.Popen([sys.executable, "-c", f"""
import sys, time, torch
from chainio_torch import peer
remote = peer.Remote(["127.0.0.1:{port}"], {TOKEN!r}, "tcp", 30000, None, None)
header, _ = remote.header("one.safetensors")
buf = torch.empty(header.buffer_bytes, dtype=torch.uint8)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
try:
    remote.fetch(header, buf)
    print("finished")
except KeyboardInterrupt:
    print(f"interrupted after {{time.monotonic() - t0:.2f}} s", flush=True)
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert fetcher.stdout.readline().strip() == "ready"
        os.kill(seeder.pid, signal.SIGSTOP)
        fetcher.stdin.write("go\n")
        fetcher.stdin.flush()
        import time

        time.sleep(0.5)
        fetcher.send_signal(signal.SIGINT)
        out, _ = fetcher.communicate(timeout=20)
        assert out.startswith("interrupted after"), out
        assert float(out.split()[2]) < 3.0, out
    finally:
        for p in (fetcher, seeder):
            if p is not None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.kill()
                p.wait()
