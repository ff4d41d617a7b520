"""The XLA:CPU flags of the test suite, shared by ``conftest.py`` and the reference scripts.

Tests are dominated by compilation, not by running the programs. Two flags cut it, with the
same floating-point semantics (no fast math):

* LLVM's backend optimisation off: about 40% less compile time;
* fusions emitted by XLA's classic elemental emitters instead of the MLIR fusion emitters: half
  the remaining compile time (the default suite took 827 s with the MLIR emitters, 493 s
  without, on 2 cores).

``JAXCSP_TEST_DEFAULT_XLA=1`` keeps XLA's defaults. An ASE line search's path follows the last
bits of the forces, so the shipped ASE references are made with the flags the tests run.
"""

from __future__ import annotations

import os

FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def apply() -> None:
    """Append :data:`FLAGS` to ``XLA_FLAGS`` (before JAX initialises its CPU backend)."""
    if os.environ.get("JAXCSP_TEST_DEFAULT_XLA") != "1":
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *FLAGS]).strip()
