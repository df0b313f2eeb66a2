"""Environment variables `studio` (app and CLI) sets for itself before torch loads; a user's own setting wins.

They only take effect if set before torch starts its OpenMP runtime and makes its first allocation, so `studio`'s
entry point applies them first thing, and the benchmarks apply them to the processes they measure."""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping

# Below this share of the CPUs busy with normal-priority work, OpenMP threads spin briefly before they sleep.
IDLE_SHARE = 0.25
SHORT_SPIN = "10000"  # libgomp spin iterations before sleeping: ~30× shorter than its default


def cpu_busy_share(interval: float = 0.1) -> float | None:
    """The share of all CPUs' time spent on normal-priority work during `interval` seconds (Linux; None where
    /proc/stat is missing). Niced work is left out: our threads take those cores from it at once."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        user, _nice, system, _idle, _iowait, irq, softirq, steal = fields
        return user + system + irq + softirq + steal, sum(fields)

    try:
        busy0, total0 = sample()
        time.sleep(interval)
        busy1, total1 = sample()
    except (OSError, ValueError):
        return None
    return (busy1 - busy0) / max(1, total1 - total0)


def runtime_defaults(env: MutableMapping[str, str],
                     busy_share: Callable[[], float | None] = cpu_busy_share) -> MutableMapping[str, str]:
    """Add our defaults to `env` (os.environ, or a child process's environment) where the user set nothing."""
    # OpenMP threads that finish a parallel region early spin-wait for the others (libgomp's default: ~300,000
    # spins). On a desktop the cores are shared, so a descheduled sibling leaves the spinner burning its core:
    # measured on 2 cores beside busy processes, an SD UNet step took 2.0-2.8x the wall time and twice the CPU
    # time of the same step with passive waiting. On an idle machine, though, sleeping at every barrier costs
    # ~5 % per bf16 UNet call against a short spin. So: a short spin when the CPUs are idle as `studio` starts,
    # passive waiting when other work keeps them busy (docs/numerics.md, "Threads on a shared CPU").
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        busy = busy_share()
        if busy is not None and busy < IDLE_SHARE:
            env["GOMP_SPINCOUNT"] = SHORT_SPIN
        else:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
    # torch's CPU allocator asks Linux for transparent huge pages on its large blocks: a model's weights and their
    # oneDNN packs are gigabytes of fresh memory, and faulting them in 4 KiB pages cost SD1.5's first fp32 step 1.6 s
    # of its 3.1 s of packing (docs/numerics.md, "CPU weights: packed once, held once"). Ignored elsewhere.
    env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return env
