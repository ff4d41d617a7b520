"""Wyckoff-position combinations (WPCs) and space groups compatible with a composition.

Contract (CRYSIM, Appendix C): a WPC for space group ``spg`` and a unit-cell composition
``{element: count}`` assigns each element a multiset of Wyckoff positions whose multiplicities
sum to its count. A position with free coordinates can host any number of sites; a position
with no free coordinate (a fixed point such as (0, 0, 0)) can be used at most once in the whole
crystal. A group is *compatible* with the composition when at least one WPC exists.

WPCs are enumerated per element in PyXtal index order (index 0, the general position, first;
then decreasing multiplicity), and combined as a Cartesian product over the elements in the
order of the composition, so combinations built from general positions come first. Caps
(``max_per_element``, ``max_combinations``) keep large systems tractable, as in CRYSIM
(``10**5`` per element, ``10**6`` in all).

>>> len(wyckoff_combinations(150, {"A": 4, "B": 6}))  # CRYSIM's P321 example
121
>>> [g for g in compatible_space_groups("Li3Na3Bi3") if g >= 195]
[]
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator, Mapping

from jaxcsp.errors import InvalidStructureError
from jaxcsp.symmetry._tables import _check_spg, wyckoff_positions

__all__ = ["compatible_space_groups", "parse_composition", "wyckoff_combinations"]

#: One WPC: for each element (composition order), the PyXtal indices of its Wyckoff positions.
WPC = tuple[tuple[int, ...], ...]


def parse_composition(composition: Mapping[str, int] | str) -> list[tuple[str, int]]:
    """Unit-cell composition as ``[(element, count), ...]`` in the given order.

    Args:
      composition: ``{"Si": 4, "O": 8}`` or ``"Si4O8"`` (counts default to 1; elements are
        labels, so ``"A4B6"`` also works for abstract species).

    Raises:
      InvalidStructureError: empty composition or a count that is not a positive integer
        (field ``"composition"``).
    """
    if isinstance(composition, str):
        parts = re.findall(r"([A-Z][a-z]*)(\d*)", composition)
        if not parts or "".join(a + b for a, b in parts) != composition.replace(" ", ""):
            raise InvalidStructureError(
                f"cannot parse composition {composition!r}", field="composition"
            )
        items: list[tuple[str, int]] = []
        for el, n in parts:
            items.append((el, int(n) if n else 1))
        merged: dict[str, int] = {}
        for el, n in items:
            merged[el] = merged.get(el, 0) + n
        pairs = list(merged.items())
    else:
        pairs = list(dict(composition).items())
    if not pairs:
        raise InvalidStructureError("composition is empty", field="composition")
    out = []
    for el, n in pairs:
        try:
            ok = int(n) == n and int(n) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InvalidStructureError(
                f"count of {el!r} must be a positive integer, got {n!r}", field="composition"
            )
        out.append((str(el), int(n)))
    return out


@functools.cache
def _wp_info(spg: int) -> tuple[tuple[int, int, bool], ...]:
    return tuple((w.index, w.multiplicity, w.dof == 0) for w in wyckoff_positions(spg))


@functools.cache
def _reachable(spg: int, n_max: int) -> tuple[frozenset[int], ...]:
    """``reach[k]``: counts formable from positions ``k..`` (fixed ones at most once)."""
    info = _wp_info(spg)
    reach: list[frozenset[int]] = [frozenset()] * (len(info) + 1)
    reach[len(info)] = frozenset({0})
    for k in range(len(info) - 1, -1, -1):
        _, m, fixed = info[k]
        nxt = reach[k + 1]
        s = set(nxt)
        if fixed:
            s |= {n + m for n in nxt if n + m <= n_max}
        else:
            for n in range(n_max + 1):
                if n in s and n + m <= n_max:
                    s.add(n + m)
        reach[k] = frozenset(s)
    return tuple(reach)


def _multisets(spg: int, n: int, banned: frozenset[int] = frozenset()) -> Iterator[tuple[int, ...]]:
    """Multisets of Wyckoff indices with multiplicities summing to ``n`` (lexicographic)."""
    info = _wp_info(spg)
    reach = _reachable(spg, n)

    def rec(k: int, rem: int) -> Iterator[tuple[int, ...]]:
        if rem == 0:
            yield ()
            return
        for j in range(k, len(info)):
            idx, m, fixed = info[j]
            if m > rem or (fixed and idx in banned):
                continue
            nxt = j + 1 if fixed else j
            if rem - m not in reach[nxt] and rem - m != 0:
                continue
            for rest in rec(nxt, rem - m):
                yield (idx, *rest)

    yield from rec(0, n)


def wyckoff_combinations(
    spg: int,
    composition: Mapping[str, int] | str,
    *,
    max_per_element: int = 100_000,
    max_combinations: int = 1_000_000,
) -> list[WPC]:
    """All Wyckoff-position combinations filling ``composition`` in ``spg`` (capped).

    Args:
      spg: space group 1..230.
      composition: unit-cell composition, e.g. ``{"Si": 4, "O": 8}`` or ``"Si4O8"``.
      max_per_element: at most this many multisets per element are considered.
      max_combinations: stop after this many WPCs.

    Returns:
      List of WPCs; each is a tuple (one entry per element, composition order) of tuples of
      PyXtal Wyckoff indices (0 = general position), e.g. ``((3,), (0,))``. Empty when the
      group is incompatible.

    Raises:
      InvalidStructureError: bad ``spg`` or composition.
    """
    g = _check_spg(spg)
    comp = parse_composition(composition)
    fixed = {idx for idx, _, f in _wp_info(g) if f}
    per = [list(itertools.islice(_multisets(g, n), max_per_element)) for _, n in comp]
    if any(not p for p in per):
        return []
    out: list[WPC] = []
    for combo in itertools.product(*per):
        used = [i for part in combo for i in part if i in fixed]
        if len(used) == len(set(used)):
            out.append(combo)
            if len(out) >= max_combinations:
                break
    return out


def _has_combination(g: int, comp: list[tuple[str, int]], max_trials: int = 100_000) -> bool:
    trials = 0

    def rec(e: int, banned: frozenset[int]) -> bool:
        nonlocal trials
        if e == len(comp):
            return True
        for ms in _multisets(g, comp[e][1], banned):
            trials += 1
            if trials > max_trials:
                return False
            fixed = {i for i, _, f in _wp_info(g) if f and i in ms}
            if rec(e + 1, banned | fixed):
                return True
        return False

    return rec(0, frozenset())


def compatible_space_groups(composition: Mapping[str, int] | str) -> list[int]:
    """Space groups (1..230) with at least one WPC for ``composition``.

    Args:
      composition: unit-cell composition, ``{"Si": 4, "O": 8}`` or ``"Si4O8"``.

    Returns:
      Sorted list of group numbers.
    """
    comp = parse_composition(composition)
    return [g for g in range(1, 231) if _has_combination(g, comp)]
