"""Environment variables `studio` (app and CLI) sets for itself before torch loads; a user's own setting wins.

They only take effect if set before torch starts its OpenMP runtime and makes its first allocation, so `studio`'s
entry point applies them first thing, and the benchmarks apply them to the processes they measure."""

from __future__ import annotations

from collections.abc import MutableMapping


def runtime_defaults(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add our defaults to `env` (os.environ, or a child process's environment) where the user set nothing."""
    # OpenMP threads that finish a parallel region early spin-wait for the others (libgomp's default). On a desktop
    # the cores are shared, so a descheduled sibling leaves the spinner burning its core: measured on 2 cores beside
    # busy processes, an SD UNet step took 2.0-2.8x the wall time and twice the CPU time of the same step with
    # passive waiting (docs/numerics.md, "Threads on a shared CPU").
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    # torch's CPU allocator asks Linux for transparent huge pages on its large blocks: a model's weights and their
    # oneDNN packs are gigabytes of fresh memory, and faulting them in 4 KiB pages cost SD1.5's first fp32 step 1.6 s
    # of its 3.1 s of packing (docs/numerics.md, "CPU weights: packed once, held once"). Ignored elsewhere.
    env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return env
