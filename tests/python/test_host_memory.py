"""Loader buffers from the hugetlb pool: used when it has room, bit-exact, owned by the tensors,
given back when the last view goes, and a short or disabled pool falls back to plain pages."""

import gc
import os

import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")

import chainio_torch  # noqa: E402
from chainio_torch import _C  # noqa: E402
from chainio_torch.loader import same_bytes  # noqa: E402

SYSCTL = "/proc/sys/vm/nr_hugepages"
HUGE = 2 << 20


def meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@pytest.fixture
def pool():
    """Factory: grows the hugetlb pool by `pages` for the test, restored afterwards."""
    with open(SYSCTL) as f:
        old = int(f.read())
    grown = []

    def grow(pages: int) -> None:
        try:
            with open(SYSCTL, "w") as f:
                f.write(str(old + pages))
        except OSError as e:
            pytest.skip(f"cannot grow vm.nr_hugepages: {e}")
        if meminfo("HugePages_Total") < old + pages:
            pytest.skip("not enough contiguous free memory for the huge pages")
        grown.append(pages)

    yield grow
    gc.collect()
    with open(SYSCTL, "w") as f:
        f.write(str(old))


@pytest.fixture
def checkpoint(tmp_path_factory):
    d = os.path.join(os.environ.get("CHAINIO_TEST_DIR", "/var/tmp"), f"chainio-hugetlb-{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    gen = torch.Generator().manual_seed(5)
    tensors = {
        "embed": torch.randint(0, 256, (40 << 20,), dtype=torch.uint8, generator=gen).view(torch.bfloat16)
                 .reshape(-1, 4096),
        "norm": torch.randn(4096, generator=gen),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 3),
    }
    path = os.path.join(d, "model.safetensors")
    st.save_file(tensors, path)
    yield path, tensors
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def test_loads_into_pool_pages_bit_exact_and_gives_them_back(pool, checkpoint):
    path, tensors = checkpoint
    chainio_torch.default_engine()  # made first: its own buffer pool would take pool pages
    pool(32)  # 64 MiB > the 40 MiB data region
    before = chainio_torch.host_memory_stats()
    free0 = meminfo("HugePages_Free")
    out = chainio_torch.load_file(path)
    after = chainio_torch.host_memory_stats()
    assert after["hugetlb_regions"] == before["hugetlb_regions"] + 1
    assert after["hugetlb_bytes"] - before["hugetlb_bytes"] >= 40 << 20
    assert meminfo("HugePages_Free") <= free0 - 20, "the data region sits in pool pages"
    line = chainio_torch.loader.memory_summary(before, after)
    assert line.startswith("memory: 0.042 GB in hugetlb pool pages"), line
    for name, t in tensors.items():
        assert same_bytes(out[name], t), name
    assert same_bytes(out["embed"], st.load_file(path)["embed"])

    keep = out["norm"].clone()
    view = out["norm"][:10]  # a view alone keeps the whole buffer
    del out
    gc.collect()
    assert meminfo("HugePages_Free") < free0, "a live view keeps the pages"
    assert torch.equal(view, keep[:10])
    del view
    gc.collect()
    assert meminfo("HugePages_Free") == free0, "the last view gives the pages back to the pool"


def test_without_room_or_when_disabled_plain_pages_load_the_same(pool, checkpoint, monkeypatch):
    path, tensors = checkpoint
    chainio_torch.default_engine()
    free = meminfo("HugePages_Free")
    # A pool that cannot hold the 40 MiB region: the load falls back and says so in the stats.
    before = chainio_torch.host_memory_stats()
    if free * HUGE < 40 << 20:
        out = chainio_torch.load_file(path)
        after = chainio_torch.host_memory_stats()
        assert after["hugetlb_refused"] == before["hugetlb_refused"] + 1
        assert after["hugetlb_regions"] == before["hugetlb_regions"]
        assert all(same_bytes(out[k], t) for k, t in tensors.items())
    pool(32)
    monkeypatch.setenv("CHAINIO_HUGETLB", "0")
    before = chainio_torch.host_memory_stats()
    out = chainio_torch.load_file(path)
    after = chainio_torch.host_memory_stats()
    assert after["hugetlb_regions"] == before["hugetlb_regions"], "CHAINIO_HUGETLB=0 is obeyed"
    assert after["small_regions"] >= before["small_regions"] + 1
    assert all(same_bytes(out[k], t) for k, t in tensors.items())


def test_host_buffer_is_writable_aligned_and_refuses_zero():
    buf = _C.HostBuffer(5000)
    assert len(buf) == 5000 and buf.address % 4096 == 0 and buf.backing == "4k"
    t = torch.frombuffer(buf, dtype=torch.uint8)
    t.fill_(9)
    assert memoryview(buf)[4999] == 9
    with pytest.raises(ValueError):
        _C.HostBuffer(0)


