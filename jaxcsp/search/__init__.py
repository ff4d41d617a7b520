"""Crystal structure search: propose, relax on an oracle, deduplicate, rank, measure.

Every method is a pure ``(init, step)`` pair over a registered :class:`SearchState`
(:class:`Method`); :func:`run` is the one host driver that relaxes each proposal on the
:class:`Oracle` (continuous batching, cheap tiers first), writes every candidate to an ASE
database as it finishes, deduplicates (:func:`deduplicate`), ranks by enthalpy per atom
(:func:`rank`), computes the field's metrics (:func:`search_metrics`) and resumes a killed
search to the same result.

>>> import jaxcsp as jc
>>> m = jc.search.random_search(batch_size=4)
>>> m.name
'random'
"""

from jaxcsp.search._active import active_learning, cluster_labels, lowest_clusters
from jaxcsp.search._base import (
    Evaluation,
    InvalidSearchError,
    Method,
    Oracle,
    Proposal,
    SearchState,
    Tier,
    record,
)
from jaxcsp.search._basin import basin_hopping, pool_generator, random_generator
from jaxcsp.search._crysim import crysim_search
from jaxcsp.search._crysim_encoding import (
    CrysimEncoding,
    crysim_encoding,
    crysim_length_range,
    decode,
    encode,
)
from jaxcsp.search._dedup import (
    DedupInfo,
    Deduplicator,
    deduplicate,
    default_fingerprint_tol,
    fingerprints,
    prefilter_pairs,
)
from jaxcsp.search._driver import SearchResult, check_setup, evaluate, run
from jaxcsp.search._dual import (
    DualLevelPopulation,
    DualLevelResult,
    Screening,
    dual_level,
    dual_level_search,
)
from jaxcsp.search._metrics import best_vs_calls, rank, search_metrics
from jaxcsp.search._plot import plot_search
from jaxcsp.search._random import random_search

__all__ = [
    "CrysimEncoding",
    "DedupInfo",
    "Deduplicator",
    "DualLevelPopulation",
    "DualLevelResult",
    "Evaluation",
    "InvalidSearchError",
    "Method",
    "Oracle",
    "Proposal",
    "Screening",
    "SearchResult",
    "SearchState",
    "Tier",
    "active_learning",
    "basin_hopping",
    "best_vs_calls",
    "check_setup",
    "cluster_labels",
    "crysim_encoding",
    "crysim_length_range",
    "crysim_search",
    "decode",
    "deduplicate",
    "default_fingerprint_tol",
    "dual_level",
    "dual_level_search",
    "encode",
    "evaluate",
    "fingerprints",
    "lowest_clusters",
    "plot_search",
    "pool_generator",
    "prefilter_pairs",
    "random_generator",
    "random_search",
    "rank",
    "record",
    "run",
    "search_metrics",
]
