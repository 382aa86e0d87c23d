#!/usr/bin/env python3
"""Load a sharded Llama-shaped safetensors checkpoint into CPU memory, cold and hot, with ChainIO
and its peers; table + JSON + PNG + Markdown.

    python3 bench/load_bench.py [--size-gib 4] [--shards 4] [--runs 3]      # as root

Loaders (--loaders picks a subset, comma separated):
  chainio            chainio_torch.load_checkpoint(dir): buffers from the hugetlb pool
  chainio-nopool     the same with CHAINIO_HUGETLB=0: plain 4 KiB pages
  chainio-file       chainio_torch.load_file(shard) for every shard
  safetensors        safetensors.torch.load_file(shard) (default "mmap" backend) for every shard
  safetensors-pread  safetensors.torch.load_file(shard, backend="pread") for every shard
  safe_open          safetensors.safe_open(shard, framework="pt") + get_tensor(key) for every key
  runai              runai_model_streamer.SafetensorsStreamer, all shards in one stream_files
  fastsafetensors    fastsafetensors.SafeTensorsFileLoader(None, "cpu", nogds=True)
and fio (io_uring, O_DIRECT, QD32, 1 MiB, the shards read one after the other, cold only) as the
device reference, with its default buffers and with hugetlb buffers: in this VM fio's buffer
layout alone changes its result up to 4x (docs/BENCHMARKS.md); the better of the two is the
reference. A second reference, "memfault", first-touches as much fresh anonymous memory as the
checkpoint holds (one byte per page, one torch thread per core) and reads nothing: the cost
every loader whose tensors own their memory pays in some form (in this VM it is of the order
of the whole cold load; loaders that fault pages while the disk works can hide part of it).
Two more, cold only: ChainIO's engine reading the shards whole with O_DIRECT into hugetlb pages
touched before the clock, once into a destination as large as the checkpoint ("engine-span":
the ceiling for any loader whose tensors own their memory) and once into one 32 MiB buffer
reused round-robin as fio's is ("engine-reuse"): in this VM the size of the destination alone
moves the device's rate by ~15%, which fio's reference does not pay.

The hugetlb pool (--hugetlb-pool, default auto): ChainIO's loaders take their buffers from it when
it has room. auto grows vm.nr_hugepages by the checkpoint's size (+128 MiB) for the whole run,
touches every pool page once (as on a server whose pool was reserved at boot and has been used),
and restores the old value at the end; peers cannot use it. "chainio-nopool" is ChainIO without it.

Every load runs in a fresh child process (bench/load_worker.py): destination memory is fresh,
as when a server starts, and peak RSS is the child's own VmHWM. The clock runs from just before
the loader's first call until every tensor is in memory; tensors that a loader leaves backed by a
memory map of the file (safetensors' default backend, safe_open) get every page touched inside
the timed region, since until then nothing has been read (see load_worker.py). CPU-s/GB is the
child's user + system time over the same interval (loader threads and io_uring workers included).
Cold runs follow sync + drop_caches, hot runs follow a `cat` of the shards; before every run the
driver waits --settle-s so that memory freed by the previous run has gone back to the host (free
page reporting) for every loader alike. Runs are interleaved across loaders and the order rotates
each round; medians of --runs are reported. Each run's data is checked: names, dtypes and shapes
against the headers and a sampled digest of every tensor against one computed from the files.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import drop_caches, fio_read, machine, median, write_json  # noqa: E402
import common  # noqa: E402
import gen_checkpoint  # noqa: E402
import load_worker  # noqa: E402

ROOT = os.path.dirname(HERE)
LOADERS = ["chainio", "chainio-nopool", "chainio-file", "safetensors", "safetensors-pread",
           "safe_open", "runai",
           "fastsafetensors"]
OURS = ("chainio", "chainio-nopool", "chainio-file")
TARGETED = ("chainio", "chainio-nopool")  # ours with targets: with the pool and without
FIOS = ("fio", "fio-huge")
# References that are not loaders: the device (fio), the cost of fresh memory (memfault), and
# the device through ChainIO's engine into a checkpoint-sized destination vs a reused 32 MiB
# one like fio's (engine-span, engine-reuse; see load_worker.engine_read).
REFS = FIOS + ("memfault", "engine-span", "engine-reuse")
LABELS = {
    "chainio": "ChainIO load_checkpoint",
    "chainio-nopool": "ChainIO load_checkpoint, no pool",
    "chainio-file": "ChainIO load_file/shard",
    "safetensors": "safetensors load_file (mmap)",
    "safetensors-pread": "safetensors load_file (pread)",
    "safe_open": "safe_open + get_tensor",
    "runai": "runai-model-streamer",
    "fastsafetensors": "fastsafetensors (nogds)",
    "fio": "fio QD32 (default bufs)",
    "fio-huge": "fio QD32 (hugetlb bufs)",
    "memfault": "fresh memory, first touch",
    "engine-span": "engine, ckpt-sized dest",
    "engine-reuse": "engine, 32 MiB dest reused",
}
PACKAGES = ["torch", "safetensors", "runai-model-streamer", "fastsafetensors", "chainio-torch",
            "numpy"]
PEER_ENV_PREFIXES = ("RUNAI_STREAMER_", "FASTSAFETENSORS_", "CHAINIO_", "OMP_NUM_THREADS")
RSS_SLACK = 256 << 20


# ---------------------------------------------------------------- running things

def busy_seconds() -> float:
    """CPU time spent by everything on the machine so far (the first line of /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_loader(loader: str, directory: str, timeout: float) -> dict:
    """One load in a fresh worker process, plus how busy the rest of the machine was meanwhile."""
    busy0, child0, t0 = busy_seconds(), children_cpu(), time.perf_counter()
    result = _run_loader(loader, directory, timeout)
    wall = time.perf_counter() - t0
    other = busy_seconds() - busy0 - (children_cpu() - child0)
    result["background_cores"] = round(max(0.0, other) / wall, 3) if wall > 0 else None
    return result


def _run_loader(loader: str, directory: str, timeout: float) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "load_worker.py"), loader, directory]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        tail = e.stderr or ""
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {"loader": loader, "status": "failed", "error": f"timed out after {timeout:g} s",
                "stderr_tail": tail[-1500:]}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        tail = (p.stderr or p.stdout)[-1500:]
        last = tail.strip().splitlines()[-1] if tail.strip() else ""
        return {"loader": loader, "status": "failed",
                "error": f"worker exited {p.returncode} without a result: {last}"[:500],
                "stderr_tail": tail}
    result = json.loads(lines[-1][len("RESULT "):])
    if p.stderr.strip():
        result["stderr_tail"] = p.stderr[-800:]
    return result


