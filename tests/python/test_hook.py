"""chainio_torch.patch(): safetensors and Hugging Face code load through ChainIO, unchanged."""

import gc
import json
import os
import site
import subprocess
import sys
import textwrap
import types

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors")
import safetensors.torch as st  # noqa: E402
import transformers.modeling_utils as tmu  # noqa: E402

import chainio_torch  # noqa: E402
from chainio_torch import hook  # noqa: E402
from chainio_torch.loader import checkpoint_files, read_header, same_bytes  # noqa: E402

ORIGINALS = {
    "safetensors.safe_open": safetensors.safe_open,
    "safetensors.torch.load_file": st.load_file,
    "safetensors.torch.load": st.load,
    "safetensors.torch.safe_open": st.safe_open,
    "transformers.modeling_utils.safe_open": tmu.safe_open,
    "transformers.modeling_utils._safe_load_bytes": tmu._safe_load_bytes,
}


def current():
    return {
        "safetensors.safe_open": safetensors.safe_open,
        "safetensors.torch.load_file": st.load_file,
        "safetensors.torch.load": st.load,
        "safetensors.torch.safe_open": st.safe_open,
        "transformers.modeling_utils.safe_open": tmu.safe_open,
        "transformers.modeling_utils._safe_load_bytes": tmu._safe_load_bytes,
    }


@pytest.fixture(autouse=True)
def clean_hook():
    """Every test starts and ends unpatched with empty stats, even when it fails."""
    chainio_torch.unpatch()
    chainio_torch.reset_stats()
    yield
    chainio_torch.unpatch()
    chainio_torch.reset_stats()
    assert current() == ORIGINALS


