"""Memory available to this process on its device, for the start-up memory check."""
from __future__ import annotations

from pathlib import Path

import torch


def _cgroup_limit() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit (containers), or None when unlimited."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def available_bytes(device: torch.device) -> int | None:
    """Free device memory (CUDA) or available RAM (CPU: MemAvailable, capped by a cgroup limit); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        ram = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    cgroup = _cgroup_limit()
    return ram if cgroup is None else min(ram, cgroup)
