"""The processor a benchmark ran on (torch-free).

Why its own module: float drift and CPU speed-ups depend on the CPU's kernels (an Intel Xeon
with AMX runs bf16 convolutions natively, an AMD EPYC does not), so results name the model,
not only the architecture ``platform.machine()`` gives."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The processor's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
