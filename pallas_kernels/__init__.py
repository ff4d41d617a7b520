"""Pallas kernels for jaxcsp's hot loops.

Each ``pallas_kernels/<op>.py`` holds the kernel, a jitted wrapper (``interpret: bool``, static
block sizes, shape checks with clear errors) and a pure-``jnp`` ``<op>_reference`` beside it.
The same tests run against the reference, jaxcsp's XLA path, and the kernel in interpret mode
(CPU CI has no GPU).
"""

__all__: list[str] = []
