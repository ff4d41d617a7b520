"""Tests for jaxcsp.testing: the assertion helpers must actually fail on differences."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcsp.testing import (
    assert_all_finite,
    assert_trees_all_close,
    assert_trees_all_equal,
    assert_trees_shapes_dtypes,
)


def test_close_passes_and_fails():
    a = {"x": np.ones(3), "n": np.arange(2)}
    assert_trees_all_close(a, {"x": np.ones(3) + 1e-9, "n": np.arange(2)}, rtol=1e-8)
    with pytest.raises(AssertionError, match=r"\['x'\]"):
        assert_trees_all_close(a, {"x": np.ones(3) + 1e-3, "n": np.arange(2)})
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_trees_all_close(a, {"x": np.ones(4), "n": np.arange(2)})
    with pytest.raises(AssertionError, match="structures differ"):
        assert_trees_all_close(a, {"x": np.ones(3)})


def test_equal_checks_dtype():
    with pytest.raises(AssertionError, match="dtypes differ"):
        assert_trees_all_equal([np.ones(2, np.float32)], [np.ones(2, np.float64)])


def test_finite_and_shapes():
    assert_all_finite({"a": jnp.ones(2), "i": jnp.arange(2)})
    with pytest.raises(AssertionError, match="1 non-finite"):
        assert_all_finite({"a": jnp.array([1.0, jnp.nan])})
    assert_trees_shapes_dtypes([jnp.ones((2, 3))], [np.zeros((2, 3), np.float64)])
    with pytest.raises(AssertionError, match="expected"):
        assert_trees_shapes_dtypes([jnp.ones((2, 3))], [np.zeros((3, 2))])