@pytest.fixture
def workdir(tmp_path_factory):
    d = os.path.join(os.environ.get("CHAINIO_TEST_DIR", "/var/tmp"), f"chainio-hook-{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def evict(paths):
    """Drop the files from the page cache (they were just written: flush them first)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg)


def tiny_gpt2():
    cfg = transformers.GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    return transformers.GPT2LMHeadModel(cfg)


def save_sharded(make, directory, dtype=torch.float32):
    torch.manual_seed(0)
    model = make().to(dtype)
    model.save_pretrained(directory, max_shard_size="100KB")
    files = checkpoint_files(directory)
    assert len(files) > 2, "the checkpoint is sharded"
    return files


def load_and_run(directory):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory)
    model.eval()
    ids = torch.tensor([[1, 17, 42, 300, 5, 9, 128, 511]])
    with torch.no_grad():
        logits = model(ids).logits
    # Copies: without the hook the parameters map the files, and mapped pages cannot be evicted.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del model
    gc.collect()
    return state, logits


@pytest.mark.parametrize("make, dtype", [(tiny_llama, torch.bfloat16), (tiny_gpt2, torch.float32)],
                         ids=["llama-bf16", "gpt2-f32"])
def test_from_pretrained_reads_every_shard_through_chainio(workdir, make, dtype):
    files = save_sharded(make, workdir, dtype)
    ref_state, ref_logits = load_and_run(workdir)
    assert chainio_torch.stats()["chainio"]["calls"] == 0  # nothing counted while unpatched

    evict(files)  # cold, so the default "auto" mode serves them
    original_lookup = tmu._get_resolved_checkpoint_files
    with chainio_torch.patched():
        assert tmu.safe_open is hook.safe_open
        assert tmu._get_resolved_checkpoint_files is hook._get_resolved_checkpoint_files
        state, logits = load_and_run(workdir)
    assert tmu._get_resolved_checkpoint_files is original_lookup
    s = chainio_torch.stats()

    assert sorted(state) == sorted(ref_state)
    for name, t in ref_state.items():
        assert same_bytes(state[name], t), name
    assert torch.equal(logits, ref_logits)
    # Every shard was opened by ChainIO and every byte of its data region read by it.
    for f in files:
        entry = s["paths"][os.path.abspath(f)]
        assert entry["chainio_calls"] >= 1, (f, entry)
        assert entry["chainio_bytes"] == read_header(f).data_bytes, (f, entry)
        assert entry["passthrough_calls"] == 0, (f, entry)
        assert entry["readahead_unused_bytes"] == 0, (f, entry)  # all it read ahead was used
        # The shard lookup started every shard's read before the model was built.
        assert entry["prefetched_bytes"] == read_header(f).data_bytes, (f, entry)
    assert s["chainio"]["files"] == len(files)
    assert s["passthrough"]["files"] == 0
    # And the parameters live in ChainIO's memory, not in a mapping of the files.
    with open("/proc/self/maps") as m:
        mapped = {line.split(maxsplit=5)[5].strip() for line in m if len(line.split()) == 6}
    assert not mapped & {os.path.realpath(f) for f in files}


def test_auto_mode_leaves_cached_files_to_safetensors_mmap(workdir):
    path = os.path.join(workdir, "hot.safetensors")
    tensors = {"a": torch.randn(256, 256), "b": torch.arange(1000)}
    st.save_file(tensors, path)
    with open(path, "rb") as f:
        f.read()  # in the page cache
    assert hook.resident_fraction(path) == 1.0
    chainio_torch.patch()
    out = st.load_file(path)
    assert all(same_bytes(out[k], tensors[k]) for k in tensors)
    e = chainio_torch.stats()["paths"][path]
    assert e["chainio_calls"] == 0 and e["passthrough_calls"] == 1
    assert e["reasons"] == ["in the page cache (safetensors maps it)"]
    assert e["passthrough_bytes"] == os.path.getsize(path)
    del out  # safetensors' tensors map the file: mapped pages cannot be evicted
    gc.collect()

    evict([path])
    assert hook.resident_fraction(path) < 0.5
    out = st.load_file(path)
    assert all(same_bytes(out[k], tensors[k]) for k in tensors)
    e = chainio_torch.stats()["paths"][path]
    assert e["chainio_calls"] == 1 and e["chainio_bytes"] == read_header(path).data_bytes

    chainio_torch.patch(mode="always")  # hot or not
    st.load_file(path)
    assert chainio_torch.stats()["paths"][path]["chainio_calls"] == 2


def test_safe_open_is_lazy_and_behaves_like_the_original(workdir):
    path = os.path.join(workdir, "lazy.safetensors")
    tensors = {"w": torch.randn(64, 48).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64),
               "s": torch.tensor(3.5)}
    st.save_file(tensors, path, metadata={"format": "pt", "k": "v"})
    ref = safetensors.safe_open(path, framework="pt")
    chainio_torch.patch(mode="always")
    with safetensors.safe_open(path, framework="pt", device="cpu", backend="mmap") as f:
        assert type(f) is not type(ref) and isinstance(f, safetensors.safe_open)
        assert isinstance(ref, safetensors.safe_open)  # the original's objects still pass
        assert chainio_torch.stats()["paths"][path]["chainio_bytes"] == 0  # header only
        assert same_bytes(f.get_tensor("b"), tensors["b"])
        assert chainio_torch.stats()["paths"][path]["chainio_bytes"] == 7 * 8  # just that tensor
        assert f.keys() == ref.keys() and f.offset_keys() == ref.offset_keys()
        assert f.metadata() == ref.metadata()
        sl, rsl = f.get_slice("w"), ref.get_slice("w")
        assert sl.get_shape() == rsl.get_shape() and sl.get_dtype() == rsl.get_dtype() == "BF16"
        for index in ((slice(3, 9),), (slice(None), slice(0, 5)), (Ellipsis,), (5,), (-1, 2)):
            assert same_bytes(sl[index].contiguous(), rsl[index].contiguous()), index
        got = f.get_tensors()
        assert list(got) == list(ref.get_tensors())
        assert all(same_bytes(got[k], tensors[k]) for k in tensors)
        with pytest.raises(safetensors.SafetensorError, match="does not contain tensor nope"):
            f.get_tensor("nope")
    with pytest.raises(safetensors.SafetensorError, match="File is closed"):
        f.get_tensor("w")
    with pytest.raises(safetensors.SafetensorError, match="File is closed"):
        f.keys()


def test_what_the_hook_cannot_serve_goes_to_the_original(workdir):
    path = os.path.join(workdir, "p.safetensors")
    tensors = {"a": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    st.save_file(tensors, path)
    orig_safe_open = ORIGINALS["safetensors.safe_open"]
    chainio_torch.patch(mode="always")

    f = safetensors.safe_open(path, framework="numpy")
    assert type(f) is orig_safe_open
    assert (f.get_tensor("a") == tensors["a"].numpy()).all()
    with pytest.raises(safetensors.SafetensorError, match="device meta is invalid"):
        safetensors.safe_open(path, framework="pt", device="meta")  # the original's own error
    with pytest.raises(safetensors.SafetensorError, match="backend"):
        safetensors.safe_open(path, framework="pt", backend="nope")
    with pytest.raises(TypeError):
        st.load_file(path, surprise=True)  # the original's own error
    with open(path, "rb") as fh:
        data = fh.read()
    assert same_bytes(st.load(data)["a"], tensors["a"])
    assert same_bytes(st.load_file(path, backend="pread")["a"], tensors["a"])  # served

    s = chainio_torch.stats()
    e = s["paths"][path]
    assert sorted(e["reasons"]) == ["backend 'nope'", "device 'meta'", "framework 'numpy'",
                                    "options surprise"]
    assert e["passthrough_calls"] == 4 and e["passthrough_bytes"] == 4 * os.path.getsize(path)
    assert e["chainio_calls"] == 1
    assert s["paths"]["<bytes>"] == {"chainio_calls": 0, "chainio_bytes": 0,
                                     "passthrough_calls": 1, "passthrough_bytes": len(data),
                                     "readahead_unused_bytes": 0, "prefetched_bytes": 0,
                                     "reasons": ["bytes in memory"]}
    assert s["passthrough"] == {"files": 2, "calls": 5, "bytes": 4 * len(data) + len(data)}


def test_unpatch_restores_every_original_and_patching_twice_is_harmless():
    early = types.ModuleType("chainio_hook_test_early")  # bound the originals before the patch
    early.load_file, early.safe_open = st.load_file, safetensors.safe_open
    sys.modules[early.__name__] = early
    try:
        chainio_torch.patch()
        chainio_torch.patch()
        assert chainio_torch.stats()["patched"]
        assert safetensors.safe_open is tmu.safe_open is early.safe_open is hook.safe_open
        assert st.load_file is early.load_file is hook.load_file
        assert st.load is tmu._safe_load_bytes is hook.load
        # safetensors' own load_file keeps the original safe_open, so a pass-through runs as before.
        assert st.safe_open is ORIGINALS["safetensors.safe_open"]

        late = types.ModuleType("chainio_hook_test_late")  # imported while patched
        exec("from safetensors.torch import load_file\nfrom safetensors import safe_open",
             late.__dict__)
        sys.modules[late.__name__] = late
        assert late.load_file is hook.load_file

        del sys.modules[early.__name__]  # gone from sys.modules, still referenced: restored too
        chainio_torch.unpatch()
        assert current() == ORIGINALS
        assert all(a is b for a, b in zip(current().values(), ORIGINALS.values()))
        assert early.load_file is late.load_file is ORIGINALS["safetensors.torch.load_file"]
        assert early.safe_open is late.safe_open is ORIGINALS["safetensors.safe_open"]
        assert not chainio_torch.stats()["patched"]
        chainio_torch.unpatch()  # twice: harmless
        assert current() == ORIGINALS
    finally:
        sys.modules.pop("chainio_hook_test_early", None)
        sys.modules.pop("chainio_hook_test_late", None)


def test_patched_context_restores_on_error_and_keeps_an_outer_patch():
    with pytest.raises(RuntimeError):
        with chainio_torch.patched():
            assert safetensors.safe_open is hook.safe_open
            raise RuntimeError("boom")
    assert current() == ORIGINALS
    chainio_torch.patch()
    with chainio_torch.patched(mode="always"):
        assert chainio_torch.stats()["mode"] == "always"
    assert safetensors.safe_open is hook.safe_open and chainio_torch.stats()["mode"] == "auto"
    with pytest.raises(ValueError, match="mode must be one of"):
        chainio_torch.patch(mode="sometimes")


def test_malformed_shard_raises_what_except_safetensor_error_catches(workdir):
    files = save_sharded(tiny_llama, workdir)
    bad = files[1]
    with open(bad, "r+b") as f:  # the header's JSON loses its first brace
        f.seek(8)
        f.write(b"[")
    evict(files)
    with chainio_torch.patched(mode="always"):
        with pytest.raises(safetensors.SafetensorError) as err:
            transformers.AutoModelForCausalLM.from_pretrained(workdir)
        assert isinstance(err.value, chainio_torch.SafetensorError)  # raised by ChainIO's parser
        assert bad in str(err.value)
        with pytest.raises(safetensors.SafetensorError):
            st.load_file(bad)
        try:
            with safetensors.safe_open(bad, framework="pt"):
                pass
        except safetensors.SafetensorError as e:  # what user code writes
            assert isinstance(e, ValueError)
        else:
            pytest.fail("a malformed file opened")


def installed_pth():
    for d in site.getsitepackages() + [site.getusersitepackages()]:
        p = os.path.join(d, "chainio_autopatch.pth")
        if os.path.exists(p):
            return p
    return None


AUTOPATCH_SCRIPT = textwrap.dedent("""
    import json, os, sys
    early = {m: m in sys.modules for m in ("torch", "safetensors", "chainio_torch")}
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])
    import safetensors, transformers.modeling_utils as tmu
    out = {"early": early, "safe_open": f"{safetensors.safe_open.__module__}",
           "tmu_safe_open": f"{tmu.safe_open.__module__}"}
    if "chainio_torch" in sys.modules:
        import chainio_torch
        out["stats"] = chainio_torch.stats()
    print("RESULT " + json.dumps(out))
