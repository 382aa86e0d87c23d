"""Helpers shared by the benchmark drivers: machine description, medians, result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess


def machine() -> dict:
    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return "?"

    cpu = "?"
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(read("/proc/meminfo").split()[1]) if read("/proc/meminfo") != "?" else 0
    disk = subprocess.run(["df", "--output=source,fstype", "/var/tmp"], capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "disk": disk,
        "python": platform.python_version(),
    }


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
