"""What this process may use of the machine (io is the lowest layer: compute builds on this)."""

from __future__ import annotations

import os


def n_cores() -> int:
    """Cores this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1
