r"""Structured inference networks for sequence models (Krishnan, Shalit & Sontag, 2017): RNNs
over the observations feed a combiner that gives q(z_t | z_{t-1}, x) step by step, returned as
one distribution over the whole path."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elbox._validation import check_positive_int
from elbox.data.sequences import Sequences
from elbox.distributions.flow import build_flow
from elbox.distributions.markov import MarkovChain
from elbox.distributions.markov_path import MarkovPath
from elbox.guides.base import Guide

__all__ = ["GUIDE_KINDS", "PriorProposal", "StructuredCategoricalGuide", "StructuredGuide", "reverse_sequences"]

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
              \tilde h_t = \tfrac13\big(\tanh(W z_{t-1} + b) + h^{\leftarrow}_t
              + h^{\rightarrow}_t\big)\ \text{(ST-LR)}, \qquad
              q(z_t \mid \cdot) = \mathcal{N}(L \tilde h_t,\ \operatorname{diag}\mathrm{softplus}(S \tilde h_t)^2),

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
        _check_kind(kind, nonlinearity)
        self.obs_dim = check_positive_int(obs_dim, "obs_dim")
        D = self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        H = self.rnn_dim = check_positive_int(rnn_dim, "rnn_dim")
        self.input_dim = check_positive_int(input_dim, "input_dim", minimum=0)
        self.kind, self.symbols = kind, bool(symbols)
        self.iafs = check_positive_int(iafs, "iafs", minimum=0)
        _build_rnns(self, kind, self.obs_dim + self.input_dim, H, nonlinearity)
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
            out = _rnn(self.backward_rnn, reverse_sequences(values, lengths), self.h_0[i].expand(B, -1))
            h, i = h + reverse_sequences(out, lengths), i + 1
        if self.forward_rnn is not None:  # over x_{1:t}
            h = h + _rnn(self.forward_rnn, values, self.h_0[i].expand(B, -1))
        return h

    def _step(self, z_prev: Tensor, h: Tensor | None, out: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """q's loc and scale given z_{t-1} and h_t; ``out`` the loc and scale layers' weights and biases
        stacked (one product for both)."""
        if self.kind == "mf-lr":
            combined = 0.5 * h.expand(*z_prev.shape[:-1], h.shape[-1])
        else:
            parts = 3.0 if self.kind == "st-lr" else 2.0
            combined = (torch.tanh(self.z_to_hidden(z_prev)) + h) / parts
        loc, scale = F.linear(combined, *out).chunk(2, -1)
        return loc, F.softplus(scale)

    def forward(self, x, index: Tensor | None = None) -> MarkovPath:
        if not isinstance(x, Sequences):
            raise TypeError(f"{type(self).__name__} takes Sequences (a model's check_data(x)); received "
                            f"{type(x).__name__}")  # fmt: skip
        x = x.trimmed()  # the steps some sequence of the batch reaches (as the model's check_data keeps)
        flow = self.flow.transform(None) if self.flow is not None else None
        out = (torch.cat([self.hidden_to_loc.weight, self.hidden_to_scale.weight]),
               torch.cat([self.hidden_to_loc.bias, self.hidden_to_scale.bias]))  # fmt: skip
        h = self.features(x)
        scan = None
        if self.kind != "mf-lr":
            parts = 3.0 if self.kind == "st-lr" else 2.0
            linear = (self.z_to_hidden.weight, self.z_to_hidden.bias, *out)

            def scan(z_0: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
                lead = z_0.shape[:-1]  # [*S, B]
                features = h.expand(*lead[:-1], *h.shape).reshape(-1, *h.shape[1:])  # [N, T, H]
                loc, scale = _CombinerScan.apply(z_0.reshape(-1, z_0.shape[-1]), features,
                                                 noise.reshape(-1, *noise.shape[-2:]), *linear, parts)  # fmt: skip
                return loc.view(*lead, *loc.shape[1:]), scale.view(*lead, *scale.shape[1:])

        return MarkovPath(functools.partial(self._step, out=out), self.z_q_0, x.mask, h, flow=flow,
                          ignores_previous=self.kind == "mf-lr", scan=scan)  # fmt: skip

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, latent_dim={self.latent_dim}, rnn_dim={self.rnn_dim}, iafs={self.iafs}"


class PriorProposal(Guide):
    """q = the model's own prior over paths, ``model.prior_for(x)``: the proposal of the bootstrap
    particle filter (Gordon, Salmond & Smith, 1993), where a sequence model has no guide. It holds
    the model without registering it (it trains nothing)."""

    refinable = False

    def __init__(self, model):
        super().__init__()
        object.__setattr__(self, "model", model)

    def forward(self, x, index: Tensor | None = None):
        return self.model.prior_for(x)


def _build_rnns(guide: nn.Module, kind: str, features: int, H: int, nonlinearity: str) -> None:
    """The RNNs a guide of this ``kind`` reads the sequence with, and their initial states ``h_0``."""
    guide.backward_rnn = nn.RNN(features, H, nonlinearity=nonlinearity, batch_first=True) \
        if kind in ("st-r", "st-lr", "mf-lr") else None  # fmt: skip
    guide.forward_rnn = nn.RNN(features, H, nonlinearity=nonlinearity, batch_first=True) \
        if kind in ("st-l", "st-lr", "mf-lr") else None  # fmt: skip
    guide.h_0 = nn.Parameter(torch.zeros(2 if kind in ("st-lr", "mf-lr") else 1, H))


class StructuredCategoricalGuide(Guide):
    r"""The structured inference network over the paths of a K-state latent (a DeepMarkovModel with
    ``latent="categorical"``): the same RNNs as :class:`StructuredGuide`, and the combiner read at
    each previous state i = z_{t-1} (one-hot e_i) to give the logits of z_t,

    .. math:: q(z_t = j \mid z_{t-1} = i, x) \propto
              \exp\Big(V\,\tfrac1k\big(\tanh(W e_i + b) + h_t\big) + v\Big)_j
              \ (k = 2 \text{ for ST-R and ST-L}, 3 \text{ for ST-LR}),

    :math:`\tanh(W e_i + b)` replaced by a learned vector at t = 1, and by nothing for MF-LR (then
    q(z_t | x) ignores z_{t-1}). ``guide(x)`` is a :class:`~elbox.distributions.MarkovChain` with a
    K × K table per step and sequence: log_prob, marginals and the KL to the model's chain are exact,
    so the ELBO is exact (no sampling, no score function); the particle filter draws from it step
    by step. States past each end are uniform, as under the model's prior.

    Args:
        obs_dim: The size of x_t (the number of symbols, with ``symbols``).
        num_states: K.
        kind: One of :data:`GUIDE_KINDS`.
        rnn_dim: The RNNs' hidden size.
        symbols: x_t are integer symbols (one-hot encoded for the RNNs).
        nonlinearity: The RNNs' (``"relu"`` or ``"tanh"``).
    """

    def __init__(self, obs_dim: int, num_states: int, *, kind: str = "st-r", rnn_dim: int = 600, symbols: bool = False,
                 nonlinearity: str = "relu"):  # fmt: skip
        super().__init__()
        _check_kind(kind, nonlinearity)
        self.obs_dim = check_positive_int(obs_dim, "obs_dim")
        K = self.num_states = check_positive_int(num_states, "num_states")
        H = self.rnn_dim = check_positive_int(rnn_dim, "rnn_dim")
        self.kind, self.symbols, self.input_dim = kind, bool(symbols), 0
        _build_rnns(self, kind, self.obs_dim, H, nonlinearity)
        self.state_to_hidden = nn.Linear(K, H) if kind != "mf-lr" else None
        self.first_hidden = nn.Parameter(torch.zeros(H)) if kind != "mf-lr" else None  # in place of W e_{z_0} + b
        self.hidden_to_logits = nn.Linear(H, K)

    features = StructuredGuide.features  # h_t, [B, T, rnn_dim]

    def forward(self, x, index: Tensor | None = None) -> MarkovChain:
        if not isinstance(x, Sequences):
            raise TypeError(f"{type(self).__name__} takes Sequences (a model's check_data(x)); received "
                            f"{type(x).__name__}")  # fmt: skip
        x = x.trimmed()
        h = self.features(x)  # [B, T, H]
        B, T, K = *x.mask.shape, self.num_states
        if self.kind == "mf-lr":
            logits = self.hidden_to_logits(0.5 * h)  # [B, T, K]
            initial, transition = logits[:, 0], logits[:, 1:, None, :].expand(B, T - 1, K, K)
        else:
            parts = 3.0 if self.kind == "st-lr" else 2.0
            previous = torch.tanh(self.state_to_hidden.weight.T + self.state_to_hidden.bias)  # row i: tanh(W e_i + b)
            initial = self.hidden_to_logits((torch.tanh(self.first_hidden) + h[:, 0]) / parts)  # [B, K]
            combined = (previous + h[:, 1:, None, :]) / parts  # [B, T-1, K (from), H]
            transition = self.hidden_to_logits(combined)  # [B, T-1, K (from), K (to)]
        transition = torch.where(x.mask[:, 1:, None, None], transition, 0.0)  # uniform past each end
        return MarkovChain(initial, transition)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_states={self.num_states}, rnn_dim={self.rnn_dim}"


class _CombinerScan(torch.autograd.Function):
    r"""The combiner's recursion over every step, with a backward pass by hand: per step, two
    products forward and two backward (for z_{t-1} and the combined state); the weights'
    gradients are one product each over all steps at the end, not T small ones accumulated.

    Forward, for t = 1..T: a_t = tanh(W z_{t-1} + b), c_t = (a_t + h_t) / k,
    [loc_t, s_t] = V c_t + v, scale_t = softplus(s_t), z_t = loc_t + scale_t ε_t.
    Returns loc and scale ``[N, T, D]``; z is recomposed outside (z = loc + scale ε), and the
    gradient that reaches each z_t through the next step is added here.
    """

    @staticmethod
    def forward(ctx, z_0, h, noise, W, b, V, v, parts):
        N, T, _ = h.shape
        D = z_0.shape[-1]
        z_prev = z_0
        prevs, acts, combined, raw = [], [], [], []
        for t in range(T):
            a = torch.tanh(torch.addmm(b, z_prev, W.T))  # [N, H]
            c = (a + h[:, t]) / parts
            out = torch.addmm(v, c, V.T)  # [N, 2D]
            prevs.append(z_prev)
            acts.append(a)
            combined.append(c)
            raw.append(out)
            z_prev = out[:, :D] + F.softplus(out[:, D:]) * noise[:, t]
        raw = torch.stack(raw, 1)  # [N, T, 2D]
        ctx.save_for_backward(torch.stack(prevs, 1), torch.stack(acts, 1), torch.stack(combined, 1), raw, noise, W, V)
        ctx.parts = parts
        return raw[..., :D], F.softplus(raw[..., D:])

    @staticmethod
    def backward(ctx, g_loc, g_scale):
        prevs, acts, combined, raw, noise, W, V = ctx.saved_tensors
        parts = ctx.parts
        N, T, D = g_loc.shape
        g_loc = g_loc if g_loc is not None else torch.zeros_like(noise)
        g_scale = (g_scale if g_scale is not None else torch.zeros_like(noise))
        slope = torch.sigmoid(raw[..., D:])  # softplus′
        g_out = torch.empty_like(raw)  # [N, T, 2D]
        g_pre = torch.empty_like(acts)  # [N, T, H]
        g_next = torch.zeros_like(prevs[:, 0])  # dL/dz_t through step t + 1
        for t in range(T - 1, -1, -1):
            g_out[:, t, :D] = g_loc[:, t] + g_next
            g_out[:, t, D:] = (g_scale[:, t] + g_next * noise[:, t]) * slope[:, t]
            g_c = g_out[:, t] @ V  # [N, H]
            g_pre[:, t] = g_c * (1 - acts[:, t].square()) / parts
            g_next = g_pre[:, t] @ W  # [N, D]
        g_h = (g_out @ V) / parts  # [N, T, H]
        flat_out, flat_pre = g_out.reshape(N * T, -1), g_pre.reshape(N * T, -1)
        g_V = flat_out.T @ combined.reshape(N * T, -1)
        g_W = flat_pre.T @ prevs.reshape(N * T, -1)
        return g_next, g_h, None, g_W, flat_pre.sum(0), g_V, flat_out.sum(0), None


def _rnn(rnn: nn.RNN, x: Tensor, h_0: Tensor) -> Tensor:
    """``rnn``'s outputs ``[B, T, H]`` for inputs ``[B, T, F]`` from ``h_0 [B, H]``: the input products
    for every step in one, the recursion by :class:`_RNNScan` (nn.RNN's numbers, a faster gradient)."""
    inputs = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0 + rnn.bias_hh_l0)  # [B, T, H]
    return _RNNScan.apply(inputs, h_0, rnn.weight_hh_l0, rnn.nonlinearity == "relu")


