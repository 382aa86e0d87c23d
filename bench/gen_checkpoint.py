#!/usr/bin/env python3
"""Write a synthetic Llama-shaped checkpoint: see chainio_torch.synth (shared with `chainio demo`)."""

from chainio_torch.synth import *  # noqa: F401,F403
from chainio_torch.synth import main

if __name__ == "__main__":
    raise SystemExit(main())
