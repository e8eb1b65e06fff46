"""The base class of generative models p_θ(x, z) = p(z) p_θ(x | z)."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from elbox._validation import as_data
from elbox.data.batches import Batch

__all__ = ["LatentModel"]


class LatentModel(nn.Module):
    r"""A latent-variable model :math:`p_\theta(x, z) = p(z)\, p_\theta(x \mid z)`.

    Subclasses implement :meth:`prior` and :meth:`likelihood` (or :meth:`log_likelihood`).
    Models whose evidence is tractable also implement :meth:`log_evidence` and
    :meth:`posterior`, and those with a closed-form M-step implement :meth:`m_step`, which is
    what :func:`elbox.em` needs.

    Shapes: a batch of data ``x`` is ``[B, *data_shape]``; latents ``z`` are
    ``[*sample_shape, B, *latent_shape]``; per-example quantities are ``[*sample_shape, B]``.
    """

    #: The shape of one data point, without the batch dimension (set by subclasses); an entry
    #: of None accepts any size.
    data_shape: tuple[int | None, ...] = ()

    #: True for a model with no latent variable at all (a flow density over continuous data):
    #: :func:`~elbox.evidence_report` then reports its exact log p(x) with every bound equal to it.
    latent_free: bool = False

    #: Trailing dimensions of z that make one latent unit for the report's active units: 1 for
    #: categorical variables in the one-hot convention (z ``[N, K]``: a unit is a variable).
    latent_unit_dims: int = 0

    #: Whether z is a code of x whose use the report measures (active units, mutual
    #: information); False where z is noise, such as a dequantization offset.
    has_latent_code: bool = True

    def prior(self) -> Distribution:
        """The prior p(z), with an empty batch shape."""
        raise NotImplementedError

    def prior_for(self, x: Tensor) -> Distribution:
        """p(z) over the latents of the data ``x``: :meth:`prior`, except in models whose latent
        shape depends on the data (a sequence model's on the sequences' lengths and inputs).
        The bounds call this one."""
        return self.prior()

    def likelihood(self, z: Tensor) -> Distribution:
        """The observation model p_θ(x | z), batched over the leading dimensions of ``z``."""
        raise NotImplementedError

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x | z), shape ``z``'s sample and batch shape: ``[S, B]`` or ``[B]``."""
        return self.likelihood(z).log_prob(x)

    def expected_log_likelihood(self, x: Tensor, q: Distribution) -> Tensor | None:
        """E_q[log p_θ(x | z)] in closed form, ``[B]``, or None where this q has none.

        :func:`elbox.elbo` uses it (``expectation="analytic"``, and by default where it exists),
        so the bound carries no Monte Carlo noise.
        """
        return None

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x, z) = log p(z) + log p_θ(x | z), shape ``[S, B]`` (or ``[B]``)."""
        return self.prior_for(x).log_prob(z) + self.log_likelihood(x, z)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """Draws ``n`` pairs (x, z) from the model."""
        raise NotImplementedError

    # Tractable models implement these three.

    def log_evidence(self, x: Tensor) -> Tensor:
        """The exact log p_θ(x), shape ``[B]``."""
        if self._overrides_e_step:
            return self.e_step(x)[1]
        raise NotImplementedError(f"{type(self).__name__} has no exact log-evidence")

    def posterior(self, x: Tensor) -> Distribution:
        """The exact posterior p_θ(z | x), with batch shape ``[B]``."""
        if self._overrides_e_step:
            return self.e_step(x)[0]
        raise NotImplementedError(f"{type(self).__name__} has no exact posterior")

    def m_step(self, x: Tensor, posterior: Distribution) -> None:
        """Sets θ to argmax E_posterior[log p_θ(x, z)] in closed form."""
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form M-step; fit it by VI with elbox.fit"
        )

    # What users of scikit-learn and hmmlearn reach for first (exact models).

    def score(self, x, *, grad: bool = False) -> Tensor:
        """The mean exact log-evidence per data point (scikit-learn's ``score``; hmmlearn's is the
        sum over sequences, this times their number). A 0-dim tensor, with no autograd graph
        unless ``grad=True``."""
        self._require_exact("score")
        with torch.set_grad_enabled(grad):
            return self.log_evidence(x).mean()

    def predict(self, x, *, grad: bool = False) -> Tensor:
        """The most probable latent of each data point: for a discrete z the posterior's mode (the
        most responsible component; for an HMM the Viterbi path), for a continuous z the
        posterior mean. No autograd graph unless ``grad=True``."""
        self._require_exact("predict")
        with torch.set_grad_enabled(grad):
            q = self.posterior(x)
            return q.mode if q.support.is_discrete else q.mean

    def predict_proba(self, x, *, grad: bool = False) -> Tensor:
        """The posterior probabilities of a discrete latent, ``[B, K]`` (per step for a sequence
        model, ``[B, T, K]``: the smoothed marginals). No autograd graph unless ``grad=True``.

        Raises:
            TypeError: For a continuous latent (use :meth:`predict` or :meth:`posterior`).
        """
        self._require_exact("predict_proba")
        with torch.set_grad_enabled(grad):
            q = self.posterior(x)
            if not q.support.is_discrete:
                raise TypeError(
                    f"predict_proba needs a discrete latent; {type(self).__name__}'s is continuous: use predict(x) "
                    "(the posterior mean) or posterior(x)"
                )
            return q.marginals() if hasattr(q, "marginals") else q.probs

    def _require_exact(self, method: str) -> None:
        if not self.has_exact_evidence:
            raise TypeError(
                f"{method} needs a model with exact evidence and posterior; {type(self).__name__} has none: use "
                "elbox.log_evidence(model, x, guide=..., method='importance') or the guide's q(z | x)"
            )

    def e_step(self, x: Tensor) -> tuple[Distribution, Tensor]:
        """The exact posterior and log-evidence together.

        Tractable models implement either this (when the two share their work, as a Kalman
        filter or a conjugate update does; :meth:`posterior` and :meth:`log_evidence` then
        follow) or those two methods.
        """
        return self.posterior(x), self.log_evidence(x)

    @property
    def _overrides_e_step(self) -> bool:
        return type(self).e_step is not LatentModel.e_step

    @property
    def has_exact_evidence(self) -> bool:
        """Whether :meth:`log_evidence` and :meth:`posterior` are implemented."""
        return self._overrides_e_step or type(self).log_evidence is not LatentModel.log_evidence

    @property
    def has_m_step(self) -> bool:
        """Whether :meth:`m_step` is implemented, so that :func:`elbox.em` applies."""
        return type(self).m_step is not LatentModel.m_step

    # Parameters held fixed.

    #: The parameters a user may hold fixed, by public name, each with the module parameters it
    #: stands for (dotted names); empty where the model does not support fixing any.
    _FIXABLE: dict[str, tuple[str, ...]] = {}

    @property
    def fixed(self) -> frozenset[str]:
        """The parameters held fixed: neither EM's M-step nor gradient fitting changes them."""
        return getattr(self, "_fixed", frozenset())

    def fix(self, *names: str) -> LatentModel:
        """Holds the named parameters fixed at their current values (``fixed=`` of the constructor
        does the same): EM's M-step maximizes over the others given them, and gradient fitting
        leaves them alone (their ``requires_grad`` is off). Returns the model."""
        if not self._FIXABLE:
            raise ValueError(f"{type(self).__name__} does not support fixed parameters")
        for name in names:
            if name not in self._FIXABLE:
                raise ValueError(f"fixed: {type(self).__name__} has no parameter {name!r} to fix; it has "
                                 f"{', '.join(map(repr, self._FIXABLE))}")  # fmt: skip
        self._fixed = self.fixed | frozenset(names)
        for p in self._fixed_parameters():
            p.requires_grad_(False)
        return self

    def _fixed_parameters(self) -> list[Tensor]:
        params = dict(self.named_parameters())
        return [params[inner] for name in sorted(self.fixed) for inner in self._FIXABLE[name] if inner in params]

    @contextlib.contextmanager
    def _keeping_fixed(self):
        """Restores the fixed parameters after the block (an initialization or an M-step that
        updates every parameter block on its own)."""
        kept = [(p, p.detach().clone()) for p in self._fixed_parameters()]
        yield
        with torch.no_grad():
            for p, value in kept:
                p.copy_(value)

    # Helpers for subclasses.

    def _reference(self) -> Tensor:
        """A tensor whose dtype and device the model computes in."""
        for t in self.parameters():
            return t
        for t in self.buffers():
            return t
        return torch.empty(0)

    def _sequence_options(self) -> dict:
        """What :func:`~elbox.data.as_sequences` needs from a sequence model: its dtype, device and name."""
        ref = self._reference()
        return {"dtype": ref.dtype, "device": ref.device, "owner": type(self).__name__}

    def check_data(self, x, *, name: str = "x") -> Tensor:
        """Converts ``x`` to the model's dtype and checks it is a finite batch of data points;
        an error names the data as ``name`` (``fit`` passes ``"data"`` or ``"validation"``).

        Every call checks: nothing is remembered about a tensor (its memory can change behind
        torch's back, through numpy or ``.data``). The one exception is explicit: an
        :class:`~elbox.data.Batch` that an entry point (``fit``, ``em``) built with
        ``checked=True`` from data it has just checked passes as it is.
        """
        if isinstance(x, Batch):
            return x.data if x.checked else self._check_data(x.data, name)
        return self._check_data(x, name)

    @property
    def em_regularizer(self) -> str | None:
        """What, if anything, makes the M-step maximize a penalized objective rather than the
        likelihood (``"reg_covar=0.01"``): then EM's bound can fall without any numerical fault,
        and :func:`elbox.em` stops at its best iteration with a warning instead of an error."""
        return None

    def em_failure(self, x, statistics=None) -> str | None:
        """After EM: why the parameters reached are not an optimum set by the data (a parameter
        held at a floor the model enforces, where the likelihood would grow without bound), as a
        message naming it and what to do; None when there is nothing to say."""
        return None

    def em_statistics(self, x) -> object | None:
        """What EM may compute once from the checked data ``x`` and reuse in every iteration (the
        mixture's moment features, say), passed back as ``e_step(x, statistics=…)`` and
        ``m_step(x, posterior, statistics=…)``; None where there is nothing to reuse. The EM
        run holds it, not the model or the data."""
        return None

    def em_bound(self, statistics) -> Tensor | None:
        """The mean log-evidence per point computed from :meth:`em_statistics` alone, for models
        whose EM depends on the data only through summary statistics (factor analysis: the mean
        and scatter matrix). A model that implements it implements :meth:`em_update` too, and
        :func:`elbox.em` then iterates on the statistics, never visiting the points; it returns
        None for an iteration where the statistics would lose precision, and that iteration
        takes the per-point steps."""
        raise NotImplementedError

    def em_update(self, statistics) -> None:
        """The M-step from :meth:`em_statistics` alone (see :meth:`em_bound`)."""
        raise NotImplementedError

    def _check_data(self, x, name: str = "x") -> Tensor:
        ref = self._reference()
        x = as_data(x, name, ndim=1 + len(self.data_shape), dtype=ref.dtype, device=ref.device)
        if any(want is not None and want != got for want, got in zip(self.data_shape, x.shape[1:])):
            expected = ", ".join("N" if d is None else str(d) for d in self.data_shape)
            raise ValueError(
                f"{name} must have shape [B, {expected}] for {type(self).__name__}; "
                f"received shape {tuple(x.shape)}"
            )
        return x
