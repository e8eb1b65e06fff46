"""Distributions over the state paths of a discrete Markov chain (the HMM's prior and posterior)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, Independent, constraints, register_kl

from elbox._validation import check_tensor

__all__ = ["MarkovChain"]


class MarkovChain(Distribution):
    r"""A distribution over paths z = (z_1, …, z_T) of a K-state, time-inhomogeneous Markov chain.

    .. math:: p(z) = p(z_1) \prod_{t=1}^{T-1} p_t(z_{t+1} \mid z_t) \quad\text{(forward)}, \qquad
              p(z) = p(z_T) \prod_{t=1}^{T-1} p_t(z_t \mid z_{t+1}) \quad\text{(reverse)}.

    A *forward* chain is an HMM's prior; a *reverse* chain is its posterior as forward
    filtering leaves it (z_T from the last filtered distribution, then each z_t given
    z_{t+1}), which is what forward-filtering backward-sampling draws from.

    Args:
        initial_logits: ``[*batch, K]``, the (unnormalized) log-probabilities of z_1 (forward)
            or z_T (reverse).
        transition_logits: ``[*batch, T-1, K, K]``; entry ``[t, i, j]`` is the log-probability
            of the step from state i to state j between times t and t+1, in the chain's
            direction: z_t = i → z_{t+1} = j (forward) or z_{t+1} = i → z_t = j (reverse).
            Rows are normalized here.
        reverse: The chain's direction.

    The support is ``{0, …, K−1}^T`` (event shape ``[T]``); ``log_prob``, ``sample``,
    ``entropy``, :meth:`marginals` and :meth:`pairwise_marginals` are exact, and KL divergences
    to a chain from a chain or from a mean-field categorical q are registered in closed form.
    """

    arg_constraints: dict = {}
    has_enumerate_support = False

    def __init__(self, initial_logits: Tensor, transition_logits: Tensor, reverse: bool = False):
        check_tensor(initial_logits, "initial_logits", min_dim=1)
        check_tensor(transition_logits, "transition_logits")
        if transition_logits.dim() < 3 or transition_logits.shape[-1] != transition_logits.shape[-2]:
            raise ValueError(
                f"transition_logits must be [*batch, T-1, K, K]; received shape {tuple(transition_logits.shape)}"
            )
        if initial_logits.shape[-1] != transition_logits.shape[-1]:
            raise ValueError(
                f"initial_logits must be [*batch, K] with K = {transition_logits.shape[-1]} (the K of "
                f"transition_logits); received shape {tuple(initial_logits.shape)}"
            )
        self._initial = initial_logits.log_softmax(-1)
        self._transition = transition_logits.log_softmax(-1)
        batch = torch.broadcast_shapes(initial_logits.shape[:-1], transition_logits.shape[:-3])
        self._setup(batch, transition_logits.shape[-3] + 1, transition_logits.shape[-1], reverse)

    def _setup(self, batch_shape, num_steps: int, num_states: int, reverse: bool) -> None:
        self.num_states, self.reverse = num_states, bool(reverse)
        self._moments: dict[str, Tensor] = {}
        super().__init__(torch.Size(batch_shape), torch.Size([num_steps]), validate_args=False)

    @property
    def initial_logits(self) -> Tensor:
        """Normalized log-probabilities of the chain's first state, ``[*batch, K]``."""
        return self._initial

    @property
    def transition_logits(self) -> Tensor:
        """Normalized log transition probabilities, ``[*batch, T-1, K, K]`` (see the class)."""
        return self._transition

    @property
    def num_steps(self) -> int:
        return self.event_shape[0]

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.num_states - 1), 1)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        new = MarkovChain.__new__(MarkovChain)
        new._initial = self.initial_logits.expand(*batch_shape, -1)
        new._transition = self.transition_logits.expand(*batch_shape, -1, -1, -1)
        new._setup(batch_shape, self.num_steps, self.num_states, self.reverse)
        return new

    # Exact computations.

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) for paths ``[*sample, *batch, T]``, returning ``[*sample, *batch]``."""
        K = self.num_states
        z = z.long()
        first = z[..., -1] if self.reverse else z[..., 0]
        src, dst = (z[..., 1:], z[..., :-1]) if self.reverse else (z[..., :-1], z[..., 1:])
        shape = z.shape[:-1]
        initial = self.initial_logits.expand(*shape, K)
        log_p = initial.gather(-1, first.unsqueeze(-1)).squeeze(-1)
        if self.num_steps > 1:
            flat = self.transition_logits.flatten(-2).expand(*shape, self.num_steps - 1, K * K)
            log_p = log_p + flat.gather(-1, (src * K + dst).unsqueeze(-1)).squeeze(-1).sum(-1)
        return log_p

    @torch.no_grad()
    def sample(self, sample_shape=()) -> Tensor:
        """Ancestral sampling along the chain's direction (Gumbel-max at each step), ``[*sample, *batch, T]``."""
        shape = self._extended_shape(sample_shape)[:-1]  # [*sample, *batch]
        K, T = self.num_states, self.num_steps
        uniform = torch.rand(*shape, T, K, dtype=self.initial_logits.dtype, device=self.initial_logits.device)
        gumbel = -(-uniform.clamp_min(torch.finfo(uniform.dtype).tiny).log()).log()  # [*, T, K]
        order = range(T - 1, -1, -1) if self.reverse else range(T)
        steps = list(order)
        state = (self.initial_logits.expand(*shape, K) + gumbel[..., steps[0], :]).argmax(-1)
        path = [state]
        transition = self.transition_logits.expand(*shape, T - 1, K, K) if T > 1 else None
        for t in steps[1:]:
            pair = t if self.reverse else t - 1  # the transition between times t and t±1
            rows = transition[..., pair, :, :].gather(-2, state[..., None, None].expand(*shape, 1, K)).squeeze(-2)
            state = (rows + gumbel[..., t, :]).argmax(-1)
            path.append(state)
        if self.reverse:
            path.reverse()
        return torch.stack(path, -1)

    def marginals(self) -> Tensor:
        """p(z_t = k) for every t, ``[*batch, T, K]``."""
        if "marginals" not in self._moments:
            P = self.transition_logits.exp()
            m = self.initial_logits.exp()
            out = [m]
            steps = range(self.num_steps - 2, -1, -1) if self.reverse else range(self.num_steps - 1)
            for t in steps:
                m = (m.unsqueeze(-2) @ P[..., t, :, :]).squeeze(-2)
                out.append(m)
            if self.reverse:
                out.reverse()
            self._moments["marginals"] = torch.stack(out, -2)
        return self._moments["marginals"]

    def pairwise_marginals(self) -> Tensor:
        """p(z_t = i, z_{t+1} = j) in time order, ``[*batch, T-1, K, K]``."""
        m = self.marginals()
        P = self.transition_logits.exp()
        if self.reverse:
            return (m[..., 1:, :].unsqueeze(-1) * P).mT
        return m[..., :-1, :].unsqueeze(-1) * P

    def expected_log_prob(self, marginals: Tensor, pairwise: Tensor | None = None) -> Tensor:
        """E_q[log p(z)] for a q over paths given by its marginals ``[*, T, K]`` and pairwise
        marginals ``[*, T-1, K, K]`` in time order (None: q factorizes over time)."""
        floor = torch.finfo(self.initial_logits.dtype).min  # 0 · log 0 counts as 0
        initial = self.initial_logits.clamp_min(floor)
        first = marginals[..., -1, :] if self.reverse else marginals[..., 0, :]
        value = (first * initial).sum(-1)
        if self.num_steps == 1:
            return value
        log_P = self.transition_logits.clamp_min(floor)
        if self.reverse:
            log_P = log_P.mT  # now [t, z_t, z_{t+1}]
        if pairwise is None:
            inner = marginals[..., :-1, :].unsqueeze(-2) @ log_P @ marginals[..., 1:, :].unsqueeze(-1)
            return value + inner.squeeze(-1).squeeze(-1).sum(-1)
        return value + (pairwise * log_P).sum((-3, -2, -1))

    def entropy(self) -> Tensor:
        return -self.expected_log_prob(self.marginals(), self.pairwise_marginals())

    @property
    def mode(self) -> Tensor:
        """The most probable path (Viterbi on the chain), ``[*batch, T]``."""
        return viterbi(self.initial_logits, self.transition_logits, reverse=self.reverse)[0]