class _RNNScan(torch.autograd.Function):
    """h_t = f(u_t + W h_{t-1}) over every step (f = relu or tanh) with a backward pass by hand: one
    product per step each way, and W's gradient one product over all steps."""

    @staticmethod
    def forward(ctx, inputs, h_0, W, relu):
        h, out = h_0, []
        for t in range(inputs.shape[1]):
            pre = torch.addmm(inputs[:, t], h, W.T)
            h = pre.clamp_min(0.0) if relu else torch.tanh(pre)
            out.append(h)
        out = torch.stack(out, 1)  # [B, T, H]
        ctx.save_for_backward(out, h_0, W)
        ctx.relu = relu
        return out

    @staticmethod
    def backward(ctx, g_out):
        out, h_0, W = ctx.saved_tensors
        slope = (out > 0).to(out.dtype) if ctx.relu else 1 - out.square()  # f′ at each step
        g_pre = torch.empty_like(out)
        g_next = torch.zeros_like(h_0)
        for t in range(out.shape[1] - 1, -1, -1):
            g_pre[:, t] = (g_out[:, t] + g_next) * slope[:, t]
            g_next = g_pre[:, t] @ W
        previous = torch.cat([h_0.unsqueeze(1), out[:, :-1]], 1)  # h_{t-1}
        g_W = g_pre.flatten(0, 1).T @ previous.flatten(0, 1)
        return g_pre, g_next, g_W, None


def _check_kind(kind: str, nonlinearity: str) -> None:
    """The structured guides' two choices, checked with their names."""
    if kind not in GUIDE_KINDS:
        raise ValueError(f"kind must be one of {GUIDE_KINDS}; received {kind!r}")
    if nonlinearity not in ("relu", "tanh"):
        raise ValueError(f"nonlinearity must be 'relu' or 'tanh'; received {nonlinearity!r}")
