"""The world model's objective: the true ELBO, with PlaNet's free nats and DreamerV2's KL
balancing as labelled surrogates that change only what is maximized."""

from __future__ import annotations

import torch
from torch import Tensor

from elbox._validation import check_number, check_positive_int
from elbox.data.batches import Batch
from elbox.objectives.base import Objective, Output, register_objective

__all__ = ["FREE_NATS_MODES", "WorldELBO"]

#: Where free nats apply: ``"step"`` (PlaNet, DreamerV3: each step's KL of each sequence) or
#: ``"batch"`` (DreamerV1: the KL's mean over the batch's steps).
FREE_NATS_MODES = ("step", "batch")


@register_objective("world_elbo")
class WorldELBO(Objective):
    r"""A world model's ELBO (:class:`~elbox.models.WorldModel`), the bound itself always reported:

    .. math:: \mathcal{L}(o, r, c \mid a) = \sum_t \mathbb{E}_q\big[\log p(o_t \mid h_t, z_t)
              + \log p(r_t \mid h_t, z_t) + \log p(c_t \mid h_t, z_t) - \mathrm{KL}_t\big], \qquad
              \mathrm{KL}_t = \mathrm{KL}\big(q(z_t \mid h_t, o_t) \,\|\, p(z_t \mid h_t)\big).

    The parts are ``reconstruction`` (E_q log p(o, r, c | ·)), ``observation``, ``reward``, ``kl``
    and, for a model with a continuation head (``continuation=True``), ``continuation`` (the
    continuation flags' Bernoulli log-likelihood; without the head there is no c_t term).
    The surrogates change only what is maximized; with either on, the metrics carry
    ``surrogate`` (the number maximized) beside ``bound``, the true ELBO (the objective's value):

    - ``free_nats`` = F > 0: the KL enters as max(KL, F), per step of each sequence
      (``free_nats_mode="step"``, PlaNet: F = 3; DreamerV3: 1) or on the mean KL per step over
      the batch (``"batch"``, DreamerV1: below F the KL carries no gradient).
    - ``kl_balance`` = α in (0, 1) (DreamerV2: 0.8): the KL's gradient split as
      α KL(sg(q) ‖ p) + (1 − α) KL(q ‖ sg(p)) (sg: no gradient); 0 (default) is the plain KL.

    Args:
        model: A :class:`~elbox.models.WorldModel`.
        guide: Its posterior (``model.guide()``).
        num_samples: Paths per sequence.
        free_nats: F (0: off).
        free_nats_mode: ``"step"`` or ``"batch"``.
        kl_balance: α (0: off).
    """

    option_help = {"free_nats": "PlaNet's free nats F: the KL enters what is maximized as max(KL, F) (0: off)",
                   "free_nats_mode": "'step' (each step's KL, PlaNet) or 'batch' (the batch's mean KL per step, "
                                     "DreamerV1)",
                   "kl_balance": "DreamerV2's KL balancing α in (0, 1), 0.8 there (0: off)"}  # fmt: skip

    def __init__(self, model, guide, *, num_samples: int = 1, free_nats: float = 0.0, free_nats_mode: str = "step",
                 kl_balance: float = 0.0):  # fmt: skip
        super().__init__(model, guide)
        from elbox.models.world import WorldModel

        if not isinstance(model, WorldModel):
            raise TypeError(f"the 'world_elbo' objective trains a WorldModel; received {type(model).__name__}")
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.free_nats = check_number(free_nats, "free_nats", minimum=0.0)
        if free_nats_mode not in FREE_NATS_MODES:
            raise ValueError(f"free_nats_mode must be one of {FREE_NATS_MODES}; received {free_nats_mode!r}")
        self.free_nats_mode = free_nats_mode
        self.kl_balance = check_number(kl_balance, "kl_balance", minimum=0.0)
        if self.kl_balance >= 1:
            raise ValueError(f"kl_balance must lie in [0, 1) (0: off; DreamerV2: 0.8); received {kl_balance}")

    @property
    def surrogate_on(self) -> bool:
        return self.free_nats > 0 or self.kl_balance > 0

    def options(self) -> dict:
        return {"num_samples": self.num_samples, "free_nats": self.free_nats, "free_nats_mode": self.free_nats_mode,
                "kl_balance": self.kl_balance}  # fmt: skip

    def forward(self, batch: Batch | Tensor) -> Output:
        from elbox.bounds._common import prepare
        from elbox.models.world import world_steps

        x, q, p = prepare(self.model, self.guide, self.batch(batch))
        steps, _, (observation, reward, continuation, kl, q_stats, p_stats) = world_steps(
            self.model, x, q, p, self.num_samples, raw=True)  # fmt: skip
        mask = q.mask
        value = steps.value.sum(-1)
        obs_sum, reward_sum, cont_sum = steps.observation.sum(-1), steps.reward.sum(-1), steps.continuation.sum(-1)
        parts = {"reconstruction": obs_sum + reward_sum + cont_sum, "observation": obs_sum, "reward": reward_sum,
                 "kl": steps.kl.sum(-1)}  # fmt: skip
        if self.model.has_continuation:
            parts["continuation"] = cont_sum
        if not self.surrogate_on:
            return Output(value, value, parts)
        # what is maximized: the KL balanced and floored; its value is the true KL's where the floor is not hit
        model = self.model
        if self.kl_balance > 0:
            a = self.kl_balance
            detach = tuple(s.detach() for s in q_stats), tuple(s.detach() for s in p_stats)
            kl_g = a * model._kl(detach[0], p_stats) + (1 - a) * model._kl(q_stats, detach[1])
            kl_g = torch.where(mask, kl_g, 0.0)
        else:
            kl_g = kl
        F = self.free_nats
        if F > 0 and self.free_nats_mode == "step":
            kl_g = torch.where(kl.detach() < F, torch.full_like(kl_g, F), kl_g)
            kl_g = torch.where(mask, kl_g, 0.0)
        kl_sum = kl_g.sum(-1)  # [S, B]
        if F > 0 and self.free_nats_mode == "batch":
            lengths = mask.sum(-1).to(kl_sum.dtype)
            mean_per_step = kl.detach().sum(-1).mean() / lengths.mean()  # the batch's mean KL per step
            if bool(mean_per_step < F):
                kl_sum = (F * lengths).expand_as(kl_sum)
        surrogate = (observation + reward + continuation).sum(-1).mean(0) - kl_sum.mean(0)
        parts["surrogate"] = surrogate.detach()
        return Output(value, surrogate, parts)
