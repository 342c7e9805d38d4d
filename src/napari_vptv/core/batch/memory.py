"""Will an image fit in memory? A clear refusal before the work starts (no napari, no Qt).

:func:`check_memory` compares the memory a segmentation needs (measured peak
resident memory per pixel of each method, :data:`BYTES_PER_PIXEL`) with what this
process may still use: the machine's available memory, the cgroup limit of its
container, and its address-space limit (``ulimit -v``), whichever is smallest.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Optional, Tuple

__all__ = ["NotEnoughMemoryError", "BYTES_PER_PIXEL", "available_memory", "memory_needed", "check_memory"]

#: Peak memory per pixel (bytes) above the loaded program, measured on 1.4-25 Mpx RGB
#: images (one thread): the image-adapted default (network + solver) 350-510, the
#: networks about 290, the variational solver about 40 + 50 per class.
BYTES_PER_PIXEL = {"default": 350, "network": 280, "solver_base": 40, "solver_per_class": 50}


class NotEnoughMemoryError(MemoryError, ValueError):
    """An image that cannot be segmented in the memory this process has (one line)."""


def memory_needed(n_pixels: int, *, kind: str, n_classes: int = 3) -> int:
    """Bytes a segmentation of ``n_pixels`` pixels needs; ``kind`` is ``"default"``
    (the image-adapted WBC preset), ``"network"`` or ``"solver"``."""
    if kind == "solver":
        per = BYTES_PER_PIXEL["solver_base"] + BYTES_PER_PIXEL["solver_per_class"] * int(n_classes)
    else:
        per = BYTES_PER_PIXEL[kind]
    return int(n_pixels) * per


def _cgroup_room() -> Optional[int]:
    """Bytes left under the cgroup memory limit (v2, then v1), None without a limit."""
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            text = Path(limit).read_text().strip()
            if text == "max" or int(text) >= 1 << 60:
                return None
            return int(text) - int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def _address_space_room() -> Optional[int]:
    """Bytes left under ``ulimit -v`` (RLIMIT_AS), None without a limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        import psutil

        used = psutil.Process(os.getpid()).memory_info().vms
    except ImportError:
        return soft
    return soft - used


def available_memory() -> Tuple[Optional[int], str]:
    """``(bytes this process may still use, what limits it)``; None when unknown."""
    found = []
    try:
        import psutil

        found.append((int(psutil.virtual_memory().available), "available on this machine"))
    except ImportError:
        pass
    room = _cgroup_room()
    if room is not None:
        found.append((room, "left under the container's memory limit"))
    room = _address_space_room()
    if room is not None:
        found.append((room, "left under this process's memory limit (ulimit -v)"))
    if not found:
        return None, "unknown"
    return min(found)


def _gb(n: int) -> str:
    return f"{max(n, 0) / 1e9:.1f} GB"


def check_memory(spatial, *, kind: str, n_classes: int = 3, what: str = "segment it") -> None:
    """Raise :class:`NotEnoughMemoryError` (one line, with the size needed) when an
    image of spatial shape ``spatial`` cannot be segmented in the memory left."""
    n_pixels = 1
    for s in spatial:
        n_pixels *= int(s)
    need = memory_needed(n_pixels, kind=kind, n_classes=n_classes)
    room, source = available_memory()
    if room is not None and need > room:
        size = " x ".join(str(int(s)) for s in spatial)
        raise NotEnoughMemoryError(
            f"the image ({size} px) needs about {_gb(need)} of memory to {what}, but only {_gb(room)} is "
            f"{source}; crop or downscale it, or free memory"
        )
