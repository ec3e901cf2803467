"""Evaluation: scores (:mod:`.metrics`), ground truth of retrieval data sets
(:mod:`.groundtruth`) and the paper's table on an Oxford-style data set (:mod:`.table`,
imported on first use: it builds retrievers)."""

from .groundtruth import (
    DEFAULT_LEVELS,
    EvalResult,
    OxfordGroundTruth,
    Protocol,
    Query,
    UKBenchGroundTruth,
    load_gnd,
)
from .metrics import average_precision, mean_average_precision, ukbench_score

__all__ = [
    "DEFAULT_LEVELS",
    "EvalResult",
    "OxfordGroundTruth",
    "Protocol",
    "Query",
    "UKBenchGroundTruth",
    "average_precision",
    "load_gnd",
    "mean_average_precision",
    "ukbench_score",
]
