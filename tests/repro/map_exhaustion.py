"""Minimal reproducer: jaxlib 0.10.1 crashes when a process reaches ``vm.max_map_count``.

Every compiled XLA:CPU program keeps ~10-30 memory mappings alive while JAX caches it. A test
suite, notebook or search that compiles a few thousand programs in one process reaches the
kernel's per-process cap (65,530 by default), after which ``mmap`` fails and jaxlib dies: a
SIGSEGV in ``backend_compile_and_load`` (LLVM: "Cannot allocate memory"), an abort in the
persistent-cache writer (a large ``malloc`` served by ``mmap`` fails), or an abort creating a
thread. This script gets there in seconds: it fills the map table with one-page anonymous
mappings (alternating protections, so the kernel cannot merge them) up to ``--headroom`` below
the cap, then compiles ``--compiles`` distinct small programs and keeps them alive.

    python tests/repro/map_exhaustion.py --headroom 300 --compiles 40            # crashes
    python tests/repro/map_exhaustion.py --headroom 300 --compiles 40 --guard    # survives

With ``--guard`` it calls :func:`jaxcsp.runtime.release_compiled_programs` before each
compilation, with the threshold set ``2 * headroom / 3`` mappings below the cap: the caches are
cleared and the process keeps going. The last line printed is ``ok <maps>`` on success.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import warnings

import jax
import jax.numpy as jnp

from jaxcsp import runtime

PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, PAGE = 1, 2, 0x02, 0x20, 4096


def fill_map_table(target: int) -> int:
    """Add one-page anonymous mappings until the process holds ``target`` mappings."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    i = 0
    while (n := runtime.memory_maps()) < target:
        for _ in range(max(1, (target - n) // 2)):
            prot = PROT_READ if i % 2 else PROT_READ | PROT_WRITE
            libc.mmap(None, PAGE, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            i += 1
    return runtime.memory_maps()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--headroom", type=int, default=300)
    p.add_argument("--compiles", type=int, default=40)
    p.add_argument("--guard", action="store_true")
    args = p.parse_args(argv)
    limit = runtime.memory_map_limit()
    if limit is None or runtime.memory_maps() is None:
        print("skip: no /proc/self/maps or vm.max_map_count on this platform")
        return 0
    x = jnp.ones((4, 3))
    jax.jit(jnp.sin)(x).block_until_ready()  # backend and its threads exist before the fill
    print("filled", fill_map_table(limit - args.headroom), "of", limit, flush=True)
    fraction = (limit - 2 * args.headroom // 3) / limit
    keep = []  # live jitted functions keep their compiled programs (and mappings) alive
    released = 0
    for k in range(args.compiles):
        if args.guard:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", runtime.CompiledProgramsReleased)
                released += runtime.release_compiled_programs(fraction=fraction, min_interval_s=0)
        keep.append(jax.jit(lambda x, k=k: jnp.sin(x) @ x.T * k + jnp.cos(x).sum()))
        keep[-1](x).block_until_ready()
        print(k, runtime.memory_maps(), flush=True)
    print("releases", released)
    print("ok", runtime.memory_maps())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