def run_fio(paths: list[str], huge: bool, runtime_s: int) -> dict:
    method = "fio-huge" if huge else "fio"
    try:
        r = fio_read(paths, huge, timeout_s=runtime_s)
    except Exception as e:  # noqa: BLE001
        err = getattr(e, "stderr", None) or ""
        return {"loader": method, "status": "failed",
                "error": f"{type(e).__name__}: {e} {err[-300:]}"[:500]}
    return {"loader": method, "status": "ok", **r}


def warm_files(paths: list[str]) -> None:
    subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True)


# ---------------------------------------------------------------- summarizing

def summarize(results: list[dict], order: list[str]) -> list[dict]:
    rows = []
    for cache in ("cold", "hot"):
        for loader in order:
            rs = [r for r in results if r["loader"] == loader and r["cache"] == cache]
            if not rs:
                continue
            ok = [r for r in rs if r["status"] == "ok"]
            row = {"loader": loader, "cache": cache, "runs": len(ok), "attempts": len(rs)}
            bad = [r for r in rs if r["status"] != "ok"]
            if bad:
                skipped = all(r["status"] == "skipped" for r in bad)
                row["status"] = "skipped" if skipped else "failed"
                row["errors"] = sorted({r.get("error", "?") for r in bad})
            if not ok:
                row.setdefault("status", "failed")
                rows.append(row)
                continue
            row.setdefault("status", "ok" if not bad else row["status"])
            speeds = [r["bytes"] / r["seconds"] / 1e9 for r in ok]
            row.update(
                bytes=ok[0]["bytes"],
                gbps=median(speeds), gbps_min=min(speeds), gbps_max=max(speeds),
                seconds=median([r["seconds"] for r in ok]),
                cpu_s_per_gb=median([r["cpu_seconds"] / (r["bytes"] / 1e9) for r in ok]),
            )
            if loader not in REFS:
                peaks = [r["peak_rss"] + r.get("hugetlb_after", 0) for r in ok]
                extras = [r["peak_rss"] + r.get("hugetlb_after", 0) - r["rss_before"] - r["bytes"]
                          for r in ok]
                row.update(
                    peak_rss_mib=median(peaks) / 2**20,
                    rss_before_mib=median([r["rss_before"] for r in ok]) / 2**20,
                    extra_rss_mib=median(extras) / 2**20,
                    hugetlb_mib=max(r.get("hugetlb_after", 0) for r in ok) / 2**20,
                    mmap_backed=any(r.get("mmap_backed_bytes", 0) for r in ok),
                    materialize_s=median([r.get("materialize_seconds", 0) for r in ok]),
                    threads=max(r.get("threads_after") or 0 for r in ok),
                    digest_ok=all(r.get("digest_ok") for r in ok),
                    background_cores=median([r.get("background_cores") for r in ok]),
                )
                if all("host_memory" in r for r in ok):
                    row["buffers_in_pool"] = all(
                        r["host_memory"]["hugetlb_bytes"] >= r["bytes"] for r in ok)
            rows.append(row)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    def get(loader, cache):
        r = next((r for r in rows if r["loader"] == loader and r["cache"] == cache), None)
        return r if r and r.get("runs") else None

    names = [n for n in TARGETED if get(n, "cold") or get(n, "hot")]
    if not names:
        return [{"target": "ChainIO results present", "met": False, "ratio": None,
                 "note": "no ChainIO loader produced a result (skipped or failed)"}]
    out = []
    for name in names:
        out += _targets_of(name, rows, get)
    return out


