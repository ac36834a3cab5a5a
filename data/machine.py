"""What the machine lets this process use: its CPU cores, as its affinity and a container's CPU quota allow
(os.cpu_count() counts the machine's cores, whatever the process may run on)."""

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> int | None:
    """The cores a cgroup CPU quota allows (rounded up), or None without one: cgroup v2's cpu.max
    ("QUOTA PERIOD", or "max PERIOD"), else cgroup v1's cpu.cfs_quota_us and cpu.cfs_period_us (-1: none)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or int(period) <= 0:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPU cores this process may use: those of its affinity, no more than its cgroup's quota allows."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this system (macOS, Windows)
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(cores, quota) if quota else cores)