""")


def test_autopatch_env_patches_without_code_changes(workdir, tmp_path):
    assert installed_pth(), ("chainio_autopatch.pth is not in site-packages: install the package "
                             "with pip (the wheel puts it there)")
    files = save_sharded(tiny_llama, workdir)
    script = tmp_path / "user_script.py"
    script.write_text(AUTOPATCH_SCRIPT)

    def run(**env):
        e = {k: v for k, v in os.environ.items() if not k.startswith("CHAINIO_")}
        e.update(env)
        p = subprocess.run([sys.executable, str(script), workdir], capture_output=True, text=True,
                           cwd=tmp_path, env=e, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
        return json.loads(line[len("RESULT "):])

    evict(files)
    on = run(CHAINIO_AUTOPATCH="1")
    assert on["early"] == {"torch": False, "safetensors": False, "chainio_torch": True}
    assert on["safe_open"] == on["tmu_safe_open"] == "chainio_torch.hook"
    assert on["stats"]["chainio"]["files"] == len(files)
    assert on["stats"]["passthrough"]["files"] == 0
    # transformers.modeling_utils was imported after the patch: its shard lookup got patched
    # on import, so every shard was prefetched.
    assert all(v["prefetched_bytes"] > 0 for v in on["stats"]["paths"].values()), on["stats"]

    for value in (None, "0", ""):
        off = run(**({} if value is None else {"CHAINIO_AUTOPATCH": value}))
        assert off["early"]["chainio_torch"] is False, value
        assert off["safe_open"] == "builtins" and off["tmu_safe_open"] == "builtins", value
        assert "stats" not in off, value


def test_autopatch_pth_line_does_nothing_when_unset(monkeypatch):
    line = open(installed_pth() or pytest.fail("chainio_autopatch.pth missing")).read().strip()
    assert line.startswith("import ") and "\n" not in line
    monkeypatch.delenv("CHAINIO_AUTOPATCH", raising=False)
    before = set(sys.modules), list(sys.meta_path)
    exec(line, {})
    assert (set(sys.modules), list(sys.meta_path)) == before


def test_torch_save_of_what_the_hook_loaded(workdir):
    # A safetensors -> .bin conversion: torch.save must take what load_file returned.
    import io

    path = os.path.join(workdir, "convert.safetensors")
    tensors = {"w": torch.randn(4, 4).to(torch.bfloat16), "s": torch.randn(4)}
    st.save_file(tensors, path)
    chainio_torch.patch(mode="always")
    got = st.load_file(path)
    assert chainio_torch.stats()["paths"][path]["chainio_bytes"] > 0
    saved = io.BytesIO()
    torch.save(got, saved)
    back = torch.load(io.BytesIO(saved.getvalue()))
    assert all(same_bytes(back[k], tensors[k]) for k in tensors)


def test_errors_of_the_original_keep_their_type_under_the_hook():
    # /dev/null: safetensors raises OSError; so must the hook (not its own SafetensorError).
    try:
        st.load_file("/dev/null")
    except Exception as e:  # noqa: BLE001
        unpatched = type(e)
    else:
        pytest.skip("this safetensors loads /dev/null")
    chainio_torch.patch(mode="always")
    with pytest.raises(Exception) as info:
        st.load_file("/dev/null")
    assert type(info.value) is unpatched, (type(info.value), unpatched)
