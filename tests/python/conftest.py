import os

import pytest


@pytest.fixture
def data_file(tmp_path_factory):
    """Factory: a file of `size` deterministic bytes on a real disk (not tmpfs)."""
    base = os.environ.get("CHAINIO_TEST_DIR", "/var/tmp")
    root = tmp_path_factory.mktemp("chainio", numbered=True)
    made = []

    def make(size: int, seed: int = 0, name: str = "data.bin"):
        import numpy as np

        d = os.path.join(base, f"chainio-pytest-{os.getpid()}-{len(made)}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, name)
        payload = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
        with open(path, "wb") as f:
            f.write(payload)
        made.append(d)
        return path, payload

    yield make
    import shutil

    for d in made:
        shutil.rmtree(d, ignore_errors=True)
    del root
