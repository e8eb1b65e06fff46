"""The base class of variational families, and the exact posterior as a guide."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from elbox._validation import check_positive_int, describe

__all__ = ["Exact", "Guide"]


class Guide(nn.Module):
    """A variational family q_φ(z | x): ``guide(x, index=None)`` returns a distribution over z
    with batch shape ``[B]``.

    A *global* guide (``num_points=None``) has one set of parameters, shared by every data
    point. A *local* guide holds one q per data point of a training set of ``num_points``
    points and picks the rows named by ``index`` (the data points' positions in that set);
    :func:`elbox.fit` passes the indices of each mini-batch.
    """

    #: Whether :func:`~elbox.inference.refine` can optimize a q per point of this family (False
    #: for a guide with nothing to optimize: the report then skips the gap's split).
    refinable: bool = True

    def __init__(self, num_points: int | None = None):
        super().__init__()
        self.num_points = None if num_points is None else check_positive_int(num_points, "num_points")

    @property
    def is_local(self) -> bool:
        return self.num_points is not None

    def forward(self, x: Tensor, index: Tensor | None = None) -> Distribution:
        raise NotImplementedError

    def _rows(self, param: Tensor, x: Tensor, index: Tensor | None) -> Tensor:
        """The parameters for the batch: ``[B, *shape]`` from ``[*shape]`` or ``[P, *shape]``."""
        B = x.shape[0]
        if not self.is_local:
            return param.expand(B, *param.shape)
        if index is None:
            if B != self.num_points:
                raise ValueError(
                    f"{type(self).__name__} is local (one q per data point, num_points="
                    f"{self.num_points}) but received a batch of {B} points and no index; pass "
                    "index=, the positions of the batch's points in the training set"
                )
            return param
        index = torch.as_tensor(index, device=param.device)
        if index.dtype not in (torch.int32, torch.int64) or index.shape != (B,):
            raise ValueError(f"index must be an integer tensor of shape [{B}]; received {describe(index)}")
        if B and (int(index.min()) < 0 or int(index.max()) >= self.num_points):
            raise ValueError(
                f"index must lie in [0, {self.num_points}); received values in "
                f"[{int(index.min())}, {int(index.max())}]"
            )
        return param[index]


class Exact(Guide):
    """The model's exact posterior p_θ(z | x) used as q: the gap is zero by construction.

    The model is held by reference, not registered as a submodule, so that its parameters are
    not counted twice when a guide and a model are optimized together.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not getattr(model, "has_exact_evidence", False):
            raise TypeError(f"Exact needs a model with an exact posterior; {type(model).__name__} has none")
        object.__setattr__(self, "model", model)

    def forward(self, x: Tensor, index: Tensor | None = None) -> Distribution:
        return self.model.posterior(x)

    def extra_repr(self) -> str:
        return f"model={type(self.model).__name__}"