def test_hook_prefetch_counts_pool_pages_apart_from_mem_available(pool, checkpoint, monkeypatch):
    """MemAvailable does not include the pool: a machine whose free memory sits in the pool must
    still prefetch shards whose buffers go there, and only those."""
    from chainio_torch import hook

    path, _ = checkpoint
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold, so the hook would serve it
    finally:
        os.close(fd)
    chainio_torch.default_engine()
    monkeypatch.setattr(hook, "_memory_available", lambda: 0)  # no ordinary memory to spare
    with chainio_torch.patched():
        monkeypatch.setenv("CHAINIO_HUGETLB", "0")
        hook._prefetch([path])
        assert not hook._prefetched, "a 4 KiB-page buffer over the budget is not prefetched"
        monkeypatch.delenv("CHAINIO_HUGETLB")
        pool(32)
        hook._prefetch([path])
        assert len(hook._prefetched) == 1, "a buffer in pool pages does not use MemAvailable"
        import safetensors

        with safetensors.safe_open(path, framework="pt") as f:  # served: takes the buffer over
            embed = f.get_tensor("embed")
        assert not hook._prefetched
    assert chainio_torch.stats()["paths"][os.path.abspath(path)]["prefetched_bytes"] > 0
    assert same_bytes(embed, checkpoint[1]["embed"])


def test_doctor_pool_advice_is_enough_for_a_fresh_process(pool, checkpoint):
    import re
    import subprocess
    import sys

    path, _ = checkpoint
    out = subprocess.run([sys.executable, "-m", "chainio_torch", "doctor", path],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    m = re.search(r"take (\d+) pool pages .* uses (\d+) pages", out.stdout)
    assert m, out.stdout
    pages, need = int(m.group(1)), int(m.group(2))
    assert pages == 21  # 40 MiB + 16 KiB of tensors + the shift, in 2 MiB pages
    if meminfo("HugePages_Free") >= need:
        pytest.skip("the pool already has room: the advice cannot be told apart from it")
    pool(need - meminfo("HugePages_Free"))
    out = subprocess.run([sys.executable, "-m", "chainio_torch", "load", path],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "memory: 0.042 GB in hugetlb pool pages" in out.stdout, out.stdout
    assert "no room" not in out.stdout, out.stdout


@pytest.fixture
def hugetlb_cgroup(tmp_path):
    """Factory: a child cgroup of the v1 hugetlb hierarchy (mounted here when it is not) with a
    fault-time limit on 2 MiB pages; returns its cgroup.procs path. Removed afterwards."""
    import subprocess

    mnt, mounted = None, False
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            rest = parts[parts.index("-") + 1:]
            if rest[0] == "cgroup" and "hugetlb" in rest[2].split(","):
                mnt = parts[4]
    if mnt is None:
        mnt = str(tmp_path / "hugetlb")
        os.mkdir(mnt)
        r = subprocess.run(["mount", "-t", "cgroup", "-o", "hugetlb", "none", mnt],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"no cgroup v1 hugetlb hierarchy here: {r.stderr.strip()}")
        mounted = True
    made = []

    def make(limit_bytes: int) -> str:
        d = os.path.join(mnt, f"chainio-test-{os.getpid()}-{len(made)}")
        os.mkdir(d)
        made.append(d)
        with open(os.path.join(d, "hugetlb.2MB.limit_in_bytes"), "w") as f:
            f.write(str(limit_bytes))
        return os.path.join(d, "cgroup.procs")

    yield make
    for d in made:
        os.rmdir(d)  # its processes have exited
    if mounted:
        subprocess.run(["umount", mnt], check=False)


def test_a_cgroup_hugetlb_limit_is_respected_not_a_sigbus(pool, checkpoint, hugetlb_cgroup):
    """The pool is machine-wide but a cgroup (a Kubernetes pod) may be allowed fewer of its
    pages, often none: mmap succeeds and the first touch over the limit is a SIGBUS. ChainIO
    must see the limit and use 4 KiB pages instead, and use the pool when the limit allows."""
    import subprocess
    import sys

    path, _ = checkpoint
    pool(128)
    script = ("import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); "
              "from chainio_torch.cli import main; sys.exit(main(['load', sys.argv[2]]))")
    none = hugetlb_cgroup(0)
    out = subprocess.run([sys.executable, "-c", script, none, path], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert "memory: 0.042 GB in 4 KiB pages" in out.stdout, out.stdout
    assert "no room" in out.stdout, out.stdout
    # Room for the engine's 64 MiB pool and the 42 MiB buffer: both come from the pool.
    some = hugetlb_cgroup(110 << 20)
    out = subprocess.run([sys.executable, "-c", script, some, path], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert "memory: 0.042 GB in hugetlb pool pages" in out.stdout, out.stdout
