"""Process health for long runs: memory maps, compiled programs, compile counts, memory.

A notebook, a search or a relaxation stream that runs for hours compiles programs in one process.
Every compiled XLA:CPU program keeps its machine code in memory mappings of its own (about ten
to thirty per program: code, read-only data and data sections of each of its kernels), and JAX
keeps every program it compiled for as long as the jitted function that compiled it lives, which
for a module-level function is the life of the process. Linux caps the number of mappings per
process (``vm.max_map_count``, 65,530 by default). When a process reaches that cap, every
``mmap`` fails, and jaxlib 0.10.1 does not survive it:

* LLVM's JIT logs ``LLVM compilation error: Cannot allocate memory`` and XLA then dereferences
  the allocation that failed: a SIGSEGV inside ``backend_compile_and_load``;
* glibc serves large ``malloc`` requests (128 KiB and up) with ``mmap``, so a large buffer fails
  too: ``std::bad_alloc`` and an abort, e.g. while the persistent compilation cache serialises
  an executable (``put_executable_and_time``);
* a new thread needs a mapping for its stack: ``Check failed ... pthread_create() failed``.

Which of the three comes first depends only on which allocation happens to be the first past the
cap. ``tests/repro/map_exhaustion.py`` reproduces each in seconds by filling the map table
before compiling. This module watches the count and gives the process its mappings back:

* :func:`release_compiled_programs` clears JAX's in-memory caches of compiled programs (and
  with them their mappings and memory) once the count passes a fraction of the cap. The host
  drivers of jaxcsp (``relax``, ``relax_stream``, the design loop) call it between chunks, so a
  long run pays at most one recompilation of its own programs now and then instead of a crash.
* :func:`memory_maps`, :func:`memory_map_limit` and :func:`resident_bytes` read the process's
  state (Linux ``/proc``; ``None`` elsewhere), and :class:`CompileCounter` counts backend
  compilations from JAX's own monitoring events, for tests that assert "no recompilation" and
  soak runs that report it over time.

On a machine you administer, ``sysctl -w vm.max_map_count=262144`` raises the cap fourfold; the
guard then simply fires later.

>>> n = memory_maps()
>>> n is None or n > 0
True
>>> with CompileCounter() as cc:
...     _ = jax.jit(lambda x: x + 1)(1.0)
>>> cc.count >= 1
True
"""

from __future__ import annotations

import gc
import threading
import time
import warnings
from typing import Any

import jax

from jaxcsp.errors import JaxcspWarning

__all__ = [
    "CompileCounter",
    "CompiledProgramsReleased",
    "memory_map_limit",
    "memory_maps",
    "release_compiled_programs",
    "resident_bytes",
]

#: fraction of ``vm.max_map_count`` at which :func:`release_compiled_programs` clears caches
DEFAULT_FRACTION = 0.5
_MAPS = "/proc/self/maps"
_LIMIT = "/proc/sys/vm/max_map_count"


class CompiledProgramsReleased(JaxcspWarning):
    """JAX's compiled-program caches were cleared to keep the process below its map cap."""


def memory_maps() -> int | None:
    """Number of memory mappings (VMAs) of this process, or ``None`` where ``/proc`` is absent.

    Reading costs about a millisecond per 10,000 mappings.
    """
    try:
        with open(_MAPS, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None


def memory_map_limit() -> int | None:
    """The kernel's cap on mappings per process (``vm.max_map_count``), or ``None`` if unknown."""
    try:
        with open(_LIMIT) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def resident_bytes() -> int | None:
    """Resident set size of this process in bytes (``VmRSS``), or ``None`` where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


_LAST_CHECK = {"t": -float("inf")}


def release_compiled_programs(
    *, fraction: float = DEFAULT_FRACTION, min_interval_s: float = 1.0, force: bool = False
) -> bool:
    """Clear JAX's compiled-program caches if this process is near its memory-map cap.

    Args:
      fraction: clear when ``memory_maps() > fraction * memory_map_limit()``; in ``(0, 1]``.
      min_interval_s: seconds between two reads of ``/proc`` (calls in between return ``False``
        at once), so a driver may call this every chunk.
      force: clear regardless of the count (and warn nothing).

    Returns:
      ``True`` if the caches were cleared. Programs compile again on their next call; arrays
      and jitted functions stay valid. A release that was not forced emits a
      :class:`CompiledProgramsReleased` warning naming the counts, once per release.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if force:
        _clear()
        return True
    now = time.monotonic()
    if now - _LAST_CHECK["t"] < min_interval_s:
        return False
    _LAST_CHECK["t"] = now
    n, limit = memory_maps(), memory_map_limit()
    if n is None or limit is None or n <= fraction * limit:
        return False
    _clear()
    after = memory_maps()
    warnings.warn(
        f"this process held {n} memory mappings of the kernel's cap of {limit} "
        f"(vm.max_map_count), mostly compiled XLA programs; jaxcsp cleared JAX's compiled-program "
        f"caches ({after} mappings now) so that the next compilation cannot crash. Programs "
        "recompile on their next call; raise vm.max_map_count to make this rarer.",
        CompiledProgramsReleased,
        stacklevel=2,
    )
    return True


def _clear() -> None:
    jax.clear_caches()
    gc.collect()


class CompileCounter:
    """Counts XLA backend compilations in this process while active (a context manager).

    From JAX's own monitoring events: ``/jax/core/compile/backend_compile_duration`` marks every
    program handed to the backend, ``/jax/compilation_cache/cache_hits`` those of them that the
    persistent compilation cache served instead. Thread-safe; counters may nest.

    Attributes:
      count: programs compiled since ``__enter__`` (int; persistent-cache hits excluded).
      cache_hits: programs loaded from the persistent compilation cache instead (int).
      seconds: seconds spent in both (float, s).
    """

    _lock = threading.Lock()
    _active: list[CompileCounter] = []  # noqa: RUF012  (class-level registry)
    _registered = False

    def __init__(self) -> None:
        self.requests = 0
        self.cache_hits = 0
        self.seconds = 0.0

    @property
    def count(self) -> int:
        return self.requests - self.cache_hits

    @classmethod
    def _on_duration(cls, event: str, duration_secs: float, **_: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            with cls._lock:
                for c in cls._active:
                    c.requests += 1
                    c.seconds += duration_secs

    @classmethod
    def _on_event(cls, event: str, **_: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            with cls._lock:
                for c in cls._active:
                    c.cache_hits += 1

    def __enter__(self) -> CompileCounter:
        with CompileCounter._lock:
            if not CompileCounter._registered:
                jax.monitoring.register_event_duration_secs_listener(CompileCounter._on_duration)
                jax.monitoring.register_event_listener(CompileCounter._on_event)
                CompileCounter._registered = True
            CompileCounter._active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with CompileCounter._lock:
            CompileCounter._active.remove(self)
