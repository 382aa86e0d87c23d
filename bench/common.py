"""Helpers shared by the benchmark drivers: machine description, medians, result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile


def machine() -> dict:
    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return "?"

    cpu = "?"
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(read("/proc/meminfo").split()[1]) if read("/proc/meminfo") != "?" else 0
    disk = subprocess.run(["df", "--output=source,fstype", "/var/tmp"], capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "disk": disk,
        "python": platform.python_version(),
    }


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")


FIO_BUFFER_BYTES = 32 << 20  # iodepth x bs


class HugePages:
    """Reserves 2 MiB pages and a hugetlbfs mount for one fio run, then restores both."""

    def __init__(self, nbytes: int):
        self.pages = 2 * nbytes // (2 << 20)  # fio asks for more than iodepth x bs
        self.sysctl = "/proc/sys/vm/nr_hugepages"

    def __enter__(self):
        with open(self.sysctl) as f:
            self.old = int(f.read())
        with open(self.sysctl, "w") as f:
            f.write(str(self.old + self.pages))
        self.mnt = tempfile.mkdtemp(prefix="chainio-huge-")
        subprocess.run(["mount", "-t", "hugetlbfs", "none", self.mnt], check=True)
        return os.path.join(self.mnt, "fio.buf")

    def __exit__(self, *exc):
        subprocess.run(["umount", self.mnt], check=False)
        os.rmdir(self.mnt)
        with open(self.sysctl, "w") as f:
            f.write(str(self.old))


class HugetlbPool:
    """Grows the hugetlb pool (vm.nr_hugepages) by `nbytes` for a whole benchmark, touches every
    page of it once, and restores the old size on exit.

    Touching matters on a VM: a guest page the host has never backed costs a host fault on first
    use, and pool pages stay backed once touched (they are not handed back like freed 4 KiB
    pages). A server that reserves its pool at boot is in the touched state after its first load.
    """

    def __init__(self, nbytes: int):
        self.pages = -(-nbytes // (2 << 20))
        self.sysctl = "/proc/sys/vm/nr_hugepages"
        self.granted = 0
        self.warm_s = 0.0

    def __enter__(self):
        import mmap
        import time

        with open(self.sysctl) as f:
            self.old = int(f.read())
        with open(self.sysctl, "w") as f:
            f.write(str(self.old + self.pages))
        with open(self.sysctl) as f:
            self.granted = int(f.read()) - self.old
        from chainio_torch.loader import hugetlb_free_pages

        free = hugetlb_free_pages()
        t0 = time.perf_counter()
        if free:
            m = mmap.mmap(-1, free * (2 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000)
            for off in range(0, len(m), 2 << 20):  # 0x40000: MAP_HUGETLB
                m[off] = 1
            m.close()
        self.warm_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc):
        with open(self.sysctl, "w") as f:
            f.write(str(self.old))

    def describe(self) -> dict:
        return {"pages": self.pages, "granted": self.granted, "bytes": self.granted * (2 << 20),
                "warm_seconds": round(self.warm_s, 2)}


def fio_read(paths: list[str], huge: bool, timeout_s: int | None = None) -> dict:
    """The device reference: fio, io_uring, O_DIRECT, QD32, 1 MiB sequential reads of `paths`
    (one after the other), cold. `huge` gives fio hugetlb buffers (--iomem=mmaphuge), which
    changes its result up to 4x in this VM. Returns bytes, seconds and CPU seconds."""
    names = ":".join(p.replace(":", "\\:") for p in paths)
    cmd = ["fio", "--name=ref", f"--filename={names}", "--file_service_type=sequential",
           "--rw=read", "--bs=1M", "--iodepth=32", "--ioengine=io_uring", "--direct=1",
           "--invalidate=1", "--output-format=json"]
    if timeout_s:
        cmd.append(f"--runtime={timeout_s}")

    def run(extra):
        drop_caches()
        return subprocess.run(cmd + extra, capture_output=True, text=True, check=True,
                              timeout=timeout_s + 60 if timeout_s else None).stdout

    if huge:
        with HugePages(FIO_BUFFER_BYTES) as buf:
            out = run([f"--iomem=mmaphuge:{buf}"])
    else:
        out = run([])
    job = json.loads(out[out.index("{"):])["jobs"][0]
    seconds = job["job_runtime"] / 1000
    return {"bytes": job["read"]["io_bytes"], "seconds": seconds,
            "cpu_seconds": (job["usr_cpu"] + job["sys_cpu"]) / 100 * seconds}


def write_outputs(out: str, stem: str, payload: dict, markdown, plot) -> None:
    """Writes <stem>.json, then <stem>.md and <stem>.png with the bench's own renderers; a plot
    that fails is reported and does not lose the measurements."""
    import sys

    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, f"{stem}.json"), payload)
    markdown(payload, os.path.join(out, f"{stem}.md"))
    try:
        plot(payload, os.path.join(out, f"{stem}.png"))
    except Exception as e:  # noqa: BLE001
        print(f"plot failed: {type(e).__name__}: {e}", file=sys.stderr)


def md_head(stem: str, payload: dict, machine_extra: str = "") -> list[str]:
    """The first lines of a bench's Markdown: title, the command, and the machine (with
    `machine_extra` after the date)."""
    m, c = payload["machine"], payload["config"]
    return [f"# {stem}", "", "```", c["command"], "```", "",
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, kernel "
            f"{m['kernel']}, disk {m['disk']}, {m['date']}{machine_extra}.  "]


def md_versions(payload: dict) -> str:
    return "Versions: " + ", ".join(f"{k} {val}" for k, val in payload.get("versions", {}).items()
                                    if val) + "."


def save_figure(fig, title: str, png: str, fontsize: int = 8) -> None:
    """Titles, lays out, writes (110 dpi) and closes a bench's figure."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def reserve_hugetlb_pool(nbytes: int) -> HugetlbPool:
    """A HugetlbPool of `nbytes` for the rest of the process (restored at exit, however the
    bench ends); prints what it got."""
    import atexit

    pool = HugetlbPool(nbytes)
    pool.__enter__()
    atexit.register(pool.__exit__, None, None, None)
    print(f"hugetlb pool: +{pool.granted} pages of 2 MiB for this run (asked {pool.pages}), "
          f"touched once in {pool.warm_s:.1f} s")
    return pool


