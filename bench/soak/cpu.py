"""Where the machine's time goes during a run: CPU seconds by component, read from /proc.

Every process of a child's process group (gunicorn's workers, an rqworker's work horses) counts
for that child, every generation of it (the killed ones up to their last sample); PostgreSQL is
every ``postgres`` process on the machine (other databases' load included, so an upper bound).
Linux only; elsewhere the figures are empty."""

from __future__ import annotations

import os
import resource
from collections import defaultdict
from pathlib import Path

from .procs import Children

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: str) -> tuple[str, int, float] | None:
    """(command, process group, CPU seconds incl. reaped children) of one process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    command = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): pgrp is field 5, utime..cstime fields 14..17.
    ticks = sum(int(x) for x in fields[11:15])
    return command, int(fields[2]), ticks / _TICK


class CpuMeter:
    def __init__(self, children: Children):
        self.children = children
        self._seen: dict[tuple[str, str], float] = {}  # (component, pid) -> CPU seconds
        self._postgres_start = self._postgres_total()
        self._postgres_last = self._postgres_start
        self._self_start = self._self()

    @staticmethod
    def _self() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    @staticmethod
    def _postgres_total() -> float:
        total = 0.0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            found = _stat(pid)
            if found and found[0] == "postgres":
                total += found[2]
        return total

    @staticmethod
    def component(name: str) -> str:
        if name.startswith("worker-"):
            return "task workers"
        return {"web": "web server", "emulator": "emulator"}.get(name, name)

    def sample(self) -> None:
        if not os.path.isdir("/proc"):
            return
        groups = {proc.pid: name for name, proc in self.children.procs.items()}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            found = _stat(pid)
            if found is None:
                continue
            _, pgrp, seconds = found
            if pgrp in groups:
                key = (self.component(groups[pgrp]), pid)
                self._seen[key] = max(self._seen.get(key, 0.0), seconds)
        self._postgres_last = self._postgres_total()

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for (component, _), seconds in self._seen.items():
            out[component] += seconds
        out["soak driver (saves, admin/API clients, reconcile)"] = self._self() - self._self_start
        out["postgres (whole server)"] = self._postgres_last - self._postgres_start
        return {k: round(v, 1) for k, v in sorted(out.items())}
