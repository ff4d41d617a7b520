"""Batched periodic neighbor-list candidate test: Pallas kernel, jitted wrapper, jnp reference.

Layout of this file: the kernel :func:`_candidate_kernel`, the jitted wrapper
:func:`neighbor_list` (``interpret`` flag, static block sizes, shape checks), the shared pieces
the XLA path of :mod:`jaxcsp.neighbors` also uses (candidate enumeration, bit compaction), and the
pure-``jnp`` :func:`neighbor_list_reference` (dense, all images, no pruning: the oracle).

Problem. For every crystal ``b`` of a padded batch, every atom pair ``(i, j)`` and every image
shift ``s``, decide whether ``|r_j - r_i + s @ L| < cutoff``. Coordinates are wrapped
(``w`` in ``[0, 1)``); with reduced cutoffs ``x_d = cutoff / width_d`` (perpendicular widths) the
admissible shifts of a pair along axis ``d`` lie in ``[lo_d, lo_d + k_d)`` with
``lo_d = ceil(-x_d - Δw_d)`` and ``k_d = floor(2 x_d) + 1`` (:func:`crystal_box`, computed per
crystal inside the program), so a pair has ``k_1 k_2 k_3`` candidate images ``s = lo + t``: 1 for
a cell wider than two cutoffs, 8 for a cell between one and two cutoffs wide, ``7³`` when the
cutoff is three cell widths. Candidates are numbered ``t = 0 .. M - 1`` within a static budget
``M`` chosen on the host (the largest box of the batch); each crystal decodes ``t`` with its own
box (:func:`image_offset`) and ignores ``t >= k_1 k_2 k_3``.

Kernel design (the seed's Algorithm 2, "CUDA-accelerated PBC neighbor list", re-tiled):

* **Many crystals per launch.** The grid is ``(B / G, N / T_i, N / T_j, ceil(M / 32))``. A program
  owns a ``(G, T_i, T_j)`` tile: ``G`` whole crystals stacked along a leading block axis (the
  batch id of a row is ``program_id(0) * G + g``, which selects that crystal's lattice and
  cutoffs), so small crystals are batched without cross-crystal waste.
* **Tiles sized by crystal size.** ``T_i = T_j = min(32, N_pad)`` and ``G = max(1, 1024 /
  (T_i T_j))``: a 128-atom crystal is split into 16 tiles of 32×32 pairs, sixteen 8-atom
  crystals share one 16×8×8 tile. Block shapes are powers of two (Triton) and static.
* **Fused image offsets.** Instead of materialising ``pos + offset`` per image (the seed's
  "PBC offset" fusion), the program computes the pair base vector ``(Δw + lo) @ L`` once in
  registers and adds each candidate's offset ``t @ L`` (three scalars per crystal and image)
  on the fly; nothing per image ever touches global memory.
* **Bit-packed output.** Each pair writes one 32-bit word per 32 candidate images (bit ``t`` set
  when image ``lo + t`` is a neighbor), instead of one distance and one mask per image. The
  (tiny, mostly empty) words are compacted into the fixed-capacity list by
  :func:`compact_candidates` (XLA) afterwards; slot ``k`` of atom ``i`` decodes to ``j`` and ``t``.
  Compaction is gather-only (no sort, no per-bit scatter): popcount prefix sums per row (a
  triangular matmul), a histogram of the prefixes (one scatter-add per *word*) prefix-summed over
  the ``K`` slots gives each slot its word, and a popcount binary search gives its bit.

Memory traffic per pair (float32): reads ``3 × 4 B`` of ``w_i`` per tile row and ``3 × 4 B`` of
``w_j`` per tile column plus ``4 B`` masks, i.e. ``(12 + 4)(1/T_i + 1/T_j) = 1 B`` per pair at
``T = 32``, plus ``16 × 4 B`` of per-crystal parameters per tile (negligible); writes
``4 B × ceil(M / 32)`` per pair (4 B for ``M <= 32``). About **5 B per pair**, against the seed's
``2 × 12 B`` positions read plus ``4 B`` distance and ``1 B`` mask written per pair *and image*
(~29 B × M). Compute per pair is ~20 flops for the base vector plus ~12 flops and a compare per
candidate image. On an H100 (3.35 TB/s HBM, ~60 TFLOP/s FP32 non-tensor) a minimum-image batch
(``M = 1``) is bound by HBM bandwidth at roughly ``3.35e12 / 5 ≈ 6.7e11`` pairs/s; arithmetic
intensity grows with ``M`` (≈ 12 M flops per 5 B), so the kernel turns compute-bound from about
``M ≈ 8`` (cells narrower than two cutoffs) at ~4–5e12 candidate images/s. The compaction in
XLA reads the 4 B words once more and writes 16 B per neighbor slot (index + 3 shift
components); at realistic densities it costs about as much as the kernel.

The XLA path (:func:`jaxcsp.neighbors.neighbor_list` with ``method="xla"``) enumerates exactly
the same candidates with ``jnp`` (see :func:`pair_lower_shift`): :func:`candidate_words_reference`
is the kernel's bit-exact twin, and :func:`candidate_words_dense` (what CPU users run) packs the
same bits 32 neighbors per word so that compaction rows are ``32 / M`` times shorter. The
reference :func:`neighbor_list_reference` enumerates all ``prod(2 ceil(x_d) + 1)`` images of a
cell-wide search instead and is independent of that pruning.

XLA:CPU notes (measured): it fuses cheap producers into *every* consumer, so without
:func:`fence` the candidate test and the compaction would be recomputed per gathered element
(5–10× slower); batched ``vmap`` gathers and ``(..., 3)``-minor layouts are several times slower
than flat 1-D gathers on ``(R, K)`` planes, which is how the compaction is written.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

__all__ = [
    "RawNeighbors",
    "block_sizes",
    "candidate_words",
    "candidate_words_dense",
    "candidate_words_reference",
    "compact_candidates",
    "gather_neighbors",
    "neighbor_list",
    "neighbor_list_reference",
    "pair_lower_shift",
]

Array = jax.Array

#: Fractional-coordinate margin of the per-pair image interval (over-, never under-enumerate).
FRAC_EPS = 1e-6
#: Candidate images per output word.
BITS = 32
#: Pairs per program (``G × T_i × T_j``).
TILE_PAIRS = 1024
#: Largest ``T_i = T_j``.
MAX_TILE = 32
#: The XLA twin unrolls the image loop up to this many candidate images per pair (one fused
#: loop per word) and ``vmap``s it beyond. Measured on XLA:CPU for 27 images (cells narrower
#: than two cutoffs, e.g. Si8 at 5 Å): the same run time either way (1.7-2.1 ms for 64 8-atom
#: cells), while the unrolled program takes 2.3x as long to compile (1.9 s against 0.8 s).
UNROLL_IMAGES = 8
#: Per-crystal parameter vector: 9 lattice entries, 3 reduced cutoffs, cutoff², padding.
NPARAM = 16


class RawNeighbors(NamedTuple):
    """Fixed-capacity neighbor lists as plain arrays.

    Attributes:
      index: ``(B, N, K)`` int32 neighbor index (the atom itself in unused slots).
      shift: ``(B, N, K, 3)`` int32 image shift *of the wrapped coordinates* (add ``o_i - o_j``
        for the given coordinates, see :func:`jaxcsp.neighbors.neighbor_list`).
      mask: ``(B, N, K)`` bool, real entries.
      count: ``(B, N)`` int32 number of neighbors found (may exceed ``K``: overflow).
    """

    index: Array  # type: ignore[assignment]  # public field name; shadows tuple.index by design
    shift: Array
    mask: Array
    count: Array  # type: ignore[assignment]  # public field name; shadows tuple.count by design


# ---------------------------------------------------------------------- shared enumeration


def pair_lower_shift(w_i: Array, w_j: Array, x: Array) -> Array:
    """Smallest admissible image shift of pairs, ``ceil(-x - (w_j - w_i) - eps)``, int32.

    The kernel, the XLA path and the compaction decode all call this expression so that
    candidate numbering is bit-identical.

    Args:
      w_i: wrapped fractional coordinate(s) of atom ``i`` (any broadcastable shape).
      w_j: wrapped fractional coordinate(s) of atom ``j``.
      x: reduced cutoff(s) ``cutoff / width`` (dimensionless).
    """
    return jnp.ceil(-x - (w_j - w_i) - FRAC_EPS).astype(jnp.int32)


def image_offset(t: Any, m2: Any, m3: Any) -> tuple[Any, Any, Any]:
    """Candidate number ``t`` in ``[0, M)`` -> its offset ``(t_1, t_2, t_3)`` in the image box.

    The box is ``m_1 × m_2 × m_3`` with the last axis fastest. Integers or integer arrays of any
    kind (Python, numpy, traced, a Pallas program's scalars); ``m2``, ``m3`` broadcast with ``t``
    (one box per crystal). Every decoder of candidate numbers uses this one.
    """
    return t // (m2 * m3), (t // m3) % m2, t % m3


def crystal_box(x: Any) -> Any:
    """Candidate images per pair along each axis of one crystal, ``floor(2 (x + eps)) + 1``.

    ``x`` are reduced cutoffs ``cutoff / width`` (numpy or traced, any shape ``(..., 3)``);
    int32. Each crystal enumerates its own box ``k_1 × k_2 × k_3`` (decoded with
    :func:`image_offset`) within the static candidate budget ``M``, so a batch costs ``M`` =
    the largest ``k_1 k_2 k_3`` of its crystals rather than the product of per-axis maxima
    (a flat cell next to a tall one needs no box that holds both).
    """
    xp = np if isinstance(x, np.ndarray) else jnp
    return xp.floor(2.0 * (x + FRAC_EPS)).astype(xp.int32) + 1


def num_words(images: tuple[int, int, int]) -> int:
    """Output words per pair, ``ceil(M / 32)``."""
    return -(-math.prod(images) // BITS)


def block_sizes(n: int) -> tuple[int, int, int]:
    """Static tile ``(G, T_i, T_j)`` for crystals padded to ``n`` atoms (powers of two).

    Returns ``T = min(32, next_pow2(n))`` and ``G = max(1, 1024 // T²)`` crystals per program.
    """
    t = min(MAX_TILE, 1 << max(3, (max(n, 1) - 1).bit_length()))
    return max(1, TILE_PAIRS // (t * t)), t, t


# ---------------------------------------------------------------------- kernel


def _candidate_kernel(
    wxi_ref,
    wyi_ref,
    wzi_ref,
    mi_ref,
    wxj_ref,
    wyj_ref,
    wzj_ref,
    mj_ref,
    p_ref,
    out_ref,
    *,
    images: tuple[int, int, int],
    bits: int,
):
    """One ``(G, T_i, T_j)`` tile of pairs and one 32-image word.

    Bit ``b`` of ``out[g, i, 0, j]`` is set when image ``lo_ij + t`` of atom ``j``, with
    ``t = 32 * program_id(3) + b``, lies within the cutoff of atom ``i``.
    """
    total = math.prod(images)
    g, ti = wxi_ref.shape
    tj = wxj_ref.shape[1]

    def col(k):  # per-crystal scalar -> (G, 1, 1)
        return p_ref[:, k][:, None, None]

    lat = [[col(3 * r + c) for c in range(3)] for r in range(3)]
    x = [col(9 + d) for d in range(3)]
    k = [crystal_box(x[d]) for d in range(3)]  # this crystal's own box, (G, 1, 1) int32
    k_total = k[0] * k[1] * k[2]
    rc2 = col(12)
    wi = [r[...][:, :, None] for r in (wxi_ref, wyi_ref, wzi_ref)]
    wj = [r[...][:, None, :] for r in (wxj_ref, wyj_ref, wzj_ref)]
    lo = [pair_lower_shift(wi[d], wj[d], x[d]) for d in range(3)]  # (G, T_i, T_j) int32
    f = [wj[d] - wi[d] + lo[d].astype(wi[d].dtype) for d in range(3)]
    base = [f[0] * lat[0][c] + f[1] * lat[1][c] + f[2] * lat[2][c] for c in range(3)]
    pair_ok = (mi_ref[...][:, :, None] != 0) & (mj_ref[...][:, None, :] != 0)
    gi = pl.program_id(1) * ti + jax.lax.broadcasted_iota(jnp.int32, (g, ti, tj), 1)
    gj = pl.program_id(2) * tj + jax.lax.broadcasted_iota(jnp.int32, (g, ti, tj), 2)
    same = gi == gj
    word = pl.program_id(3)
    acc = jnp.zeros((g, ti, tj), jnp.int32)
    for b in range(bits):  # static unroll: the image offset is fused into the distance
        t = word * BITS + b
        t1, t2, t3 = image_offset(t, k[1], k[2])
        ft = [t1.astype(wi[0].dtype), t2.astype(wi[0].dtype), t3.astype(wi[0].dtype)]
        d2 = None
        for c in range(3):
            off = ft[0] * lat[0][c] + ft[1] * lat[1][c] + ft[2] * lat[2][c]
            dc = base[c] + off
            d2 = dc * dc if d2 is None else d2 + dc * dc
        self_pair = same & (lo[0] == -t1) & (lo[1] == -t2) & (lo[2] == -t3)
        ok = (d2 < rc2) & pair_ok & ~self_pair & (t < total) & (t < k_total)
        acc = acc | (ok.astype(jnp.int32) << b)
    out_ref[...] = acc[:, :, None, :]


def _params(lattice: Array, x: Array, cutoff: Array) -> Array:
    b = lattice.shape[0]
    dtype = lattice.dtype
    p = jnp.zeros((b, NPARAM), dtype)
    p = p.at[:, :9].set(lattice.reshape(b, 9))
    p = p.at[:, 9:12].set(x.astype(dtype))
    return p.at[:, 12].set(jnp.asarray(cutoff, dtype) ** 2)


@functools.partial(jax.jit, static_argnames=("images", "block", "interpret"))
def candidate_words(
    w: Array,
    lattice: Array,
    mask: Array,
    x: Array,
    cutoff: Array,
    *,
    images: tuple[int, int, int],
    block: tuple[int, int, int] | None = None,
    interpret: bool = False,
) -> Array:
    """Run the Pallas candidate kernel on a padded batch.

    Args:
      w: ``(B, N, 3)`` wrapped fractional coordinates in ``[0, 1)``.
      lattice: ``(B, 3, 3)`` lattice rows, Å.
      mask: ``(B, N)`` bool, real atoms.
      x: ``(B, 3)`` reduced cutoffs ``cutoff / width`` (each crystal's box must satisfy
        ``prod(crystal_box(x)) <= prod(images)``).
      cutoff: scalar cutoff in Å (traced).
      images: static box whose product ``M`` is the candidate budget per pair.
      block: static ``(G, T_i, T_j)``; default :func:`block_sizes`.
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      ``(B, N, W, N)`` uint32 words, ``W = ceil(M / 32)``: bit ``b`` of ``[b_, i, u, j]`` is
      candidate ``t = 32 u + b`` of pair ``(i, j)``.

    Raises:
      ValueError: inconsistent shapes, or block sizes that are not powers of two.
    """
    _check_shapes(w, lattice, mask, x)
    bsz, n, _ = w.shape
    g, ti, tj = block if block is not None else block_sizes(n)
    for name, v in (("G", g), ("T_i", ti), ("T_j", tj)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"block size {name}={v} must be a power of two")
    n_pad = -(-n // max(ti, tj)) * max(ti, tj)
    b_pad = -(-bsz // g) * g
    words = num_words(images)
    bits = min(BITS, math.prod(images))
    dtype = w.dtype
    wp = jnp.zeros((b_pad, n_pad, 3), dtype).at[:bsz, :n].set(w)
    mp = jnp.zeros((b_pad, n_pad), jnp.int32).at[:bsz, :n].set(mask.astype(jnp.int32))
    lat = jnp.zeros((b_pad, 3, 3), dtype).at[:bsz].set(lattice.astype(dtype))
    lat = lat.at[bsz:].set(jnp.eye(3, dtype=dtype))
    xp = jnp.zeros((b_pad, 3), dtype).at[:bsz].set(x.astype(dtype))
    params = _params(lat, xp, cutoff)
    comps = [wp[..., c] for c in range(3)]
    row = pl.BlockSpec((g, ti), lambda b, i, j, u: (b, i))
    colspec = pl.BlockSpec((g, tj), lambda b, i, j, u: (b, j))
    out = pl.pallas_call(
        functools.partial(_candidate_kernel, images=images, bits=bits),
        out_shape=jax.ShapeDtypeStruct((b_pad, n_pad, words, n_pad), jnp.int32),
        grid=(b_pad // g, n_pad // ti, n_pad // tj, words),
        in_specs=[
            *([row] * 4),
            *([colspec] * 4),
            pl.BlockSpec((g, NPARAM), lambda b, i, j, u: (b, 0)),
        ],
        out_specs=pl.BlockSpec((g, ti, 1, tj), lambda b, i, j, u: (b, i, u, j)),
        interpret=interpret,
        name="neighbor_candidates",
    )(*comps, mp, *comps, mp, params)
    return jax.lax.bitcast_convert_type(out[:bsz, :n, :, :n], jnp.uint32)


def _check_shapes(w: Array, lattice: Array, mask: Array, x: Array) -> None:
    if w.ndim != 3 or w.shape[-1] != 3:
        raise ValueError(f"w must be (B, N, 3), got {w.shape}")
    b, n, _ = w.shape
    if lattice.shape != (b, 3, 3):
        raise ValueError(f"lattice must be ({b}, 3, 3) to match w {w.shape}, got {lattice.shape}")
    if mask.shape != (b, n):
        raise ValueError(f"mask must be ({b}, {n}) to match w {w.shape}, got {mask.shape}")
    if x.shape != (b, 3):
        raise ValueError(f"x must be ({b}, 3), got {x.shape}")


def candidate_words_reference(
    w: Array,
    lattice: Array,
    mask: Array,
    x: Array,
    cutoff: Array,
    *,
    images: tuple[int, int, int],
) -> Array:
    """Pure-``jnp`` version of :func:`candidate_words` (same output, same enumeration).

    Written component-wise (structure of arrays): XLA:CPU vectorises ``(N, N)`` planes well and
    ``(..., 3)`` minor axes badly. This is the XLA path of :mod:`jaxcsp.neighbors`.
    """
    _check_shapes(w, lattice, mask, x)
    one = functools.partial(_candidate_words_one, cutoff=cutoff, images=images)
    token = jnp.sum(mask, dtype=jnp.int32) >= 0
    return fence(jax.vmap(one), token, w, lattice, mask, x)


def candidate_words_dense(
    w: Array,
    lattice: Array,
    mask: Array,
    x: Array,
    cutoff: Array,
    *,
    images: tuple[int, int, int],
) -> Array:
    """The XLA path's candidate test: same candidates, bits packed densely along ``j``.

    With few images per pair (``M = 1`` or ``8`` for ordinary cells) one word per pair is mostly
    empty; packing 32 neighbors ``j`` per word makes the compaction rows ``32 / M`` times shorter.

    Returns:
      ``(B, N, M, Q)`` uint32 with ``Q = ceil(N / 32)``: bit ``b`` of ``[b_, i, t, q]`` is
      candidate image ``t`` of pair ``(i, 32 q + b)``.
    """
    _check_shapes(w, lattice, mask, x)
    one = functools.partial(_candidate_words_one, cutoff=cutoff, images=images, dense=True)
    token = jnp.sum(mask, dtype=jnp.int32) >= 0
    return fence(jax.vmap(one), token, w, lattice, mask, x)


def fence(fn, token: Array, *args: Any) -> Any:
    """``fn(*args)``, computed once and materialised.

    XLA:CPU happily fuses a cheap producer into *each* of its consumers, so a gather from the
    candidate words re-runs the distance test per gathered element, and every use of the
    compaction re-runs the popcount search. ``optimization_barrier`` does not survive the CPU
    pipeline; a ``while_loop`` whose trip count (one) depends on data does. ``token`` must be a
    traced bool that is always True but that XLA cannot prove so (e.g. ``sum(mask) >= 0``).
    Integer outputs only need this; it is transparent to ``vmap``/``jvp`` of integer results.
    """
    shapes = jax.eval_shape(fn, *args)
    init = jax.tree.map(lambda sd: jnp.zeros(sd.shape, sd.dtype), shapes)
    trips = jnp.asarray(token).astype(jnp.int32)

    def body(state):
        i, _ = state
        # Inputs depend on the counter, so loop-invariant code motion cannot hoist ``fn`` out.
        live = jax.tree.map(lambda a: jnp.where(i < trips, a, jnp.zeros_like(a)), args)
        return i + 1, fn(*live)

    return jax.lax.while_loop(lambda st: st[0] < trips, body, (jnp.int32(0), init))[1]


def _candidate_words_one(w, lattice, mask, x, *, cutoff, images, dense=False):
    n = w.shape[0]
    m = math.prod(images)
    words = num_words(images)
    wc = [w[:, c] for c in range(3)]
    lo = [pair_lower_shift(wc[c][:, None], wc[c][None, :], x[c]) for c in range(3)]
    f = [wc[c][None, :] - wc[c][:, None] + lo[c].astype(w.dtype) for c in range(3)]
    base = [f[0] * lattice[0, c] + f[1] * lattice[1, c] + f[2] * lattice[2, c] for c in range(3)]
    pair_ok = mask[:, None] & mask[None, :]
    diag = jnp.eye(n, dtype=bool)
    rc2 = jnp.asarray(cutoff, w.dtype) ** 2
    k = crystal_box(x)  # this crystal's own box within the budget of M candidates
    t = jnp.arange(m, dtype=jnp.int32)
    box = jnp.stack(image_offset(t, k[1], k[2]), -1)  # (M, 3) int32
    live = t < k[0] * k[1] * k[2]  # (M,)

    def one_image(t, alive):  # t (3,) int32: one candidate offset; alive: inside the box
        tf = t.astype(w.dtype)
        off = [
            tf[0] * lattice[0, c] + tf[1] * lattice[1, c] + tf[2] * lattice[2, c] for c in range(3)
        ]
        d2 = (base[0] + off[0]) ** 2 + (base[1] + off[1]) ** 2 + (base[2] + off[2]) ** 2
        self_pair = diag & (lo[0] == -t[0]) & (lo[1] == -t[1]) & (lo[2] == -t[2])
        return (d2 < rc2) & pair_ok & ~self_pair & alive

    if dense:
        q = -(-n // BITS)
        lane = jnp.arange(BITS, dtype=jnp.uint32)

        def pack(ok):  # (..., N, N) bool -> (..., N, Q) uint32, 32 neighbors j per word
            pad = [(0, 0)] * (ok.ndim - 1) + [(0, q * BITS - n)]
            bits = jnp.pad(ok, pad).reshape(*ok.shape[:-1], q, BITS).astype(jnp.uint32)
            return jnp.sum(bits << lane, axis=-1, dtype=jnp.uint32)

        if m <= UNROLL_IMAGES:
            planes = [pack(one_image(box[u], live[u])) for u in range(m)]
            return jnp.stack(planes, axis=1)  # (N, M, Q)
        ok = jax.vmap(one_image)(box, live)  # (M, N, N)
        return jnp.transpose(pack(ok), (1, 0, 2))  # (N, M, Q)

    if m <= UNROLL_IMAGES:
        # One fused loop over the (N, N) plane per output word, images unrolled (like the kernel).
        packed = []
        for u in range(words):
            acc = jnp.zeros((n, n), jnp.uint32)
            for b in range(min(BITS, m - u * BITS)):
                c = u * BITS + b
                acc = acc | (one_image(box[c], live[c]).astype(jnp.uint32) << b)
            packed.append(acc)
        packed = jnp.stack(packed)  # (W, N, N)
    else:
        ok = jax.vmap(one_image)(box, live)  # (M, N, N)
        if words * BITS != m:
            ok = jnp.concatenate([ok, jnp.zeros((words * BITS - m, n, n), bool)], axis=0)
        ok = ok.reshape(words, BITS, n, n).astype(jnp.uint32)
        shifts = jnp.arange(BITS, dtype=jnp.uint32)[None, :, None, None]
        packed = jnp.sum(ok << shifts, axis=1, dtype=jnp.uint32)  # (W, N, N)
    return jnp.transpose(packed, (1, 0, 2))  # (N, W, N)


# ---------------------------------------------------------------------- compaction (XLA)


def compact_candidates(
    words: Array,
    w: Array,
    x: Array,
    *,
    capacity: int,
    layout: str = "pair",
    o: Array | None = None,
) -> RawNeighbors:
    """Compact candidate words into fixed-capacity lists (XLA; shared by kernel and XLA path).

    All rows of the batch are processed as one ``(B N, C)`` matrix with flat indices (XLA:CPU
    handles flat gathers well and batched ones badly). See :func:`_compact_rows`.

    Args:
      words: ``layout="pair"``: ``(B, N, W, N)`` uint32 from :func:`candidate_words` (or its
        reference), bit ``b`` of word ``(u, j)`` is image ``t = 32 u + b`` of pair ``(i, j)``;
        ``layout="dense"``: ``(B, N, M, Q)`` from :func:`candidate_words_dense`, bit ``b`` of
        word ``(t, q)`` is image ``t`` of ``j = 32 q + b``.
      w: ``(B, N, 3)`` wrapped fractional coordinates used to build ``words``.
      x: ``(B, 3)`` reduced cutoffs used to build ``words``.
      capacity: static ``K``.
      layout: static, ``"pair"`` or ``"dense"`` (see ``words``).
      o: optional ``(B, N, 3)`` int32 integer parts of the given coordinates (``frac = w + o``);
        when given, shifts are relative to the given coordinates (``s + o_i - o_j``).

    Returns:
      :class:`RawNeighbors` (shifts relative to the wrapped coordinates unless ``o`` is given).
    """
    b, n = words.shape[:2]
    r = b * n
    token = jnp.sum(jnp.isnan(x), dtype=jnp.int32) >= 0
    src, slot_mask, count = fence(
        functools.partial(_compact_rows, capacity=capacity), token, words.reshape(r, -1)
    )
    word_id = src // BITS
    if layout == "pair":
        t = (word_id // n) * BITS + src % BITS
        j = word_id % n
    elif layout == "dense":
        q = words.shape[3]
        t = word_id // q
        j = (word_id % q) * BITS + src % BITS
    else:
        raise ValueError(f"unknown layout {layout!r}")
    own = jnp.arange(r, dtype=jnp.int32)[:, None] % n
    j = jnp.where(slot_mask, j, own)
    flat_j = (jnp.arange(r, dtype=jnp.int32)[:, None] - own + j).reshape(-1)
    x_r = jnp.repeat(x, n, axis=0)
    k_r = crystal_box(x_r)  # (R, 3): each row decodes with its crystal's own box
    t_axes = image_offset(t, k_r[:, 1:2], k_r[:, 2:3])
    comps = []
    for c in range(3):  # structure of arrays: 1-D gathers, (R, K) planes
        w_c = w[..., c].reshape(r)
        w_j = w_c[flat_j].reshape(r, capacity)
        s_c = pair_lower_shift(w_c[:, None], w_j, x_r[:, c : c + 1]) + t_axes[c]
        if o is not None:  # shift relative to the coordinates as given: s + o_i - o_j
            o_c = o[..., c].reshape(r)
            s_c = s_c + o_c[:, None] - o_c[flat_j].reshape(r, capacity)
        comps.append(jnp.where(slot_mask, s_c, 0))
    return RawNeighbors(
        j.reshape(b, n, capacity).astype(jnp.int32),
        jnp.stack(comps, axis=-1).reshape(b, n, capacity, 3).astype(jnp.int32),
        slot_mask.reshape(b, n, capacity),
        count.reshape(b, n),
    )


def gather_neighbors(values: Array, index: Array) -> Array:
    """``values[b, index[b, i, k]]`` for ``values (B, N, ...)`` and ``index (B, N, K)``.

    A flat gather (XLA:CPU lowers batched ``vmap`` gathers to much slower code).

    Returns:
      ``(B, N, K, ...)``.
    """
    b, n = values.shape[:2]
    first = (jnp.arange(b, dtype=jnp.int32) * n)[:, None, None]
    flat = values.reshape(b * n, *values.shape[2:])
    return flat[(first + index).reshape(-1)].reshape(*index.shape, *values.shape[2:])


def _prefix_sum(v: Array, block: int = 16) -> Array:
    """Inclusive prefix sum of small non-negative counts along the last axis of ``(R, C)``.

    Triangular matmuls in float32 (exact below 2**24): XLA:CPU's cumulative ops are slow. Long
    rows are done in two levels (``block``-wide triangles, then the block totals) so the cost is
    ``R C (block + C / block)`` rather than ``R C²``.
    """
    r, c = v.shape
    v = v.astype(jnp.float32)
    if c == 1:
        return v.astype(jnp.int32)
    if c <= 2 * block:
        return jnp.round(v @ jnp.triu(jnp.ones((c, c), jnp.float32))).astype(jnp.int32)
    nb = -(-c // block)
    vp = jnp.pad(v, ((0, 0), (0, nb * block - c))).reshape(r * nb, block)
    inner = (vp @ jnp.triu(jnp.ones((block, block), jnp.float32))).reshape(r, nb, block)
    totals = inner[:, :, -1]
    before = totals @ jnp.triu(jnp.ones((nb, nb), jnp.float32), k=1)  # exclusive
    out = (inner + before[:, :, None]).reshape(r, nb * block)[:, :c]
    return jnp.round(out).astype(jnp.int32)


def _compact_rows(words: Array, capacity: int) -> tuple[Array, Array, Array]:
    """Slots of the set bits of each row of ``words (R, C)`` uint32.

    1. popcount and inclusive prefix ``incl`` per word (triangular matmul);
    2. the word holding slot ``k`` is ``#{c : incl_c <= k}``: a histogram of ``incl`` (one
       scatter-add per word, not per bit) prefix-summed over the ``K`` slots;
    3. one flat gather fetches that word and its exclusive prefix, and a 5-step popcount binary
       search finds the ``(k - excl)``-th set bit inside it.

    Returns:
      ``src (R, K)`` int32 bit numbers ``32 c + b`` (0 in unused slots), ``slot_mask (R, K)`` and
      ``count (R,)`` int32 set bits per row (may exceed ``K``).
    """
    r, c = words.shape
    k = capacity
    pc = jax.lax.population_count(words).astype(jnp.int32)
    incl = _prefix_sum(pc)
    count = incl[:, -1]
    rows = jnp.arange(r, dtype=jnp.int32)[:, None]
    at = (rows * (k + 1) + jnp.minimum(incl, k)).reshape(-1)
    hist = jnp.zeros((r * (k + 1),), jnp.float32).at[at].add(1.0, indices_are_sorted=True)
    wk = jnp.minimum(_prefix_sum(hist.reshape(r, k + 1)[:, :k]), c - 1)
    flat = (rows * c + wk).reshape(-1)
    word = words.reshape(-1)[flat].reshape(r, k)
    rank = jnp.arange(k, dtype=jnp.int32)[None, :] - (incl - pc).reshape(-1)[flat].reshape(r, k)
    pos = jnp.zeros_like(rank)
    for s in (16, 8, 4, 2, 1):
        low = (jnp.uint32(1) << (pos + s).astype(jnp.uint32)) - jnp.uint32(1)
        below = jax.lax.population_count(word & low).astype(jnp.int32)
        pos = jnp.where(below <= rank, pos + s, pos)
    slot_mask = jnp.arange(k, dtype=jnp.int32)[None, :] < count[:, None]
    return jnp.where(slot_mask, wk * BITS + pos, 0), slot_mask, count


# ---------------------------------------------------------------------- wrapper


@functools.partial(
    jax.jit, static_argnames=("images", "max_neighbors", "block", "interpret", "use_kernel")
)
def neighbor_list(
    w: Array,
    lattice: Array,
    mask: Array,
    x: Array,
    cutoff: Array,
    *,
    images: tuple[int, int, int],
    max_neighbors: int,
    block: tuple[int, int, int] | None = None,
    interpret: bool = False,
    use_kernel: bool = True,
    o: Array | None = None,
) -> RawNeighbors:
    """Fixed-capacity neighbor lists: candidate kernel + XLA compaction.

    Args:
      w: ``(B, N, 3)`` wrapped fractional coordinates in ``[0, 1)``.
      lattice: ``(B, 3, 3)`` lattice rows, Å.
      mask: ``(B, N)`` bool.
      x: ``(B, 3)`` reduced cutoffs ``cutoff / width``.
      cutoff: scalar cutoff, Å.
      images: static box whose product ``M`` is the candidate budget per pair
        (``prod(crystal_box(x)) <= M`` for every crystal).
      max_neighbors: static capacity ``K``.
      block: static kernel tile ``(G, T_i, T_j)``.
      interpret: Pallas interpret mode.
      use_kernel: ``False`` runs :func:`candidate_words_dense` instead (the XLA path).
      o: optional ``(B, N, 3)`` int32 integer parts of the given coordinates (see
        :func:`compact_candidates`).

    Returns:
      :class:`RawNeighbors` with shifts relative to the wrapped coordinates (or, with ``o``, to
      the given ones).
    """
    if use_kernel:
        words = candidate_words(
            w, lattice, mask, x, cutoff, images=images, block=block, interpret=interpret
        )
        return compact_candidates(words, w, x, capacity=max_neighbors, o=o)
    words = candidate_words_dense(w, lattice, mask, x, cutoff, images=images)
    return compact_candidates(words, w, x, capacity=max_neighbors, layout="dense", o=o)


# ---------------------------------------------------------------------- reference


@functools.partial(jax.jit, static_argnames=("max_shift", "max_neighbors"))
def neighbor_list_reference(
    frac: Array,
    lattice: Array,
    mask: Array,
    cutoff: Array,
    *,
    max_shift: tuple[int, int, int],
    max_neighbors: int,
) -> RawNeighbors:
    """Dense pure-``jnp`` oracle: every pair against every image in ``[-n_d, n_d]``.

    No wrapping, no per-pair pruning, no bit tricks: positions are ``frac @ lattice`` as given and
    shifts are relative to them (the public convention). ``max_shift`` must cover the data:
    ``n_d >= ceil(cutoff / width_d + span_d)`` where ``span_d`` is the spread of ``frac[..., d]``
    (for wrapped coordinates, ``ceil(cutoff / width_d)`` suffices since ``span < 1``).

    Args:
      frac: ``(B, N, 3)`` fractional coordinates.
      lattice: ``(B, 3, 3)`` lattice rows, Å.
      mask: ``(B, N)`` bool.
      cutoff: scalar cutoff, Å.
      max_shift: static ``(n_1, n_2, n_3)`` half-widths of the image box.
      max_neighbors: static capacity ``K``.

    Returns:
      :class:`RawNeighbors` (slots in (j, image) order; count may exceed ``K``).
    """
    n1, n2, n3 = max_shift
    grid = np.stack(
        np.meshgrid(
            np.arange(-n1, n1 + 1), np.arange(-n2, n2 + 1), np.arange(-n3, n3 + 1), indexing="ij"
        ),
        -1,
    ).reshape(-1, 3)
    shifts = jnp.asarray(grid, jnp.int32)  # (S, 3)
    n = frac.shape[1]

    def one(f, lat, m):
        pos = f @ lat
        d = (
            pos[None, :, None, :]
            - pos[:, None, None, :]
            + (shifts.astype(f.dtype) @ lat)[None, None]
        )
        d2 = jnp.sum(d * d, axis=-1)  # (N, N, S)
        zero = jnp.all(shifts == 0, axis=-1)
        self_pair = jnp.eye(n, dtype=bool)[:, :, None] & zero[None, None, :]
        ok = (d2 < cutoff * cutoff) & (m[:, None] & m[None, :])[:, :, None] & ~self_pair
        ok = ok.reshape(n, -1)
        count = jnp.sum(ok, axis=-1, dtype=jnp.int32)
        (idx,) = jax.vmap(lambda r: jnp.nonzero(r, size=max_neighbors, fill_value=0))(ok)
        slot = jnp.arange(max_neighbors)[None, :] < count[:, None]
        j = jnp.where(slot, idx // len(grid), jnp.arange(n)[:, None])
        s = jnp.where(slot[..., None], shifts[idx % len(grid)], 0)
        return j.astype(jnp.int32), s, slot, count

    return RawNeighbors(*jax.vmap(one)(frac, lattice, mask))
