#!/usr/bin/env python3
"""Write a synthetic Llama-shaped checkpoint in the Hugging Face sharded safetensors layout.

    python3 -m chainio_torch.synth [--size-gib 4] [--shards 4] [--dir DIR]   (or bench/gen_checkpoint.py)

The files are written by the real `safetensors` package (`safetensors.torch.save_file`):
`model-0000i-of-0000N.safetensors`, `model.safetensors.index.json` (metadata.total_size and
weight_map) and a `config.json` that describes the model. Tensor names and shapes are those of
a Llama model (embed_tokens, per layer q/k/v/o_proj, gate/up/down_proj, input_layernorm,
post_attention_layernorm, then norm and an untied lm_head); the hidden size is picked from a
ladder so that the two vocabulary matrices stay below a quarter of the requested size and the
layer count makes up the rest (4 GiB -> hidden 2048, intermediate 5632, vocabulary 128256,
34 layers: 3.97 GiB, 309 tensors). Shards are filled in tensor order, as `save_pretrained`
does, each up to 1/N of the total.

Values are N(0, 0.02) in bf16 (norm weights are 1, as in a fresh Llama), copied from a 64 MiB
pool of `torch.randn` at a random offset for every 32 MiB: no NaN or Inf, no two tensors alike,
and fast (generating every value with randn runs at ~0.3 GB/s on this machine).

Idempotent: a `chainio-gen.json` stamp written last records the spec and the file sizes; a
directory whose stamp matches the requested spec and whose files have the recorded sizes is
left alone. Anything else in the directory named like a shard or index is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

STAMP = "chainio-gen.json"
GENERATOR_VERSION = 1
POOL_BYTES = 64 << 20
HEAD_DIM = 128


def llama_config(target_bytes: int, dtype_bytes: int = 2) -> dict:
    """A Llama config whose checkpoint is close to ``target_bytes``."""
    ladder = [256, 512, 768, 1024, 1536, 2048, 2560, 3072, 4096, 5120, 6144, 8192]
    best = None
    for hidden in ladder:
        vocab = 128256 if hidden >= 2048 else 32000
        cfg = _config(hidden, vocab, 1)
        emb = 2 * vocab * hidden * dtype_bytes
        per_layer = layer_params(cfg) * dtype_bytes
        layers = round((target_bytes - emb - hidden * dtype_bytes) / per_layer)
        if emb <= target_bytes / 4 and layers >= 2:
            best = (hidden, vocab, layers)
    if best is None:  # tiny request: smallest model, at least 2 layers
        hidden, vocab = 256, 32000
        cfg = _config(hidden, vocab, 1)
        per_layer = layer_params(cfg) * dtype_bytes
        best = (hidden, vocab,
                max(2, round((target_bytes - 2 * vocab * hidden * dtype_bytes) / per_layer)))
    hidden, vocab, layers = best
    return _config(hidden, vocab, layers)


def _config(hidden: int, vocab: int, layers: int) -> dict:
    heads = max(1, hidden // HEAD_DIM)
    kv_heads = min(8, heads)
    intermediate = (int(8 * hidden / 3) + 255) // 256 * 256  # Llama's multiple_of=256 rule
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": HEAD_DIM if hidden >= HEAD_DIM else hidden // heads,
        "vocab_size": vocab,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def layer_params(cfg: dict) -> int:
    return sum(_numel(shape) for _, shape in _layer_tensors(cfg, 0))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _layer_tensors(cfg: dict, i: int):
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    p = f"model.layers.{i}."
    return [
        (p + "input_layernorm.weight", (h,)),
        (p + "self_attn.q_proj.weight", (q, h)),
        (p + "self_attn.k_proj.weight", (kv, h)),
        (p + "self_attn.v_proj.weight", (kv, h)),
        (p + "self_attn.o_proj.weight", (h, q)),
        (p + "post_attention_layernorm.weight", (h,)),
        (p + "mlp.gate_proj.weight", (inter, h)),
        (p + "mlp.up_proj.weight", (inter, h)),
        (p + "mlp.down_proj.weight", (h, inter)),
    ]


def tensor_list(cfg: dict) -> list[tuple[str, tuple]]:
    """(name, shape) in the order save_pretrained writes them."""
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        out += _layer_tensors(cfg, i)
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


def split_shards(tensors: list[tuple[str, tuple]], shards: int, dtype_bytes: int) -> list[list]:
    """Contiguous groups in tensor order; a tensor goes to the shard its middle byte falls in."""
    total = sum(_numel(s) for _, s in tensors) * dtype_bytes
    groups: list[list] = [[] for _ in range(shards)]
    pos = 0
    for name, shape in tensors:
        n = _numel(shape) * dtype_bytes
        idx = min(shards - 1, int((pos + n / 2) * shards // total))
        groups[idx].append((name, shape))
        pos += n
    # Never leave a shard empty (tiny checkpoints, many shards): borrow from a neighbour.
    for i in range(shards):
        if not groups[i]:
            donor = max(range(shards), key=lambda j: len(groups[j]))
            if donor < i:
                groups[i].insert(0, groups[donor].pop())
            else:
                groups[i].append(groups[donor].pop(0))
    return groups


def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def spec_of(args) -> dict:
    return {"generator_version": GENERATOR_VERSION, "size_bytes": int(args.size_gib * 2**30),
            "shards": args.shards, "dtype": "bfloat16", "seed": args.seed}


def is_complete(directory: str, spec: dict) -> bool:
    try:
        with open(os.path.join(directory, STAMP)) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return False
    if stamp.get("spec") != spec:
        return False
    for name, size in stamp.get("files", {}).items():
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return False
    return bool(stamp.get("files")) and all(
        os.path.isfile(os.path.join(directory, n))
        for n in ("model.safetensors.index.json", "config.json"))


def generate(directory: str, size_gib: float = 4, shards: int = 4, seed: int = 0,
             quiet: bool = False) -> dict:
    """Make sure ``directory`` holds the requested checkpoint; returns its stamp."""
    args = argparse.Namespace(size_gib=size_gib, shards=shards, seed=seed)
    spec = spec_of(args)
    if is_complete(directory, spec):
        with open(os.path.join(directory, STAMP)) as f:
            return json.load(f)

    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    dtype_bytes = 2
    cfg = llama_config(spec["size_bytes"], dtype_bytes)
    tensors = tensor_list(cfg)
    groups = split_shards(tensors, shards, dtype_bytes)
    total = sum(_numel(s) for _, s in tensors) * dtype_bytes
    largest_shard = max(sum(_numel(s) for _, s in g) for g in groups) * dtype_bytes
    if 2 * largest_shard > 12 * 2**30:
        raise SystemExit(f"a shard of {largest_shard / 2**30:.1f} GiB needs ~2x that in memory "
                         f"while safetensors writes it: use more --shards")

    os.makedirs(directory, exist_ok=True)
    if os.path.exists(os.path.join(directory, STAMP)):
        os.unlink(os.path.join(directory, STAMP))
    for name in os.listdir(directory):  # stale shards of another spec
        if name.startswith("model-") and name.endswith(".safetensors"):
            os.unlink(os.path.join(directory, name))

    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(POOL_BYTES // dtype_bytes, generator=gen, dtype=torch.float32).mul_(0.02)
    pool = pool.to(torch.bfloat16)
    pool_n = pool.numel()
    block = pool_n // 2

    def fill(shape) -> torch.Tensor:
        t = torch.empty(shape, dtype=torch.bfloat16)
        flat = t.view(-1)
        for start in range(0, flat.numel(), block):
            n = min(block, flat.numel() - start)
            off = int(torch.randint(0, pool_n - n + 1, (1,), generator=gen))
            flat[start:start + n].copy_(pool[off:off + n])
        return t

    weight_map, files = {}, {}
    bar = tqdm(total=total, unit="B", unit_scale=True,
               desc=f"writing {os.path.basename(directory)}", disable=quiet)
    for i, group in enumerate(groups):
        name = shard_name(i, shards)
        state = {}
        for tname, shape in group:
            state[tname] = torch.ones(shape, dtype=torch.bfloat16) if tname.endswith(
                "norm.weight") else fill(shape)
            weight_map[tname] = name
            bar.update(_numel(shape) * dtype_bytes // 2)
        tmp = os.path.join(directory, name + ".tmp")
        save_file(state, tmp, metadata={"format": "pt"})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, name))
        files[name] = os.path.getsize(os.path.join(directory, name))
        bar.update(sum(_numel(s) for _, s in group) * dtype_bytes
                   - sum(_numel(s) * dtype_bytes // 2 for _, s in group))
        del state
    bar.close()

    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    for fname, payload in (("model.safetensors.index.json", index), ("config.json", cfg)):
        with open(os.path.join(directory, fname), "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
    stamp = {"spec": spec, "config": cfg, "tensor_bytes": total, "tensors": len(tensors),
             "files": files}
    with open(os.path.join(directory, STAMP + ".tmp"), "w") as f:
        json.dump(stamp, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(os.path.join(directory, STAMP + ".tmp"), os.path.join(directory, STAMP))
    return stamp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=4,
                    help="target checkpoint size (tensor bytes)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--dir", default=None,
                    help="output directory (default /var/tmp/chainio-bench/llama-<size>GiB"
                         "[-<shards>shards])")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.shards < 1 or args.size_gib <= 0:
        ap.error("--shards must be >= 1 and --size-gib > 0")
    directory = args.dir or default_dir(args.size_gib, args.shards)
    before = is_complete(directory, spec_of(args))
    stamp = generate(directory, args.size_gib, args.shards, args.seed)
    cfg = stamp["config"]
    print(f"{'kept' if before else 'wrote'} {directory}: {stamp['tensor_bytes'] / 2**30:.2f} GiB "
          f"in {len(stamp['files'])} shards, {stamp['tensors']} tensors (hidden "
          f"{cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, vocab {cfg['vocab_size']})")
    return 0


def default_dir(size_gib: float, shards: int) -> str:
    size = f"{size_gib:g}".replace(".", "p")
    suffix = "" if shards == 4 else f"-{shards}shards"
    return f"/var/tmp/chainio-bench/llama-{size}GiB{suffix}"


if __name__ == "__main__":
    sys.exit(main())
