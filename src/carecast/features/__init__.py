"""Clinical scores and features computed from DataFrames and plain values; the same code serves training and serving.

Layer 3: imports only carecast.config, carecast.errors, carecast.domain, numpy and pandas; never the store.
"""

from carecast.features.scores import (
    NEWS2_BANDS,
    NEWS2_PARAMETERS,
    CharlsonResult,
    LaceResult,
    News2Result,
    QsofaResult,
    charlson,
    lace,
    news2,
    news2_frame,
    qsofa,
    qsofa_frame,
)

__all__ = [
    "NEWS2_BANDS",
    "NEWS2_PARAMETERS",
    "CharlsonResult",
    "LaceResult",
    "News2Result",
    "QsofaResult",
    "charlson",
    "lace",
    "news2",
    "news2_frame",
    "qsofa",
    "qsofa_frame",
]