def _targets_of(ours_name: str, rows: list[dict], get) -> list[dict]:
    label = LABELS[ours_name]
    out = []

    def add(target, ratio, need, above=True, note=None):
        if ratio is None:
            return
        out.append({"target": target, "ratio": ratio, "need": need,
                    "met": ratio >= need if above else ratio <= need, "ours": ours_name,
                    **({"note": note} if note else {})})

    fios = [r for r in (get("fio", "cold"), get("fio-huge", "cold")) if r]
    fio = max(fios, key=lambda r: r["gbps"]) if fios else None
    for cache in ("cold", "hot"):
        ours = get(ours_name, cache)
        if not ours:
            continue
        peers = [r for r in rows if r["cache"] == cache and r.get("runs")
                 and r["loader"] not in OURS and r["loader"] not in REFS]
        copying = [r for r in peers if not r.get("mmap_backed")]
        sets = [("", peers)]
        if peers and copying and max(peers, key=lambda r: r["gbps"]) is not max(
                copying, key=lambda r: r["gbps"]):
            sets.append((", excluding zero-copy mmap peers", copying))
        if cache == "cold" and fio:
            add(f"cold {label} >= 0.9x the better fio ({fio['loader']}, {fio['gbps']:.2f} GB/s)",
                ours["gbps"] / fio["gbps"], 0.9)
        for suffix, group in sets:
            if not group:
                continue
            best = max(group, key=lambda r: r["gbps"])
            need = 1.3 if cache == "cold" else 1.0
            add(f"{cache} {label} >= {need}x the fastest peer{suffix} "
                f"({best['loader']}, {best['gbps']:.2f} GB/s)", ours["gbps"] / best["gbps"], need)
            add(f"{cache} CPU-s/GB <= 0.5x the fastest peer's{suffix} "
                f"({best['loader']}, {best['cpu_s_per_gb']:.3f})",
                ours["cpu_s_per_gb"] / best["cpu_s_per_gb"] if best["cpu_s_per_gb"] else None,
                0.5, above=False)
        span = get("engine-span", "cold")
        if cache == "cold" and span:
            reuse = get("engine-reuse", "cold")
            out.append({"target": f"cold {label} vs the device into pre-touched hugetlb pages as "
                        f"large as the checkpoint ({span['gbps']:.2f} GB/s; into one reused "
                        f"32 MiB buffer like fio's: "
                        f"{reuse['gbps'] if reuse else float('nan'):.2f} GB/s): context, the "
                        f"ceiling for a loader that writes every byte to memory of its own",
                        "ratio": ours["gbps"] / span["gbps"], "need": None, "met": None,
                        "ours": ours_name})
        mem = get("memfault", "cold")
        if mem:
            out.append({"target": f"{cache} {label} vs first-touching as much fresh memory "
                        f"({mem['gbps']:.2f} GB/s, {os.cpu_count()} threads, no I/O): context, "
                        f"what owning fresh 4 KiB pages costs on this machine",
                        "ratio": ours["gbps"] / mem["gbps"], "need": None, "met": None,
                        "ours": ours_name})
        add(f"{cache} {label} peak RSS <= checkpoint + 256 MiB (MiB over baseline + checkpoint)",
            ours["extra_rss_mib"], RSS_SLACK / 2**20, above=False)
    return out


