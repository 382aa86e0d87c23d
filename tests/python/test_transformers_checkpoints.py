"""Checkpoints written by transformers' save_pretrained (sharded) load bit-exactly."""

import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
st = pytest.importorskip("safetensors.torch")

import chainio_torch  # noqa: E402
from chainio_torch.loader import checkpoint_files, same_bytes  # noqa: E402


def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg)


def tiny_gpt2():
    cfg = transformers.GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    return transformers.GPT2LMHeadModel(cfg)


@pytest.mark.parametrize("make, dtype", [(tiny_llama, torch.bfloat16), (tiny_llama, torch.float32),
                                          (tiny_gpt2, torch.float16)],
                         ids=["llama-bf16", "llama-f32", "gpt2-f16"])
def test_sharded_save_pretrained_loads_bit_exact(tmp_path, make, dtype):
    torch.manual_seed(0)
    model = make().to(dtype)
    model.save_pretrained(tmp_path, max_shard_size="100KB", safe_serialization=True)
    files = checkpoint_files(tmp_path)
    assert len(files) > 2, "the checkpoint is sharded"
    assert os.path.exists(tmp_path / "model.safetensors.index.json")

    ours = chainio_torch.load_checkpoint(tmp_path)
    reference = {}
    for f in files:
        reference.update(st.load_file(f))
    assert sorted(ours) == sorted(reference)
    for name, t in reference.items():
        assert same_bytes(ours[name], t), name
    # And the weights are the model's own (save_pretrained may drop tied duplicates).
    state = model.state_dict()
    for name, t in ours.items():
        assert same_bytes(t, state[name].contiguous()), name
