"""Shared test configuration.

* XLA compiles at backend optimisation level 0 with its classic fusion emitters
  (``tests/xla_flags.py``; ``JAXCSP_TEST_DEFAULT_XLA=1`` keeps the defaults).
* float64 is enabled for the whole session: reference comparisons run in double precision;
  float32 smoke tests cast explicitly.
* The whole suite runs in one process. Every compiled XLA:CPU program holds memory mappings of
  its own while JAX caches it, and jaxlib 0.10.1 crashes once the process reaches the kernel's
  cap (``vm.max_map_count``; see ``jaxcsp/runtime.py`` and ``tests/repro/map_exhaustion.py``).
  When a new test file starts (or after any test past ``MAP_FRACTION_HARD``), if the process
  holds more than ``MAP_FRACTION`` of the cap, JAX's caches of compiled programs are cleared:
  the mappings (and the memory of the programs) stay bounded.
* JAX's persistent compilation cache is opt-in: set ``JAXCSP_JAX_CACHE=DIR`` to reuse compiled
  programs across runs (``tests/test_runtime.py`` checks that a second process loads them).
* Hypothesis: no per-example deadline (the first example of a shape pays for compilation);
  ``HYPOTHESIS_PROFILE=thorough`` raises example counts for local sweeps.
"""

from __future__ import annotations

import os

# the suite's XLA flags (tests/xla_flags.py), set before JAX initialises its CPU backend
from xla_flags import apply as _apply_xla_flags

_apply_xla_flags()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
_CACHE = os.environ.get("JAXCSP_JAX_CACHE")
if _CACHE:
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from jaxcsp import runtime  # noqa: E402

#: between two test files, clear compiled programs once the process holds this fraction of the
#: map cap; within a file (whose tests share programs) only past ``MAP_FRACTION_HARD``, which
#: is below the 0.5 at which jaxcsp's drivers clear and warn, so a test never sees their warning
MAP_FRACTION, MAP_FRACTION_HARD = 0.3, 0.4
_LAST_FILE = {"name": None}


@pytest.fixture(autouse=True)
def _bounded_compiled_programs(request):
    name = request.node.path.name
    if name != _LAST_FILE["name"]:
        _LAST_FILE["name"] = name
        _release_above(MAP_FRACTION)
    yield
    _release_above(MAP_FRACTION_HARD)


def _release_above(fraction: float) -> None:
    n, limit = runtime.memory_maps(), runtime.memory_map_limit()
    if n is not None and limit is not None and n > fraction * limit:
        runtime.release_compiled_programs(force=True)


settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


#: files whose tests share no compiled programs with each other: each test is its own unit of
#: work for pytest-xdist; every other file is one unit (its tests, module fixtures and compiled
#: programs stay in one worker)
_SPREAD = {"test_optimize_relax.py"}
#: the longest units first, so that the two workers finish together
_FIRST = [
    "test_optimize_relax.py",
    "test_models_cvae.py",
    "test_sevennet.py",
    "test_models_mlff.py",
    "test_search_crysim.py",
    "test_search_basin.py",
    "test_potentials.py",
    "test_external.py",
    "test_neighbors.py",
    "test_edge_list.py",
]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(rank)))


def _unit(nodeid: str) -> str:
    """The unit of work of a test for pytest-xdist: its file, or itself in a ``_SPREAD`` file."""
    path = nodeid.split("::", 1)[0]
    return nodeid if path.rsplit("/", 1)[-1] in _SPREAD else path


def pytest_xdist_make_scheduler(config, log):
    """Schedule whole files (``_unit``) with ``--dist loadgroup``.

    xdist's own ``loadgroup`` reads ``xdist_group`` marks through a node-id suffix that it
    writes to ``item._nodeid``; pytest 9 keeps node ids in ``item._id``, so the suffix is lost and
    every test became its own unit: a file's module fixtures were built once per worker (an
    ensemble trained twice, 70 s each). This scheduler groups by the node id itself.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return FileUnits(config, log)
