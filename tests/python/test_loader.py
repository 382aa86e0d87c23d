"""chainio_torch.load_file / safe_open / load_checkpoint against safetensors on real files."""

import json
import os
import struct
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")
import safetensors  # noqa: E402

import chainio_torch  # noqa: E402
from chainio_torch import SafetensorError  # noqa: E402
from chainio_torch.loader import _load_staged, read_header, same_bytes  # noqa: E402

# Every torch dtype safetensors can write with this torch.
DTYPES = [d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
    getattr(torch, "uint16", None), getattr(torch, "uint32", None), getattr(torch, "uint64", None),
    getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None),
    getattr(torch, "float8_e8m0fnu", None),
) if d is not None]


def random_tensor(shape, dtype, gen):
    n = 1
    for s in shape:
        n *= s
    raw = torch.randint(0, 256, (n * torch.empty((), dtype=dtype).element_size(),), dtype=torch.uint8,
                        generator=gen)
    if dtype == torch.bool:
        return (raw % 2).bool().reshape(shape)
    return raw.view(dtype).reshape(shape)


@pytest.fixture
def workdir(tmp_path_factory):
    d = os.path.join(os.environ.get("CHAINIO_TEST_DIR", "/var/tmp"), f"chainio-loader-{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in b:
        assert same_bytes(a[k], b[k]), k


def test_every_dtype_odd_shapes_empty_and_scalar(workdir):
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dtype in enumerate(DTYPES):
        tensors[f"t{i}_odd"] = random_tensor((3, 7, 5), dtype, gen)
        tensors[f"t{i}_scalar"] = random_tensor((), dtype, gen)
        tensors[f"t{i}_empty"] = random_tensor((0, 4), dtype, gen)
        tensors[f"t{i}_prime"] = random_tensor((4099,), dtype, gen)
    path = os.path.join(workdir, "dtypes.safetensors")
    st.save_file(tensors, path, metadata={"format": "pt", "note": "x"})
    ours = chainio_torch.load_file(path)
    assert_same(ours, st.load_file(path))
    assert_same(ours, tensors)
    for name, t in ours.items():
        assert t.shape == tensors[name].shape and t.dtype == tensors[name].dtype


def test_many_tiny_tensors(workdir):
    gen = torch.Generator().manual_seed(1)
    tensors = {f"layer.{i}.bias": random_tensor((i % 7 + 1,), torch.float16, gen) for i in range(5000)}
    path = os.path.join(workdir, "tiny.safetensors")
    st.save_file(tensors, path)
    assert_same(chainio_torch.load_file(path), tensors)


def test_one_huge_tensor(workdir):
    gen = torch.Generator().manual_seed(2)
    tensors = {"w": random_tensor((3000, 11001), torch.bfloat16, gen)}  # ~66 MB
    path = os.path.join(workdir, "huge.safetensors")
    st.save_file(tensors, path)
    out = chainio_torch.load_file(path)
    assert_same(out, tensors)
    assert out["w"].is_contiguous()


def test_tensors_own_their_memory(workdir):
    path = os.path.join(workdir, "own.safetensors")
    st.save_file({"a": torch.arange(10.0), "b": torch.ones(5)}, path)
    first = chainio_torch.load_file(path)
    second = chainio_torch.load_file(path)
    first["a"].add_(100)
    assert torch.equal(second["a"], torch.arange(10.0)), "each load gets fresh memory"
    assert torch.equal(first["b"], torch.ones(5)), "tensors of one file do not overlap"


def test_safe_open_readahead_reads_ahead_in_order_and_only_then(workdir):
    gen = torch.Generator().manual_seed(4)
    names = [f"t{i:02d}" for i in range(12)]
    tensors = {n: random_tensor((1000, 3), torch.float32, gen) for n in names}
    path = os.path.join(workdir, "ra.safetensors")
    st.save_file(tensors, path)
    header = read_header(path)
    order = sorted(header.tensors, key=lambda n: header.tensors[n].begin)
    size = 1000 * 3 * 4
    engine = chainio_torch.Engine(workers=2)
    with chainio_torch.safe_open(path, engine=engine, readahead=3 * size) as f:
        assert engine.stats()["bytes_read"] == 0, "opening reads only the header"
        assert same_bytes(f.get_tensor(order[5]), tensors[order[5]])  # out of order: no readahead
        assert same_bytes(f.get_slice(order[6])[2:4], tensors[order[6]][2:4])  # rows: none either
        f.get_tensor(order[0])  # a jump back: still not in order
        assert not f._pending and engine.stats()["bytes_read"] == 2 * size + 2 * 12
        f.get_tensor(order[1])  # the next one by offset: reads the three after it ahead
        assert sorted(f._pending) == order[2:5]
        # Tensors read ahead are served from their own buffers and the window moves with them,
        # skipping what was read whole already (order[5]).
        for n in order[2:5]:
            assert same_bytes(f.get_tensor(n), tensors[n]), n
        assert sorted(f._pending) == order[6:9]
        unused = f._drain()
    assert unused == 3 * size
    assert engine.stats()["bytes_read"] == 9 * size + 2 * 12

    with chainio_torch.safe_open(path, readahead=2 * size) as f:  # a first read at offset 0
        f.get_tensor(order[0])
        assert sorted(f._pending) == order[1:3]
    assert not f._pending, "__exit__ drops what was read ahead"

    # Threads reading in file order get every tensor intact.
    from concurrent.futures import ThreadPoolExecutor

    with chainio_torch.safe_open(path, readahead=1 << 20) as f:
        with ThreadPoolExecutor(4) as ex:
            out = dict(zip(order, ex.map(f.get_tensor, order)))
    assert_same(out, tensors)
    with pytest.raises(ValueError, match="readahead"):
        chainio_torch.safe_open(path, readahead=-1)


def test_misaligned_tensor_is_copied_not_misviewed(workdir):
    # A 3-byte U8 tensor first puts the F32 tensor at an odd offset; safetensors' writer never
    # does this, but the format allows it.
    path = os.path.join(workdir, "odd.safetensors")
    values = struct.pack("<4f", 1.5, -2.0, 3.25, 1e-3)
    header = {"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "b": {"dtype": "F32", "shape": [2, 2], "data_offsets": [3, 19]}}
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"xyz" + values)
    out = chainio_torch.load_file(path)
    assert out["b"].tolist() == [[1.5, -2.0], [3.25, pytest.approx(1e-3)]]
    assert out["b"].data_ptr() % 4 == 0
    assert_same(out, st.load_file(path))


def test_safe_open_is_lazy_and_matches(workdir):
    gen = torch.Generator().manual_seed(3)
    tensors = {"emb": random_tensor((1000, 64), torch.float32, gen),
               "ln": random_tensor((64,), torch.bfloat16, gen), "s": random_tensor((), torch.int64, gen)}
    path = os.path.join(workdir, "lazy.safetensors")
    st.save_file(tensors, path, metadata={"k": "v"})
    engine = chainio_torch.Engine(workers=2)
    with chainio_torch.safe_open(path, framework="pt", engine=engine) as f, \
            safetensors.safe_open(path, framework="pt") as ref:
        assert f.keys() == ref.keys()
        assert f.metadata() == ref.metadata() == {"k": "v"}
        assert engine.stats()["bytes_read"] == 0, "opening reads only the header"
        ln = f.get_tensor("ln")
        assert engine.stats()["bytes_read"] == 64 * 2, "get_tensor reads just that tensor"
        assert same_bytes(ln, ref.get_tensor("ln"))
        assert same_bytes(f.get_tensor("s"), ref.get_tensor("s"))
        sl, rsl = f.get_slice("emb"), ref.get_slice("emb")
        assert sl.get_shape() == rsl.get_shape() and sl.get_dtype() == rsl.get_dtype()
        before = engine.stats()["bytes_read"]
        assert same_bytes(sl[10:20], rsl[10:20])
        assert engine.stats()["bytes_read"] - before == 10 * 64 * 4, "row slices read only their rows"
        for index in [(slice(None, 5),), 7, -1, (slice(3, 9), slice(2, 10)), (slice(None), 3),
                      (Ellipsis, 0), slice(990, 2000), slice(5, 5), (slice(None, None, 3),)]:
            assert same_bytes(sl[index], rsl[index]), index
        with pytest.raises(SafetensorError, match="does not contain tensor nope"):
            f.get_tensor("nope")
        with pytest.raises(safetensors.SafetensorError):
            f.get_tensor("nope")


def test_load_checkpoint_directory_index_and_progress(workdir, capsys):
    gen = torch.Generator().manual_seed(4)
    shards = [{f"l{s}.{i}": random_tensor((50, 33), torch.float16, gen) for i in range(4)} for s in range(3)]
    weight_map = {}
    for s, tensors in enumerate(shards):
        name = f"model-{s + 1:05d}-of-00003.safetensors"
        st.save_file(tensors, os.path.join(workdir, name))
        weight_map.update({k: name for k in tensors})
    with open(os.path.join(workdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    expected = {k: v for s in shards for k, v in s.items()}
    assert_same(chainio_torch.load_checkpoint(workdir), expected)
    assert_same(chainio_torch.load_checkpoint(os.path.join(workdir, "model.safetensors.index.json")), expected)
    assert_same(chainio_torch.load_checkpoint(os.path.join(workdir, "model-00002-of-00003.safetensors")), shards[1])
    assert_same(chainio_torch.load_checkpoint(workdir, progress=True), expected)
    assert "loading" in capsys.readouterr().err


def test_index_naming_a_missing_tensor_is_an_error(workdir):
    st.save_file({"a": torch.ones(2)}, os.path.join(workdir, "m.safetensors"))
    with open(os.path.join(workdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {"a": "m.safetensors", "b": "m.safetensors"}}, f)
    with pytest.raises(SafetensorError, match="'b' is not in m.safetensors"):
        chainio_torch.load_checkpoint(workdir)


def test_duplicate_names_across_shards_are_an_error(workdir):
    st.save_file({"a": torch.ones(2)}, os.path.join(workdir, "x.safetensors"))
    st.save_file({"a": torch.zeros(2)}, os.path.join(workdir, "y.safetensors"))
    with pytest.raises(SafetensorError, match="'a' is in both"):
        chainio_torch.load_checkpoint(workdir)


def test_staged_path_used_for_gpus_gives_identical_tensors(workdir):
    # The CUDA path reads through two staging buffers; here it runs with CPU stages and a CPU
    # destination (no GPU on this machine), small stages so that many boundaries are crossed.
    gen = torch.Generator().manual_seed(5)
    tensors = {f"w{i}": random_tensor((123, 77), torch.float32, gen) for i in range(20)}
    path = os.path.join(workdir, "staged.safetensors")
    st.save_file(tensors, path)
    out = _load_staged(read_header(path), torch.device("cpu"), chainio_torch.default_engine(),
                       pin=False, stage_bytes=64 << 10)
    assert_same(out, tensors)


def test_cuda_without_gpu_is_a_clear_error(workdir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    path = os.path.join(workdir, "c.safetensors")
    st.save_file({"a": torch.ones(2)}, path)
    with pytest.raises(ValueError, match="no CUDA device"):
        chainio_torch.load_file(path, device="cuda")


def test_file_changed_while_loading_is_detected(workdir):
    path = os.path.join(workdir, "changing.safetensors")
    st.save_file({"a": torch.arange(1000.0)}, path)
    header = read_header(path)
    with open(path, "r+b") as f:  # rewritten between the header parse and the data read
        f.seek(header.data_offset)
        f.write(b"\0" * 8)
    os.utime(path, ns=(header.stat[3] + 10**9, header.stat[3] + 10**9))
    from chainio_torch.loader import _load_many

    with pytest.raises(OSError, match="changed while loading"):
        _load_many([header], "cpu", None, progress=False)


def test_missing_file_is_file_not_found(workdir):
    with pytest.raises(FileNotFoundError):
        chainio_torch.load_file(os.path.join(workdir, "nope.safetensors"))
    with pytest.raises(FileNotFoundError):
        chainio_torch.load_checkpoint(os.path.join(workdir, "empty-dir-does-not-exist"))


def _write_raw(path, header, data=b""):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


U8 = {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}
MALFORMED = [
    ("truncated-header", lambda p: open(p, "wb").write(b"\x05\x00\x00"), "fewer than the 8-byte"),
    ("length-past-eof", lambda p: open(p, "wb").write(struct.pack("<Q", 500) + b"{}"), "past the end"),
    ("length-over-limit", lambda p: open(p, "wb").write(struct.pack("<Q", 200_000_000) + b"{}"), "exceeds the limit"),
    ("bad-json", lambda p: _write_raw(p, b'{"a": {"dtype": '), "not valid JSON"),
    ("not-an-object", lambda p: _write_raw(p, b'[1, 2]'), "does not start with"),
    ("unknown-dtype", lambda p: _write_raw(p, {"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 2]}}, b"xx"), "unknown dtype 'Q7'"),
    ("shape-size-mismatch", lambda p: _write_raw(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"xxxx"), "span 4"),
    ("overlap", lambda p: _write_raw(p, {"a": U8, "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, b"xxx"), "overlap"),
    ("out-of-range", lambda p: _write_raw(p, {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, b"xx"), "past the data region"),
    ("gap", lambda p: _write_raw(p, {"a": U8, "b": {"dtype": "U8", "shape": [2], "data_offsets": [3, 5]}}, b"xxxxx"), "gap"),
    ("trailing-bytes", lambda p: _write_raw(p, {"a": U8}, b"xxxx"), "trailing"),
    ("truncated-data", lambda p: _write_raw(p, {"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}, b"xxx"), "past the data region"),
    ("duplicate-key", lambda p: _write_raw(p, b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}, "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}', b"xx"), "duplicate key 'a'"),
    ("metadata-not-string", lambda p: _write_raw(p, {"__metadata__": {"k": 1}, "a": U8}, b"xx"), "not a string"),
    ("negative-shape", lambda p: _write_raw(p, {"a": {"dtype": "U8", "shape": [-2], "data_offsets": [0, 2]}}, b"xx"), "non-negative"),
    ("no-torch-dtype", lambda p: _write_raw(p, {"a": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}}, b"xxx"), "F6_E2M3 has no torch"),
]


@pytest.mark.parametrize("name, make, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_raise_safetensor_error(workdir, name, make, message):
    path = os.path.join(workdir, f"{name}.safetensors")
    make(path)
    with pytest.raises(SafetensorError, match=message) as info:
        chainio_torch.load_file(path)
    assert path in str(info.value), "the error names the file"
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, safetensors.SafetensorError)
    with pytest.raises(SafetensorError):
        chainio_torch.safe_open(path, framework="pt").get_tensor("a")


def test_errors_name_the_tensor(workdir):
    path = os.path.join(workdir, "named.safetensors")
    _write_raw(path, {"model.layers.3.mlp.up_proj.weight": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 5]}},
               b"xxxxx")
    with pytest.raises(SafetensorError, match=r"tensor 'model\.layers\.3\.mlp\.up_proj\.weight'"):
        chainio_torch.load_file(path)


def test_cli_load_compare(workdir):
    path = os.path.join(workdir, "cli.safetensors")
    st.save_file({"a": torch.arange(100.0), "b": torch.ones(3, 3, dtype=torch.bfloat16)}, path)
    out = subprocess.run([sys.executable, "-m", "chainio_torch", "load", path, "--compare", "--list"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "2 tensors from 1 file(s)" in out.stdout
    assert "tensors identical: yes" in out.stdout
    assert "b: bfloat16 [3, 3]" in out.stdout
    assert "memory: 0.000 GB in 4 KiB pages" in out.stdout, "a tiny file never takes pool pages"
    bad = os.path.join(workdir, "bad.safetensors")
    _write_raw(bad, b"[]")
    out = subprocess.run([sys.executable, "-m", "chainio_torch", "load", bad], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "invalid safetensors header" in out.stderr


def _in_child(code, timeout=60):
    """Runs ``code`` in a fresh interpreter: a hang ends in a timeout, a crash in a signal."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)


def test_fifo_is_refused_not_waited_on(workdir):
    # open() of a FIFO for reading blocks until a writer comes: every loader must refuse it.
    fifo = os.path.join(workdir, "pipe.safetensors")
    os.mkfifo(fifo)
    code = f"""
import chainio_torch
for call in (lambda: chainio_torch.load_file({fifo!r}),
             lambda: chainio_torch.safe_open({fifo!r}),
             lambda: chainio_torch.load_checkpoint({os.path.dirname(fifo)!r})):
    try:
        call()
    except ValueError as e:
        assert "not a regular file" in str(e) and {fifo!r} in str(e), e
    else:
        raise SystemExit("no error")
print("refused")
"""
    out = _in_child(code)
    assert out.returncode == 0 and "refused" in out.stdout, out.stderr


def test_empty_tensor_at_an_offset_not_a_multiple_of_its_element_size(workdir):
    # safetensors' writer never places one there, but other writers may; safetensors loads it.
    path = os.path.join(workdir, "empty-misaligned.safetensors")
    _write_raw(path, {"z": {"dtype": "F32", "shape": [0, 5], "data_offsets": [0, 0]}, "x": U8}, b"ab")
    ref = st.load_file(path)
    assert_same(chainio_torch.load_file(path), ref)
    with chainio_torch.safe_open(path, framework="pt") as f:
        assert same_bytes(f.get_tensor("z"), ref["z"])
        assert f.get_slice("z")[0:0].shape == (0, 5)


def test_bool_index_of_a_slice_is_a_new_dimension_as_in_torch(workdir):
    path = os.path.join(workdir, "bool-index.safetensors")
    t = torch.arange(35.0).reshape(7, 5)
    st.save_file({"m": t}, path)
    with chainio_torch.safe_open(path, framework="pt") as f:
        for index in (True, False, (True, 2)):
            assert same_bytes(f.get_slice("m")[index], t[index]), index


def test_error_text_that_is_not_utf8_keeps_file_and_reason(workdir):
    # The parser quotes the bad key; its bytes must not turn the error into a UnicodeDecodeError.
    path = os.path.join(workdir, "bad-utf8.safetensors")
    _write_raw(path, b'{"\xff":' + json.dumps(U8).encode() + b"}", b"xx")
    with pytest.raises(SafetensorError) as info:
        chainio_torch.load_file(path)
    assert path in str(info.value) and "UTF-8" in str(info.value), str(info.value)


def test_file_names_that_are_not_utf8_load(workdir):
    path = os.fsdecode(os.path.join(os.fsencode(workdir), b"\xff-model.safetensors"))
    tensors = {"a": torch.arange(10.0)}
    st.save_file(tensors, path)
    assert_same(chainio_torch.load_file(path), tensors)
    with chainio_torch.safe_open(path, framework="pt") as f:
        assert same_bytes(f.get_tensor("a"), tensors["a"])
    assert_same(chainio_torch.load_checkpoint(workdir), tensors)
    missing = path + "-missing"
    with pytest.raises(FileNotFoundError) as info:
        chainio_torch.load_file(missing)
    assert info.value.filename == missing


def test_index_spelling_one_shard_two_ways_loads_it_once(workdir):
    d = os.path.join(workdir, "index-spelling")
    os.makedirs(d)
    st.save_file({"x": torch.ones(3), "y": torch.zeros(2)}, os.path.join(d, "model-1.safetensors"))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {"x": "./model-1.safetensors", "y": "model-1.safetensors"}}, f)
    assert_same(chainio_torch.load_checkpoint(d), st.load_file(os.path.join(d, "model-1.safetensors")))


@pytest.mark.parametrize("content, message", [
    (b'{"weight_map": {}}', "lists no tensors"),
    (b'{"weight_map": {"\xff": "model-1.safetensors"}}', "not UTF-8"),
])
def test_bad_index_is_a_safetensor_error_naming_it(workdir, content, message):
    d = os.path.join(workdir, "bad-index")
    os.makedirs(d)
    st.save_file({"x": torch.ones(3)}, os.path.join(d, "model-1.safetensors"))
    index = os.path.join(d, "model.safetensors.index.json")
    with open(index, "wb") as f:
        f.write(content)
    with pytest.raises(SafetensorError, match=message) as info:
        chainio_torch.load_checkpoint(d)
    assert index in str(info.value)


def test_file_truncated_after_safe_open_is_an_os_error(workdir):
    path = os.path.join(workdir, "shrinks.safetensors")
    st.save_file({"a": torch.arange(100.0), "b": torch.arange(50.0)}, path)
    with chainio_torch.safe_open(path, framework="pt") as f:
        os.truncate(path, os.path.getsize(path) - 100)
        with pytest.raises(OSError, match="changed while loading"):
            f.get_tensor("b")


def test_cli_load_bad_device_is_a_clear_error(workdir):
    path = os.path.join(workdir, "cli-device.safetensors")
    st.save_file({"a": torch.arange(10.0)}, path)
    out = subprocess.run([sys.executable, "-m", "chainio_torch", "load", path, "--device", "bogus"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("chainio load: --device bogus") and "Traceback" not in out.stderr


def test_each_tensor_has_a_storage_of_its_own_and_torch_save_works(workdir):
    # As with safetensors: torch.save of a loaded dict (mixed dtypes from one file) works, and
    # saving one tensor writes its bytes only, not the whole file's buffer.
    import io

    path = os.path.join(workdir, "own-storage.safetensors")
    tensors = {"w": torch.randn(64, 48).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64),
               "s": torch.randn(5), "odd": torch.arange(3, dtype=torch.uint8)}
    st.save_file(tensors, path)
    for got in (chainio_torch.load_file(path), chainio_torch.load_checkpoint(path)):
        for k, v in got.items():
            assert v.untyped_storage().nbytes() == v.numel() * v.element_size(), k
        saved = io.BytesIO()
        torch.save(got, saved)
        back = torch.load(io.BytesIO(saved.getvalue()))
        assert all(same_bytes(back[k], tensors[k]) for k in tensors)
    with chainio_torch.safe_open(path, framework="pt") as f:
        b = f.get_tensor("b")
    assert b.untyped_storage().nbytes() == 7 * 8


def test_safe_open_reads_the_file_it_opened(workdir):
    # As safetensors maps the file at open: deleting it, renaming another file over it or
    # changing directory afterwards does not change what get_tensor returns.
    path = os.path.join(workdir, "opened.safetensors")
    first = {"a": torch.arange(1000.0), "b": torch.arange(50, dtype=torch.int64)}
    st.save_file(first, path)
    f = chainio_torch.safe_open(path, framework="pt", readahead=1 << 20)
    g = chainio_torch.safe_open(path, framework="pt")
    other = path + ".new"
    st.save_file({"a": torch.zeros(1000), "b": torch.zeros(50, dtype=torch.int64)}, other)
    os.replace(other, path)  # renamed over
    assert same_bytes(f.get_tensor("a"), first["a"]) and same_bytes(g.get_tensor("b"), first["b"])
    os.unlink(path)
    assert same_bytes(f.get_tensor("b"), first["b"]) and same_bytes(g.get_tensor("a"), first["a"])
    assert same_bytes(g.get_slice("a")[10:20], first["a"][10:20])
    with f:
        pass
    with pytest.raises(SafetensorError, match="File is closed"):
        f.get_tensor("a")
    del g

    def open_on_it():
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith(path):
                    out.append(fd)
            except OSError:
                pass
        return out

    assert open_on_it() == [], "descriptors closed"
