"""Variational families q_φ(z | x): modules whose ``guide(x, index)`` returns a distribution."""

from elbox.guides.amortized import Amortized, mlp
from elbox.guides.base import Exact, Guide
from elbox.guides.families import Beta, Categorical, FullRankNormal, MeanFieldNormal

__all__ = ["Amortized", "Beta", "Categorical", "Exact", "FullRankNormal", "Guide", "MeanFieldNormal", "mlp"]
