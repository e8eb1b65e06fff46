"""Variational families q_φ(z | x): modules whose ``guide(x, index)`` returns a distribution."""

from elbox.guides.amortized import Amortized, mlp
from elbox.guides.base import Exact, Guide
from elbox.guides.discrete import Bernoulli, OneHotCategorical
from elbox.guides.families import Beta, Categorical, FullRankNormal, MeanFieldNormal
from elbox.guides.flow import FlowGuide
from elbox.guides.sequence import StructuredCategoricalGuide, StructuredGuide

__all__ = [
    "Amortized",
    "Bernoulli",
    "Beta",
    "Categorical",
    "Exact",
    "FlowGuide",
    "FullRankNormal",
    "Guide",
    "MeanFieldNormal",
    "OneHotCategorical",
    "StructuredCategoricalGuide",
    "StructuredGuide",
    "mlp",
]
