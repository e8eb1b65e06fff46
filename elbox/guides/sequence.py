r"""Structured inference networks for sequence models (Krishnan, Shalit & Sontag, 2017): RNNs
over the observations feed a combiner that gives q(z_t | z_{t-1}, x) step by step, returned as
one distribution over the whole path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elbox._validation import check_positive_int
from elbox.data.sequences import Sequences
from elbox.distributions.flow import build_flow
from elbox.distributions.markov_path import MarkovPath
from elbox.guides.base import Guide

__all__ = ["GUIDE_KINDS", "StructuredGuide", "reverse_sequences"]

#: ``"st-r"``: z_{t-1} and an RNN over x_{t:T} (the paper's and Pyro's); ``"st-lr"``: z_{t-1} and
#: RNNs both ways; ``"mf-lr"``: mean field, RNNs both ways and no z_{t-1}; ``"st-l"``: a filter,
#: z_{t-1} and an RNN over x_{1:t}.
GUIDE_KINDS = ("st-r", "st-lr", "mf-lr", "st-l")


def reverse_sequences(values: Tensor, lengths: Tensor) -> Tensor:
    """Each sequence of ``values [B, T, *]`` reversed within its own length (padding stays at the
    end); its own inverse."""
    B, T = values.shape[:2]
    t = torch.arange(T, device=values.device)
    index = torch.where(t < lengths.unsqueeze(-1), lengths.unsqueeze(-1) - 1 - t, t)  # [B, T]
    return values.gather(1, index.view(B, T, *([1] * (values.dim() - 2))).expand_as(values))


class StructuredGuide(Guide):
    r"""q(z_{1:T} | x_{1:T}) = ∏_t q(z_t | z_{t-1}, h_t) with h_t from RNNs over the sequence and
    the combiner of Krishnan et al.:

    .. math:: \tilde h_t = \tfrac12\big(\tanh(W z_{t-1} + b) + h_t\big)\ \text{(ST-R, ST-L)}, \quad
              \tilde h_t = \tfrac13\big(\tanh(W z_{t-1} + b) + h^{\leftarrow}_t + h^{\rightarrow}_t\big)\ \text{(ST-LR)},
              \qquad q(z_t \mid \cdot) = \mathcal{N}(L \tilde h_t,\ \operatorname{diag}\mathrm{softplus}(S \tilde h_t)^2),

    and for MF-LR :math:`\tilde h_t = \tfrac12(h^{\leftarrow}_t + h^{\rightarrow}_t)`, no z_{t-1}. h^← runs over
    x_{t:T} (each sequence reversed within its own length: no sorting, no packing), h^→ over
    x_{1:t}. ``iafs`` inverse autoregressive flows follow each step (Pyro's DMM with IAFs).
    ``guide(x)`` returns a :class:`~elbox.distributions.MarkovPath`: ``rsample``, ``log_prob``,
    per-step conditionals, and the single steps the particle filter proposes from.

    Args:
        obs_dim: The size of x_t (the number of symbols, with ``symbols``).
        latent_dim: D.
        kind: One of :data:`GUIDE_KINDS`.
        rnn_dim: The RNNs' hidden size.
        input_dim: The size of inputs u_t, read by the RNNs with x_t (0: none).
        symbols: x_t are integer symbols (one-hot encoded for the RNNs).
        iafs: Stacked IAF transforms per step (0: none).
        iaf_dim: Their hidden width.
        nonlinearity: The RNNs' (``"relu"`` as Pyro's, or ``"tanh"``).

    References:
        Structured Inference Networks for Nonlinear State Space Models (Krishnan, Shalit &
        Sontag, 2017), https://arxiv.org/abs/1609.09869
    """

    def __init__(self, obs_dim: int, latent_dim: int, *, kind: str = "st-r", rnn_dim: int = 600, input_dim: int = 0,
                 symbols: bool = False, iafs: int = 0, iaf_dim: int = 100, nonlinearity: str = "relu"):  # fmt: skip
        super().__init__()
        if kind not in GUIDE_KINDS:
            raise ValueError(f"kind must be one of {GUIDE_KINDS}; received {kind!r}")
        if nonlinearity not in ("relu", "tanh"):
            raise ValueError(f"nonlinearity must be 'relu' or 'tanh'; received {nonlinearity!r}")
        self.obs_dim = check_positive_int(obs_dim, "obs_dim")
        D = self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        H = self.rnn_dim = check_positive_int(rnn_dim, "rnn_dim")
        self.input_dim = check_positive_int(input_dim, "input_dim", minimum=0)
        self.kind, self.symbols = kind, bool(symbols)
        self.iafs = check_positive_int(iafs, "iafs", minimum=0)
        features = self.obs_dim + self.input_dim
        self.backward_rnn = nn.RNN(features, H, nonlinearity=nonlinearity, batch_first=True) \
            if kind in ("st-r", "st-lr", "mf-lr") else None  # fmt: skip
        self.forward_rnn = nn.RNN(features, H, nonlinearity=nonlinearity, batch_first=True) \
            if kind in ("st-l", "st-lr", "mf-lr") else None  # fmt: skip
        self.h_0 = nn.Parameter(torch.zeros(2 if kind in ("st-lr", "mf-lr") else 1, H))
        self.z_to_hidden = nn.Linear(D, H) if kind != "mf-lr" else None
        self.hidden_to_loc = nn.Linear(H, D)
        self.hidden_to_scale = nn.Linear(H, D)
        self.z_q_0 = nn.Parameter(torch.zeros(D))
        self.flow = build_flow("maf", D, 0, self.iafs, (check_positive_int(iaf_dim, "iaf_dim"),),
                               sample_fast=True) if self.iafs else None  # fmt: skip

    def features(self, x: Sequences) -> Tensor:
        """h_t for every step, ``[B, T, rnn_dim]`` (the sum of both directions' for ST-LR and MF-LR)."""
        values = F.one_hot(x.values, self.obs_dim).to(self.h_0.dtype) if self.symbols else x.values
        if x.inputs is not None:
            values = torch.cat([values, x.inputs], -1)
        B = values.shape[0]
        lengths = x.mask.sum(-1)
        h, i = 0.0, 0
        if self.backward_rnn is not None:  # over x_{t:T}: each sequence reversed within its length
            out, _ = self.backward_rnn(reverse_sequences(values, lengths), self.h_0[i].expand(1, B, -1).contiguous())
            h, i = h + reverse_sequences(out, lengths), i + 1
        if self.forward_rnn is not None:  # over x_{1:t}
            out, _ = self.forward_rnn(values, self.h_0[i].expand(1, B, -1).contiguous())
            h = h + out
        return h

    def _step(self, z_prev: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.kind == "mf-lr":
            combined = 0.5 * h.expand(*z_prev.shape[:-1], h.shape[-1])
        else:
            parts = 3.0 if self.kind == "st-lr" else 2.0
            combined = (torch.tanh(self.z_to_hidden(z_prev)) + h) / parts
        return self.hidden_to_loc(combined), F.softplus(self.hidden_to_scale(combined))

    def forward(self, x, index: Tensor | None = None) -> MarkovPath:
        if not isinstance(x, Sequences):
            raise TypeError(f"{type(self).__name__} takes Sequences (a model's check_data(x)); received "
                            f"{type(x).__name__}")  # fmt: skip
        flow = self.flow.transform(None) if self.flow is not None else None
        return MarkovPath(self._step, self.z_q_0, x.mask, self.features(x), flow=flow,
                          ignores_previous=self.kind == "mf-lr")  # fmt: skip

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, latent_dim={self.latent_dim}, rnn_dim={self.rnn_dim}, iafs={self.iafs}"
