"""Small pytree assertions for tests (in the spirit of optax's ``test_utils``).

>>> import numpy as np
>>> assert_trees_all_close({"a": np.ones(3)}, {"a": np.ones(3) + 1e-12})
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = [
    "assert_all_finite",
    "assert_trees_all_close",
    "assert_trees_all_equal",
    "assert_trees_shapes_dtypes",
]


def _leaves_with_paths(tree: Any):
    return jax.tree_util.tree_flatten_with_path(tree)


def _check_structure(a: Any, b: Any) -> None:
    # jaxlib ships no stub for PyTreeDef; only its equality and text are used here
    sa: object = jax.tree.structure(a)
    sb: object = jax.tree.structure(b)
    if sa != sb:
        raise AssertionError(f"tree structures differ:\n  {sa}\n  {sb}")


def assert_trees_all_close(a: Any, b: Any, *, rtol: float = 1e-7, atol: float = 0.0) -> None:
    """Assert two pytrees have the same structure and leaf-wise ``allclose`` values and shapes."""
    _check_structure(a, b)
    (la, _), (lb, _) = _leaves_with_paths(a), _leaves_with_paths(b)
    for (path, x), (_, y) in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        name = jax.tree_util.keystr(path)
        if x.shape != y.shape:
            raise AssertionError(f"leaf {name}: shapes differ {x.shape} vs {y.shape}")
        if x.dtype == bool or y.dtype == bool or np.issubdtype(x.dtype, np.integer):
            np.testing.assert_array_equal(x, y, err_msg=f"leaf {name}")
        else:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"leaf {name}")


def assert_trees_all_equal(a: Any, b: Any) -> None:
    """Assert two pytrees are exactly equal (structure, shapes, dtypes and values)."""
    _check_structure(a, b)
    (la, _), (lb, _) = _leaves_with_paths(a), _leaves_with_paths(b)
    for (path, x), (_, y) in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        name = jax.tree_util.keystr(path)
        if x.dtype != y.dtype:
            raise AssertionError(f"leaf {name}: dtypes differ {x.dtype} vs {y.dtype}")
        np.testing.assert_array_equal(x, y, err_msg=f"leaf {name}")


def assert_all_finite(tree: Any) -> None:
    """Assert every floating leaf of ``tree`` is finite (no NaN or inf)."""
    leaves, _ = _leaves_with_paths(tree)
    for path, x in leaves:
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise AssertionError(f"leaf {jax.tree_util.keystr(path)}: {bad} non-finite values")


def assert_trees_shapes_dtypes(tree: Any, expected: Any) -> None:
    """Assert ``tree``'s leaves have the shapes and dtypes of ``expected``'s leaves.

    ``expected`` may hold arrays or ``jax.ShapeDtypeStruct`` leaves.
    """
    _check_structure(tree, expected)
    (la, _), (lb, _) = _leaves_with_paths(tree), _leaves_with_paths(expected)
    for (path, x), (_, y) in zip(la, lb, strict=True):
        name = jax.tree_util.keystr(path)
        if tuple(np.shape(x)) != tuple(y.shape) or np.dtype(x.dtype) != np.dtype(y.dtype):
            raise AssertionError(
                f"leaf {name}: got {np.shape(x)} {x.dtype}, expected {tuple(y.shape)} {y.dtype}"
            )