def viterbi(
    initial_logits: Tensor, transition_logits: Tensor, emission_logits: Tensor | None = None, reverse: bool = False
) -> tuple[Tensor, Tensor]:
    """The most probable path of a chain (times per-step emission log-likelihoods ``[*, T, K]``)
    and its log-probability: max-product forward pass, then backtracking. Returns ``([*, T], [*])``."""
    check_tensor(initial_logits, "initial_logits", min_dim=1)
    check_tensor(transition_logits, "transition_logits", min_dim=3)
    K = initial_logits.shape[-1]
    if transition_logits.shape[-2:] != (K, K):
        raise ValueError(f"transition_logits must be [*, T-1, K, K] with K = {K} (initial_logits' K); received shape "
                         f"{tuple(transition_logits.shape)}")  # fmt: skip
    if emission_logits is not None and (
        check_tensor(emission_logits, "emission_logits", min_dim=2).shape[-2:] != (transition_logits.shape[-3] + 1, K)
    ):
        raise ValueError(f"emission_logits must be [*, T, K] = [*, {transition_logits.shape[-3] + 1}, {K}]; received "
                         f"shape {tuple(emission_logits.shape)}")  # fmt: skip
    T = transition_logits.shape[-3] + 1
    if reverse:  # run it in the chain's own direction
        transition_logits = transition_logits.flip(-3)
        emission_logits = None if emission_logits is None else emission_logits.flip(-2)
    score = initial_logits + (0 if emission_logits is None else emission_logits[..., 0, :])
    pointers = []
    for t in range(1, T):
        cand = score.unsqueeze(-1) + transition_logits[..., t - 1, :, :]  # [*, K (from), K (to)]
        best, arg = cand.max(-2)
        pointers.append(arg)
        score = best + (0 if emission_logits is None else emission_logits[..., t, :])
    log_p, state = score.max(-1)
    path = [state]
    for arg in reversed(pointers):
        state = arg.gather(-1, state.unsqueeze(-1)).squeeze(-1)
        path.append(state)
    path.reverse()
    z = torch.stack(path, -1)
    return (z.flip(-1) if reverse else z), log_p


def _mean_field_probs(q: Independent) -> Tensor:
    if not (isinstance(q.base_dist, Categorical) and q.reinterpreted_batch_ndims == 1):
        raise NotImplementedError
    return q.base_dist.probs


@register_kl(MarkovChain, MarkovChain)
def _kl_chain_chain(q: MarkovChain, p: MarkovChain) -> Tensor:
    return -q.entropy() - p.expected_log_prob(q.marginals(), q.pairwise_marginals())


@register_kl(Independent, MarkovChain)
def _kl_mean_field_chain(q: Independent, p: MarkovChain) -> Tensor:
    probs = _mean_field_probs(q)  # [*, T, K]
    return -q.base_dist.entropy().sum(-1) - p.expected_log_prob(probs)
