"""Shared test configuration.

* float64 is enabled for the whole session: reference comparisons run in double precision;
  float32 smoke tests cast explicitly.
* JAX's persistent compilation cache is opt-in: set ``JAXCSP_JAX_CACHE=DIR`` to reuse compiled
  programs across runs. It is off by default because jaxlib 0.10.1 aborted the whole test
  process while writing a cache entry (``compilation_cache.put_executable_and_time``) in a
  fresh cache directory.
* Hypothesis: no per-example deadline (the first example of a shape pays for compilation);
  ``HYPOTHESIS_PROFILE=thorough`` raises example counts for local sweeps.
"""

from __future__ import annotations

import os

import jax

jax.config.update("jax_enable_x64", True)
_CACHE = os.environ.get("JAXCSP_JAX_CACHE")
if _CACHE:
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
