#!/usr/bin/env python3
"""Hugging Face `from_pretrained` of a Llama checkpoint, with and without the ChainIO hook, cold
and hot; table + JSON + PNG + Markdown.

    python3 bench/hf_bench.py [--size-gib 2.05] [--shards 4] [--runs 3]      # as root

Variants (bench/hf_worker.py runs one per fresh process):
  stock        AutoModelForCausalLM.from_pretrained(dir, dtype=torch.bfloat16), nothing patched:
               transformers opens every shard with safetensors.safe_open (mmap) and the
               parameters map the files
  hook         the same call after chainio_torch.patch() (default "auto" mode: a shard mostly
               in the page cache is left to safetensors' mmap, the others are read by ChainIO)
  hook-always  the same after chainio_torch.patch(mode="always"): ChainIO reads every shard

The checkpoint is the synthetic Llama of chainio_torch.synth (bf16, written by safetensors, in
the Hugging Face sharded layout with config.json); the default 2.05 GiB is the smallest size of
that generator's ladder above 2 GiB (hidden 1536, 37 layers, vocab 32000).

The clock runs from just before from_pretrained until every parameter is in memory: the stock
model's parameters map the shard files and have read nothing when from_pretrained returns, so
the worker touches every page of every mmap-backed parameter inside the timed region (as
load_bench does; the touch is reported apart). Python imports (torch, transformers, the
modeling module) and patch() happen before the clock. Cold runs follow sync + drop_caches, hot
runs follow a `cat` of the shards; before each run the driver waits --settle-s so that memory
freed by the previous run has gone back to the host. Runs are interleaved across variants, the
order rotating each round; medians of --runs. Each run's parameters are checked against the
shard headers and a sampled digest of the files. A reference run in the cold rounds, "memfault"
(load_worker.py), faults in as much fresh anonymous memory as the checkpoint holds and reads
nothing: in this VM that, not the disk, bounds a loader whose tensors own their memory.
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
from common import drop_caches, machine, median, write_json  # noqa: E402
import common  # noqa: E402
import gen_checkpoint  # noqa: E402
import load_worker  # noqa: E402
from load_bench import busy_seconds, children_cpu, noise_warning, warm_files  # noqa: E402

ROOT = os.path.dirname(HERE)
VARIANTS = ["stock", "hook", "hook-always"]
REFS = ["memfault"]  # not a load: the cost of the fresh memory alone, cold rows only
LABELS = {
    "stock": "from_pretrained (safetensors mmap)",
    "hook": "from_pretrained + ChainIO hook (auto)",
    "hook-always": "from_pretrained + ChainIO hook (always)",
    "memfault": "reference: fault in fresh memory, no I/O",
}
PACKAGES = ["torch", "transformers", "safetensors", "chainio-torch"]
TARGETS = {"cold": 1.3, "hot": 1.0}


def run_variant(variant: str, directory: str, timeout: float) -> dict:
    busy0, child0, t0 = busy_seconds(), children_cpu(), time.perf_counter()
    cmd = [sys.executable, os.path.join(HERE, "hf_worker.py"), variant, directory]
    env = dict(os.environ, TQDM_DISABLE="1")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "status": "failed", "error": f"timed out after {timeout:g} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        tail = (p.stderr or p.stdout)[-1500:]
        return {"variant": variant, "status": "failed",
                "error": f"worker exited {p.returncode} without a result", "stderr_tail": tail}
    result = json.loads(lines[-1][len("RESULT "):])
    other = busy_seconds() - busy0 - (children_cpu() - child0)
    result["background_cores"] = round(max(0.0, other) / wall, 3) if wall > 0 else None
    return result


def summarize(results: list[dict]) -> list[dict]:
    rows = []
    for cache in ("cold", "hot"):
        for variant in VARIANTS + REFS:
            rs = [r for r in results if r["variant"] == variant and r["cache"] == cache]
            if not rs:
                continue
            ok = [r for r in rs if r["status"] == "ok"]
            row = {"variant": variant, "cache": cache, "runs": len(ok), "attempts": len(rs)}
            if len(ok) < len(rs):
                row["errors"] = sorted({r.get("error", "?") for r in rs if r["status"] != "ok"})
            if ok:
                secs = [r["seconds"] for r in ok]
                row.update(
                    bytes=ok[0]["bytes"], seconds=median(secs), seconds_min=min(secs),
                    seconds_max=max(secs), gbps=ok[0]["bytes"] / median(secs) / 1e9,
                    call_seconds=median([r["call_seconds"] for r in ok]),
                    materialize_seconds=median([r["materialize_seconds"] for r in ok]),
                    cpu_seconds=median([r["cpu_seconds"] for r in ok]),
                    # hugetlb pool pages are not in VmHWM: add what the process held at the end
                    peak_rss_mib=median([r["peak_rss"] + r.get("hugetlb_after", 0)
                                         for r in ok]) / 2**20,
                    mmap_backed_mib=median([r["mmap_backed_bytes"] for r in ok]) / 2**20,
                    patch_ms=median([r.get("patch_seconds", 0) for r in ok]) * 1e3,
                    digest_checked=all(r.get("digest") is not None for r in ok),
                    background_cores=median([r.get("background_cores") for r in ok]),
                )
                hooks = [r["hook"] for r in ok if "hook" in r]
                if hooks:
                    row["chainio_files"] = min(h["chainio_files"] for h in hooks)
                    row["passthrough_files"] = max(h["passthrough_files"] for h in hooks)
                    row["reasons"] = sorted({x for h in hooks for x in h["reasons"]})
            rows.append(row)
    return rows


def targets(rows: list[dict], shards: int) -> list[dict]:
    def get(variant, cache):
        return next((r for r in rows if r["variant"] == variant and r["cache"] == cache
                     and r.get("runs")), None)

    out = []
    for cache, need in TARGETS.items():
        stock, hook = get("stock", cache), get("hook", cache)
        if not stock or not hook:
            continue
        ratio = stock["seconds"] / hook["seconds"]
        out.append({"target": f"{cache}: from_pretrained until weights are in memory, "
                              f"hook >= {need}x faster than stock (stock s / hook s)",
                    "ratio": ratio, "need": need, "met": ratio >= need})
        always = get("hook-always", cache)
        if always:
            out.append({"target": f"{cache}: same with mode=\"always\" (context: ChainIO reads "
                                  f"every shard)", "ratio": stock["seconds"] / always["seconds"],
                        "need": None, "met": None})
    mem, cold = get("memfault", "cold"), get("hook", "cold")
    if mem and cold:
        out.append({"target": f"cold: hook vs faulting in {cold['bytes'] / 2**30:.2f} GiB of fresh "
                              f"memory alone ({mem['seconds']:.2f} s, {os.cpu_count()} threads, "
                              f"no I/O, no model): context, the floor of any loader whose "
                              f"tensors own fresh 4 KiB pages (memfault s / hook s)",
                    "ratio": mem["seconds"] / cold["seconds"], "need": None, "met": None})
    if cold and "chainio_files" in cold:
        out.append({"target": f"cold: every shard served by ChainIO in every run "
                              f"({cold['chainio_files']} of {shards})",
                    "ratio": None, "need": None, "met": cold["chainio_files"] == shards})
    return out


def fmt_table(rows: list[dict], markdown: bool) -> str:
    head = ["variant", "cache", "runs", "seconds", "min-max", "GB/s", "call s", "touch s",
            "CPU s", "peak RSS MiB", "ChainIO shards"]
    lines = []
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    else:
        lines.append(f"{'variant':<41}{'cache':<6}{'runs':>5}{'seconds':>9}{'min-max':>13}"
                     f"{'GB/s':>7}{'call s':>8}{'touch s':>9}{'CPU s':>7}{'peak RSS':>10}"
                     f"  ChainIO shards")
    for r in rows:
        if not r.get("runs"):
            cells = [LABELS[r["variant"]], r["cache"], "0"] + ["-"] * 7 + [
                "FAILED: " + " | ".join(r.get("errors", []))]
        else:
            served = ""
            if "chainio_files" in r:
                served = f"{r['chainio_files']} (passed through: {r['passthrough_files']}"
                served += f"; {', '.join(r['reasons'])})" if r["reasons"] else ")"
            cells = [LABELS[r["variant"]], r["cache"], str(r["runs"]), f"{r['seconds']:.2f}",
                     f"{r['seconds_min']:.2f}-{r['seconds_max']:.2f}", f"{r['gbps']:.2f}",
                     f"{r['call_seconds']:.2f}", f"{r['materialize_seconds']:.2f}",
                     f"{r['cpu_seconds']:.2f}", f"{r['peak_rss_mib']:.0f}", served]
        if markdown:
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        else:
            lines.append(f"{cells[0]:<41}{cells[1]:<6}{cells[2]:>5}{cells[3]:>9}{cells[4]:>13}"
                         f"{cells[5]:>7}{cells[6]:>8}{cells[7]:>9}{cells[8]:>7}{cells[9]:>10}"
                         f"  {cells[10]}")
    return "\n".join(lines)


def patch_note(rows: list[dict]) -> str:
    ms = [r["patch_ms"] for r in rows if r.get("runs") and r["variant"] != "stock"]
    return (f"chainio_torch.patch() itself (before the clock, with torch and transformers "
            f"imported): median {median(ms):.1f} ms." if ms else "")


def title_of(payload: dict) -> str:
    m, c = payload["machine"], payload["config"]
    return (f"hf_bench: from_pretrained of a {c['bytes'] / 2**30:.2f} GiB Llama bf16 checkpoint "
            f"in {c['shards']} shards; {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}; "
            f"medians of {c['runs']}")


def plot(payload: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload["summary"] if r.get("runs")]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    colors = {"call_seconds": "#1f77b4", "materialize_seconds": "#ff7f0e"}
    labels, y = [], 0
    for cache in ("cold", "hot"):
        for r in [r for r in rows if r["cache"] == cache]:
            call, touch = r["call_seconds"], r["materialize_seconds"]
            if r["variant"] in REFS:
                ax.barh(y, call, color="#999999", label="reference (no I/O, no model)")
            else:
                ax.barh(y, call, color=colors["call_seconds"],
                        label="from_pretrained call" if y == 0 else None)
            ax.barh(y, touch, left=call, color=colors["materialize_seconds"],
                    label="touching mmap-backed pages" if y == 0 else None)
            ax.errorbar(r["seconds"], y, xerr=[[r["seconds"] - r["seconds_min"]],
                                                [r["seconds_max"] - r["seconds"]]],
                        color="black", capsize=3, lw=1)
            ax.text(r["seconds_max"], y, f"  {r['seconds']:.2f} s", va="center", fontsize=8)
            labels.append(f"{cache}: {LABELS[r['variant']]}")
            y += 1
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds until every parameter is in memory (median; bar = min-max)")
    ax.set_xlim(0, max(r["seconds_max"] for r in rows) * 1.2)
    ax.legend(fontsize=8, loc="center right")  # beside the short hot bars
    common.save_figure(fig, title_of(payload), png)


def write_markdown(payload: dict, path: str) -> None:
    c = payload["config"]
    warn = payload.get("noise_warning")
    lines = [
        *common.md_head("hf_bench", payload),
        f"Checkpoint: `{c['dir']}`, {c['bytes'] / 2**30:.2f} GiB of bf16 tensors "
        f"({c['tensors']} tensors, hidden {c['model']['hidden_size']}, "
        f"{c['model']['num_hidden_layers']} layers, vocab {c['model']['vocab_size']}) in "
        f"{c['shards']} shards.  ",
        common.md_versions(payload), "",
        *([f"Hugetlb pool for the run: +{c['hugetlb_pool']['granted']} pages of 2 MiB, touched "
           f"once before the first run; the hook's buffers come from it (stock cannot use it). "
           f"Peak RSS includes the hugetlb pages a process holds.", ""]
          if c.get("hugetlb_pool") else []),
        *([f"**Warning:** {warn}.", ""] if warn else
          [f"Machine otherwise idle: other processes used "
           f"{payload.get('background_cores_median') or 0:.2f} cores during the median run.", ""]),
        fmt_table(payload["summary"], markdown=True), "",
        common.fmt_targets(payload["targets"], markdown=True), "",
        patch_note(payload["summary"]), "",
        "![hf_bench](hf_bench.png)", "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_outputs(payload: dict, out: str) -> None:
    common.write_outputs(out, "hf_bench", payload, write_markdown, plot)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=2.05, help="checkpoint size (tensor bytes)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--dir", default=None, help="checkpoint directory (default "
                    "/var/tmp/chainio-bench/llama-<size>GiB); generated when missing")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--no-ref", action="store_true", help="skip the memfault reference runs")
    ap.add_argument("--hugetlb-pool", choices=("off", "auto"), default="off",
                    help="auto: grow vm.nr_hugepages by the checkpoint's size for the run and touch "
                         "it once (the hook's buffers come from it), restored at the end")
    common.add_run_args(ap, ROOT)
    args = ap.parse_args()

    if args.plot_only:
        common.replot(args.out, "hf_bench", write_markdown, plot)
        return 0
    variants = [x.strip() for x in args.variants.split(",") if x.strip()]
    if not variants or not set(variants) <= set(VARIANTS):
        ap.error(f"--variants takes a subset of {VARIANTS}")
    caches = [x.strip() for x in args.cache.split(",") if x.strip()]
    if not caches or not set(caches) <= {"cold", "hot"}:
        ap.error("--cache takes cold, hot or cold,hot")
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    if os.geteuid() != 0:
        ap.error("cold runs drop the page cache: run as root")

    directory = args.dir or gen_checkpoint.default_dir(args.size_gib, args.shards)
    stamp = gen_checkpoint.generate(directory, args.size_gib, args.shards)
    paths = load_worker.shard_files(directory)
    reference = load_worker.digest_from_files(paths)
    pool = None
    if args.hugetlb_pool == "auto":
        pool = common.reserve_hugetlb_pool(sum(os.path.getsize(p) for p in paths) + (128 << 20))
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
          f"kernel {info['kernel']}, disk {info['disk']}")
    print(f"checkpoint: {directory}: {stamp['tensor_bytes'] / 2**30:.2f} GiB, {len(paths)} shards, "
          f"{stamp['tensors']} tensors; {args.runs} runs per variant and cache state, "
          f"interleaved, each in a fresh process")
    command = "python3 bench/hf_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    env = {k: v for k, v in os.environ.items() if k.startswith(("CHAINIO_", "HF_", "OMP_"))}
    payload = {
        "benchmark": "hf_bench", "machine": info, "versions": common.versions(PACKAGES, ROOT),
        "config": {"command": command.strip(), "dir": directory, "bytes": stamp["tensor_bytes"],
                   "shards": len(paths), "tensors": stamp["tensors"], "model": stamp["config"],
                   "runs": args.runs, "variants": variants, "caches": caches,
                   "settle_s": args.settle_s, "environment": env,
                   "reference_digest": reference,
                   "hugetlb_pool": pool.describe() if pool else None},
    }

    # One untimed run first, so that Python, torch and transformers come from a warm disk.
    run_variant("stock", directory, args.timeout_s)

    results: list[dict] = []
    total = (len(caches) * len(variants) + (0 if args.no_ref or "cold" not in caches
                                            else len(REFS))) * args.runs
    start, done = time.time(), 0
    for rnd in range(args.runs):
        for cache in caches:
            names = variants + (REFS if cache == "cold" and not args.no_ref else [])
            k = rnd % len(names)
            for variant in names[k:] + names[:k]:
                if cache == "cold":
                    drop_caches()
                else:
                    warm_files(paths)
                time.sleep(args.settle_s)
                r = run_variant(variant, directory, args.timeout_s)
                if r.get("status") == "ok" and variant not in REFS and r.get("digest") != reference:
                    r.update(status="failed", error="sampled digest differs from the files'")
                r.update(cache=cache, round=rnd)
                results.append(r)
                done += 1
                what = (f"{r['seconds']:.2f} s" if r["status"] == "ok"
                        else f"FAILED: {r.get('error')}")
                print(f"[{done}/{total}] {cache} {variant}: {what}", flush=True)
        payload.update(runs=results, summary=summarize(results))
        payload["background_cores_median"] = median([r.get("background_cores") for r in results])
        payload["noise_warning"] = noise_warning(payload["background_cores_median"])
        payload["targets"] = targets(payload["summary"], len(paths))
        payload["elapsed_s"] = round(time.time() - start, 1)
        write_json(os.path.join(args.out, "hf_bench.json"), payload)  # partial results survive

    print()
    print(fmt_table(payload["summary"], markdown=False))
    print()
    print(common.fmt_targets(payload["targets"], markdown=False))
    print(patch_note(payload["summary"]))
    if payload.get("noise_warning"):
        print("\nWARNING: " + payload["noise_warning"])
    write_outputs(payload, args.out)
    print(f"\nwrote {args.out}/hf_bench.json, hf_bench.png and hf_bench.md "
          f"({payload['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