# ---------------------------------------------------------------- output

def noise_warning(background) -> str | None:
    if background is None or background < 0.15:
        return None
    return (f"other processes kept {background:.2f} of {os.cpu_count()} cores busy during the "
            f"median run (compiles, tests?): these timings are noisy, re-run on an idle machine")


def fmt_table(rows: list[dict], markdown: bool) -> str:
    head = ["loader", "cache", "runs", "GB/s", "min-max", "CPU-s/GB", "peak RSS MiB",
            "RSS - ckpt MiB", "notes"]
    lines = []
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
    else:
        lines.append(f"{'loader':<31}{'cache':<6}{'runs':>5}{'GB/s':>8}{'min-max':>14}"
                     f"{'CPU-s/GB':>10}{'peak RSS':>10}{'RSS-ckpt':>10}  notes")
    for r in rows:
        notes = []
        if r.get("status") in ("failed", "skipped"):
            notes.append(f"{r['status'].upper()}: " + " | ".join(r.get("errors", [])))
        if r.get("mmap_backed"):
            notes.append(f"mmap-backed, pages touched ({r['materialize_s']:.2f} s)")
        if "buffers_in_pool" in r:
            notes.append("buffers in hugetlb pool pages" if r["buffers_in_pool"]
                         else "buffers in 4 KiB pages")
        if r.get("hugetlb_mib"):
            notes.append(f"{r['hugetlb_mib']:.0f} MiB hugetlb counted")
        if r.get("threads") and r["threads"] > 3:
            notes.append(f"{r['threads']} threads")
        if r.get("runs") and r["loader"] not in REFS and not r.get("digest_ok"):
            notes.append("DIGEST MISMATCH")
        if r.get("runs"):
            cells = [LABELS.get(r["loader"], r["loader"]), r["cache"], str(r["runs"]),
                     f"{r['gbps']:.2f}", f"{r['gbps_min']:.2f}-{r['gbps_max']:.2f}",
                     f"{r['cpu_s_per_gb']:.3f}",
                     f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else "n/a",
                     f"{r['extra_rss_mib']:+.0f}" if "extra_rss_mib" in r else "n/a"]
        else:
            cells = [LABELS.get(r["loader"], r["loader"]), r["cache"], "0"] + ["-"] * 5
        note = "; ".join(notes)
        if markdown:
            lines.append("| " + " | ".join(cells + [note.replace("|", "/")]) + " |")
        else:
            lines.append(f"{cells[0]:<34}{cells[1]:<6}{cells[2]:>5}{cells[3]:>8}{cells[4]:>14}"
                         f"{cells[5]:>10}{cells[6]:>10}{cells[7]:>10}  {note}")
    return "\n".join(lines)