def add_run_args(ap, root: str) -> None:
    """Options shared by the checkpoint benchmarks (load_bench, hf_bench)."""
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache", default="cold,hot", help="cold, hot or cold,hot")
    ap.add_argument("--settle-s", type=float, default=3.0,
                    help="pause before each run so freed memory returns to the host first")
    ap.add_argument("--timeout-s", type=float, default=300, help="limit for one run")
    ap.add_argument("--out", default=os.path.join(root, "bench", "results"))
    ap.add_argument("--plot-only", action="store_true",
                    help="re-draw PNG and Markdown from the existing JSON, measure nothing")


def replot(out: str, stem: str, markdown, plot) -> None:
    """--plot-only: re-renders <stem>.md and <stem>.png from <stem>.json."""
    with open(os.path.join(out, f"{stem}.json")) as f:
        payload = json.load(f)
    markdown(payload, os.path.join(out, f"{stem}.md"))
    plot(payload, os.path.join(out, f"{stem}.png"))
    print(f"wrote {out}/{stem}.png and {stem}.md")


def versions(packages: list[str], root: str) -> dict:
    """Installed versions of `packages` (None when absent) and `git describe` of the tree."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    try:
        out["chainio_git"] = subprocess.run(
            ["git", "-C", root, "describe", "--always", "--dirty"], capture_output=True,
            text=True).stdout.strip() or None
    except OSError:
        out["chainio_git"] = None
    return out


def fmt_targets(tg: list[dict], markdown: bool) -> str:
    """Targets as MET / MISS / INFO lines or a Markdown table; ratios as "1.23x", RSS targets
    (their text says RSS) as "+67 MiB"."""
    lines = ["| target | measured | |", "|---|---:|---|"] if markdown else []
    for t in tg:
        ratio = "n/a" if t["ratio"] is None else (
            f"{t['ratio']:+.0f} MiB" if "RSS" in t["target"] else f"{t['ratio']:.2f}x")
        verdict = "INFO" if t["met"] is None else "MET" if t["met"] else "MISS"
        lines.append(f"| {t['target']} | {ratio} | {verdict} |" if markdown
                     else f"{verdict:<5}{t['target']}: {ratio}")
    return "\n".join(lines)
