#!/usr/bin/env python3
"""Hugging Face `from_pretrained` through ChainIO, without changing the loading code.

    python3 examples/load_hf_model.py [--dir DIR] [--keep]

Builds a small Llama-style model from a config (random weights, nothing downloaded), saves it
with `save_pretrained` in several shards, then loads it back twice with the same line,
`AutoModelForCausalLM.from_pretrained(dir)`: once as is (safetensors maps the shards) and once
inside `with chainio_torch.patched():` (ChainIO reads them with io_uring). Before each load the
shards are dropped from the page cache (`posix_fadvise(DONTNEED)`), so both start cold. The
logits of both models for the same input must be identical; the script prints both load times
and what `chainio_torch.stats()` counted.

The same happens with no code change at all: `CHAINIO_AUTOPATCH=1 python3 your_script.py`.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' per-weight progress bar

import torch  # noqa: E402
import transformers  # noqa: E402

import chainio_torch  # noqa: E402


def evict(directory: str) -> None:
    for name in os.listdir(directory):
        if name.endswith(".safetensors"):
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def load(directory: str, ids: torch.Tensor):
    evict(directory)
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    t1 = time.perf_counter()
    with torch.no_grad():
        logits = model(ids).logits
    t2 = time.perf_counter()
    del model
    gc.collect()
    return logits, t1 - t0, t2 - t1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="where to save the model (default: a temporary directory "
                    "under /var/tmp, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the saved model")
    args = ap.parse_args()
    base = "/var/tmp" if os.path.isdir("/var/tmp") else None
    directory = args.dir or tempfile.mkdtemp(prefix="chainio-hf-example-", dir=base)
    try:
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(
            vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
            num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
            tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
        model.save_pretrained(directory, max_shard_size="30MB")
        shards = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
        size = sum(os.path.getsize(os.path.join(directory, n)) for n in shards)
        print(f"saved a Llama-style model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
              f"parameters, bf16) to {directory}: {len(shards)} shards, {size / 2**20:.1f} MiB")
        del model
        gc.collect()

        ids = torch.tensor([[1, 306, 4966, 263, 1243, 29889, 450, 4996]])
        # Loads the model code once, so that neither timed load pays for Python imports.
        transformers.AutoModelForCausalLM.from_config(cfg)

        plain, t_plain, f_plain = load(directory, ids)
        with chainio_torch.patched():
            hooked, t_hook, f_hook = load(directory, ids)
        s = chainio_torch.stats()

        print(f"{'':24}{'from_pretrained':>16}{'first forward':>15}{'total':>9}")
        print(f"{'without the hook':24}{t_plain:>14.3f} s{f_plain:>13.3f} s"
              f"{t_plain + f_plain:>7.3f} s   (weights mapped, read as they are first used)")
        print(f"{'with chainio_torch hook':24}{t_hook:>14.3f} s{f_hook:>13.3f} s"
              f"{t_hook + f_hook:>7.3f} s   (weights read into memory by ChainIO)")
        served = s["chainio"]
        print(f"ChainIO served {served['files']} of {len(shards)} shards, "
              f"{served['bytes'] / 2**20:.1f} MiB in {served['calls']} opens; passed through: "
              f"{s['passthrough']['files']} files")
        for path, e in sorted(s["paths"].items()):
            if e["passthrough_calls"]:
                print(f"  passed through {os.path.basename(path)}: {', '.join(e['reasons'])}")
        same = torch.equal(plain, hooked)
        print(f"logits identical: {'yes' if same else 'NO'}")
        return 0 if same and served["files"] == len(shards) else 1
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