def title_of(payload: dict) -> str:
    m, c = payload["machine"], payload["config"]
    return (f"load_bench: {c['bytes'] / 2**30:.2f} GiB Llama-shaped bf16 checkpoint in "
            f"{c['shards']} shards, fresh process per run; {m['cpu']}, {m['cores']} cores, "
            f"kernel {m['kernel']}; medians of {c['runs']}")


def plot(payload: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload["summary"] if r.get("runs")]
    loaders = []
    for r in rows:
        if r["loader"] not in loaders:
            loaders.append(r["loader"])
    fig, axes = plt.subplots(1, 3, figsize=(17, 0.55 * len(loaders) + 2.8))
    colors = {"cold": "#1f77b4", "hot": "#ff7f0e"}
    h = 0.38
    for ax, key, xlabel in ((axes[0], "gbps", "GB/s (median, bars = min-max)"),
                            (axes[1], "cpu_s_per_gb", "CPU-s per GB"),
                            (axes[2], "extra_rss_mib",
                             "peak RSS - RSS before load - checkpoint, MiB")):
        for i, cache in enumerate(("cold", "hot")):
            ys, vals, lo, hi = [], [], [], []
            for y, name in enumerate(loaders):
                r = next((r for r in rows if r["loader"] == name and r["cache"] == cache), None)
                if r is None or key not in r:
                    continue
                ys.append(y + (i - 0.5) * h)
                vals.append(r[key])
                lo.append(r[key] - r.get("gbps_min", r[key]) if key == "gbps" else 0)
                hi.append(r.get("gbps_max", r[key]) - r[key] if key == "gbps" else 0)
            if not ys:
                continue
            ax.barh(ys, vals, height=h, color=colors[cache], label=cache,
                    xerr=[lo, hi] if key == "gbps" else None, capsize=2)
            for y, v, up in zip(ys, vals, hi):
                ax.text(v + up, y, f" {v:.0f}" if key == "extra_rss_mib" else
                        f" {v:.2f}" if key == "gbps" else f" {v:.3f}", va="center", fontsize=7)
        ax.set_yticks(range(len(loaders)))
        ax.set_yticklabels([LABELS.get(n, n) for n in loaders], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        if key == "gbps":
            vals = [r["gbps"] for r in rows]
            if vals and max(vals) / max(min(vals), 1e-9) > 30:
                ax.set_xscale("log")
                ax.set_xlabel(xlabel + ", log scale")
            ax.legend(fontsize=8, loc="lower right")
        if key == "extra_rss_mib":
            ax.axvline(0, color="black", lw=0.8)
            ax.axvline(RSS_SLACK / 2**20, color="red", lw=1, ls=":")
            ax.text(RSS_SLACK / 2**20, -0.6, "target +256 MiB ", fontsize=7, ha="right",
                    color="red")
    common.save_figure(fig, title_of(payload), png, fontsize=9)


def write_markdown(payload: dict, path: str) -> None:
    c = payload["config"]
    lines = [
        *common.md_head("load_bench", payload),
        f"Checkpoint: `{c['dir']}`, {c['bytes'] / 2**30:.2f} GiB of bf16 tensors "
        f"({c['tensors']} tensors, hidden {c['model']['hidden_size']}, "
        f"{c['model']['num_hidden_layers']} layers, vocab {c['model']['vocab_size']}) in "
        f"{c['shards']} shards.  ",
        common.md_versions(payload), "",
        "Every run is a fresh process: destination memory is fresh (never faulted in before), "
        "peak RSS is the child's VmHWM (+ hugetlb pages it holds). Cold = sync + drop_caches, "
        "hot = the shards `cat` first. The clock stops when every tensor is in memory: "
        "mmap-backed tensors get every page touched inside the timed region. "
        f"Runs interleaved, order rotated each round, {c['settle_s']} s settle before each; "
        f"medians of {c['runs']}. "
        "RSS - ckpt = peak RSS - RSS before the load call - checkpoint bytes.", "",
        *([f"Hugetlb pool for the run: +{c['hugetlb_pool']['granted']} pages of 2 MiB "
           f"({c['hugetlb_pool']['bytes'] / 2**30:.2f} GiB), every page touched once before the "
           f"first run ({c['hugetlb_pool']['warm_seconds']:.1f} s); ChainIO's loaders take their "
           f"buffers from it, the peers cannot; \"no pool\" is ChainIO with CHAINIO_HUGETLB=0.",
           ""] if c.get("hugetlb_pool") else []),
        *([f"**Warning:** {payload['noise_warning']}.", ""] if payload.get("noise_warning")
          else [f"Machine otherwise idle: other processes used "
                f"{payload.get('background_cores_median') or 0:.2f} cores during the median run.",
                ""]),
        fmt_table(payload["summary"], markdown=True), "",
        common.fmt_targets(payload["targets"], markdown=True), "",
        "![load_bench](load_bench.png)", "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_outputs(payload: dict, out: str) -> None:
    common.write_outputs(out, "load_bench", payload, write_markdown, plot)


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=4, help="checkpoint size (tensor bytes)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--dir", default=None, help="checkpoint directory (default "
                    "/var/tmp/chainio-bench/llama-4GiB for the default size and shards); "
                    "generated there when missing or of another spec")
    ap.add_argument("--loaders", default=",".join(LOADERS),
                    help=f"comma separated subset of {','.join(LOADERS)}")
    ap.add_argument("--no-fio", action="store_true", help="skip the fio and memfault reference runs")
    ap.add_argument("--hugetlb-pool", choices=("auto", "off"), default="auto",
                    help="auto: grow vm.nr_hugepages by the checkpoint's size for the run (ChainIO "
                         "takes its buffers from it), restored at the end; off: leave it as it is")
    common.add_run_args(ap, ROOT)
    args = ap.parse_args()

    if args.plot_only:
        common.replot(args.out, "load_bench", write_markdown, plot)
        return 0
    loaders = [x.strip() for x in args.loaders.split(",") if x.strip()]
    unknown = [x for x in loaders if x not in LOADERS]
    if unknown:
        ap.error(f"unknown loaders {unknown}; choose from {LOADERS}")
    caches = [x.strip() for x in args.cache.split(",") if x.strip()]
    if not set(caches) <= {"cold", "hot"} or not caches:
        ap.error("--cache takes cold, hot or cold,hot")
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    if os.geteuid() != 0:
        ap.error("cold runs drop the page cache (and fio-huge reserves huge pages): run as root")

    directory = args.dir or gen_checkpoint.default_dir(args.size_gib, args.shards)
    stamp = gen_checkpoint.generate(directory, args.size_gib, args.shards)
    paths = load_worker.shard_files(directory)
    pool = None
    if args.hugetlb_pool == "auto" and any(n in TARGETED for n in loaders):
        pool = common.reserve_hugetlb_pool(sum(os.path.getsize(p) for p in paths) + (128 << 20))
    reference = load_worker.digest_from_files(paths)
    info = machine()
    env = {k: v for k, v in os.environ.items() if k.startswith(PEER_ENV_PREFIXES)}
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
          f"kernel {info['kernel']}, disk {info['disk']}")
    print(f"checkpoint: {directory}: {stamp['tensor_bytes'] / 2**30:.2f} GiB, {len(paths)} shards, "
          f"{stamp['tensors']} tensors; {args.runs} runs per loader and cache state, interleaved, "
          f"each in a fresh process (fresh destination memory)")
    if env:
        print("environment: " + " ".join(f"{k}={v}" for k, v in sorted(env.items())))

    steps = []
    if "cold" in caches:
        steps.append(("cold", loaders + ([] if args.no_fio else list(REFS))))
    if "hot" in caches:
        steps.append(("hot", loaders))
    total = sum(len(names) for _, names in steps) * args.runs
    order = loaders + ([] if args.no_fio else list(REFS))
    command = "python3 bench/load_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    payload = {
        "benchmark": "load_bench", "machine": info, "versions": common.versions(PACKAGES, ROOT),
        "config": {"command": command.strip(), "dir": directory, "bytes": stamp["tensor_bytes"],
                   "file_bytes": sum(os.path.getsize(p) for p in paths), "shards": len(paths),
                   "tensors": stamp["tensors"], "model": stamp["config"], "runs": args.runs,
                   "loaders": loaders, "caches": caches, "settle_s": args.settle_s,
                   "timeout_s": args.timeout_s, "environment": env,
                   "reference_digest": reference,
                   "hugetlb_pool": pool.describe() if pool else None,
                   "destination": "fresh: every run is a new process",
                   "fio": "io_uring, O_DIRECT, QD32, 1 MiB, shards one after the other, cold; "
                          "default buffers and --iomem=mmaphuge"},
    }

    # One untimed cold pass, so the first timed loader does not pay for the host's caches alone,
    # and one untimed start of the worker so that Python and torch come from a warm disk.
    drop_caches()
    subprocess.run(["fio", "--name=warm", "--filename=" + ":".join(paths),
                    "--file_service_type=sequential", "--rw=read", "--bs=1M", "--direct=1",
                    "--ioengine=io_uring", "--iodepth=32", "--output=/dev/null"], check=False)
    run_loader("safetensors-pread" if "safetensors-pread" in loaders else loaders[0], directory,
               args.timeout_s)

    from tqdm import tqdm

    results: list[dict] = []
    start = time.time()
    with tqdm(total=total, desc="runs", unit="run") as bar:
        for rnd in range(args.runs):
            for cache, names in steps:
                k = rnd % len(names)
                for name in names[k:] + names[:k]:
                    bar.set_postfix_str(f"{cache} {name}")
                    if name in FIOS:
                        busy0, child0, t0 = busy_seconds(), children_cpu(), time.perf_counter()
                        r = run_fio(paths, huge=name == "fio-huge",
                                    runtime_s=int(args.timeout_s))
                        other = busy_seconds() - busy0 - (children_cpu() - child0)
                        r["background_cores"] = round(max(0.0, other) / max(
                            time.perf_counter() - t0, 1e-3), 3)
                    else:
                        if cache == "cold":
                            drop_caches()
                        else:
                            warm_files(paths)
                        time.sleep(args.settle_s)
                        r = run_loader(name, directory, args.timeout_s)
                        if r.get("status") == "ok" and name not in REFS:
                            r["digest_ok"] = r.get("digest") == reference
                            if not r["digest_ok"]:
                                r["status"] = "failed"
                                r["error"] = "sampled digest differs from the files'"
                    r.update(cache=cache, round=rnd)
                    results.append(r)
                    if r["status"] == "failed":
                        tqdm.write(f"{cache} {name} failed: {r.get('error')}")
                    bar.update()
            # Partial results survive an interrupted run.
            payload.update(runs=results, summary=summarize(results, order))
            payload["background_cores_median"] = median(
                [r.get("background_cores") for r in results])
            payload["noise_warning"] = noise_warning(payload["background_cores_median"])
            payload["targets"] = targets(payload["summary"])
            payload["elapsed_s"] = round(time.time() - start, 1)
            write_json(os.path.join(args.out, "load_bench.json"), payload)

    rows = payload["summary"]
    print()
    print(fmt_table(rows, markdown=False))
    print()
    print(common.fmt_targets(payload["targets"], markdown=False))
    if payload.get("noise_warning"):
        print("\nWARNING: " + payload["noise_warning"])
    write_outputs(payload, args.out)
    print(f"\nwrote {args.out}/load_bench.json, load_bench.png and load_bench.md "
          f"({payload['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
