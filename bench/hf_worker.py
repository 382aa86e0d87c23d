#!/usr/bin/env python3
"""One timed `from_pretrained` in a fresh process; prints one `RESULT {json}` line.

    python3 bench/hf_worker.py VARIANT CHECKPOINT_DIR

VARIANT is `stock` (transformers and safetensors as installed), `hook` (the same call after
`chainio_torch.patch()`, default "auto" mode) or `hook-always` (`patch(mode="always")`: ChainIO
reads every shard, even one already in the page cache); `memfault` is the reference
load_worker.py defines: fault in as much fresh memory as the checkpoint holds, read nothing.
Run by bench/hf_bench.py, once per run.

Outside the clock: importing torch, transformers and chainio_torch, importing the model's
modeling module (transformers loads it lazily on the first from_pretrained; that one-time import
costs ~2 s here and is the same for every variant), `patch()`, the baseline RSS. The clock runs
from just before `AutoModelForCausalLM.from_pretrained(dir, dtype=torch.bfloat16)` until every
parameter is in memory: without the hook the parameters map the shard files and nothing has been
read when from_pretrained returns, so, as in load_worker.py, every page of every mmap-backed
parameter is touched inside the timed region (reported apart as `materialize_seconds`).

After the clock: names, dtypes and shapes against the shard headers, a sampled digest of every
parameter (load_worker.check), and the hook's stats (how many shards ChainIO served).
"""

from __future__ import annotations

import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load_worker  # noqa: E402

VARIANTS = ("stock", "hook", "hook-always", "memfault")


def main() -> int:
    variant, directory = sys.argv[1], sys.argv[2]
    result: dict = {"variant": variant, "status": "ok"}
    try:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}")
        os.environ.setdefault("TQDM_DISABLE", "1")
        paths = load_worker.shard_files(directory)
        if variant == "memfault":  # the reference: fresh memory alone, no I/O, no model
            r = load_worker.memfault(paths)
            result.update(r, call_seconds=r["seconds"], materialize_seconds=0.0,
                          mmap_backed_bytes=0, digest=None)
            load_worker.emit_result(result)
        import torch
        import transformers

        import chainio_torch

        config = transformers.AutoConfig.from_pretrained(directory)
        # The modeling module, imported once outside the clock (the same for every variant).
        arch = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        result["model_class"] = arch.__name__
        patch_s = 0.0
        if variant != "stock":
            t = time.perf_counter()
            chainio_torch.patch(mode="always" if variant == "hook-always" else "auto")
            patch_s = time.perf_counter() - t
        result["torch_threads"] = torch.get_num_threads()
        result["module"] = chainio_torch.__file__
        before = load_worker.status()
        cpu0 = load_worker.cpu_seconds()
        t0 = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
        t1 = time.perf_counter()
        params = model.state_dict()
        touched, touched_bytes = load_worker.materialize_mmapped(params, paths)
        t2 = time.perf_counter()
        cpu1 = load_worker.cpu_seconds()
        after = load_worker.status()
        result.update(
            seconds=t2 - t0, call_seconds=t1 - t0, materialize_seconds=t2 - t1,
            patch_seconds=patch_s, cpu_seconds=cpu1 - cpu0,
            bytes=sum(t.numel() * t.element_size() for t in params.values()),
            tensors=len(params), mmap_backed_tensors=touched, mmap_backed_bytes=touched_bytes,
            rss_before=before.get("VmRSS"), peak_rss=after.get("VmHWM"),
            hugetlb_after=after.get("HugetlbPages", 0),
            rss_after=after.get("VmRSS"), threads_after=after.get("Threads"),
        )
        if variant != "stock":
            s = chainio_torch.stats()
            result["hook"] = {
                "chainio_files": s["chainio"]["files"], "chainio_bytes": s["chainio"]["bytes"],
                "passthrough_files": s["passthrough"]["files"],
                "readahead_unused_bytes": sum(e["readahead_unused_bytes"]
                                              for e in s["paths"].values()),
                "reasons": sorted({r for e in s["paths"].values() for r in e["reasons"]}),
            }
            result["engine"] = chainio_torch.default_engine().stats()
        problems, digest = load_worker.check(params, paths)
        result.update(digest=digest, problems=problems)
        if problems:
            result.update(status="failed", error="; ".join(problems))
    except BaseException as e:  # noqa: BLE001  (a failed run is a result, not a crash)
        result.update(status="failed", error=f"{type(e).__name__}: {e}"[:500],
                      traceback=traceback.format_exc()[-2000:])
    load_worker.emit_result(result)


if __name__ == "__main__":
    main()
