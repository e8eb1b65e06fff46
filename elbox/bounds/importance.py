"""Importance-weighted bounds: IWAE and the Rényi-α family."""

from __future__ import annotations

import math

from torch import Tensor

from elbox._validation import check_number
from elbox.bounds._common import draw_with_log_prob, leave_one_out_log_mean, log_mean_exp, prepare, score_surrogate

__all__ = ["cubo", "iwae", "log_weights", "renyi"]


def log_weights(model, guide, x: Tensor, *, num_samples: int, index: Tensor | None = None):
    """log w = log p_θ(x, z) − log q(z | x) for S particles, ``[S, B]``, with q's log-density.

    Returns:
        (log_w, log_q): both ``[S, B]``.
    """
    x, q, _ = prepare(model, guide, x, index)
    z, log_q = draw_with_log_prob(q, num_samples)  # [S, B, *event], [S, B]: drawn once per batch
    log_w = model.log_joint(x, z) - log_q
    return log_w, (log_q if not q.has_rsample else None)


def _with_score(value: Tensor, a: Tensor, log_q: Tensor | None, scale: float = 1.0) -> Tensor:
    """Adds VIMCO's score-function surrogate when q was not reparameterized."""
    if log_q is None:
        return value
    if a.shape[0] > 1:
        signal = (log_mean_exp(a) - leave_one_out_log_mean(a)).detach()  # [S, B]
    else:
        signal = a.detach()
    surrogate = scale * (log_q * signal).sum(0)
    return value + surrogate - surrogate.detach()


def iwae(model, guide, x: Tensor, *, num_samples: int, index: Tensor | None = None) -> Tensor:
    r"""The importance-weighted bound, per data point.

    .. math:: \mathcal{L}_S(x) = \mathbb{E}\Big[\log \frac{1}{S}\sum_{s=1}^S
              \frac{p_\theta(x, z_s)}{q(z_s \mid x)}\Big], \quad z_s \sim q(z \mid x),

    which is at least the ELBO, grows with S, and tends to log p_θ(x).

    References:
        Importance Weighted Autoencoders (Burda et al., 2016), https://arxiv.org/abs/1509.00519

    Args:
        model: A :class:`~elbox.models.LatentModel`.
        guide: A guide; ``guide(x, index)`` gives q with batch ``[B]``.
        x: Data, ``[B, *data_shape]``, or an :class:`~elbox.data.Batch` (data and indices).
        num_samples: S.
        index: The data points' indices, for local guides.

    Returns:
        ``[B]``.
    """
    log_w, log_q = log_weights(model, guide, x, num_samples=num_samples, index=index)
    return _with_score(log_mean_exp(log_w), log_w, log_q)


def renyi(model, guide, x: Tensor, *, alpha: float, num_samples: int, index: Tensor | None = None) -> Tensor:
    r"""The Rényi variational bound of order α, per data point.

    .. math:: \mathcal{L}_\alpha(x) = \frac{1}{1-\alpha}\log \frac{1}{S}\sum_{s=1}^S
              \Big(\frac{p_\theta(x, z_s)}{q(z_s \mid x)}\Big)^{1-\alpha}

    α = 1 is the ELBO (the mean of log w), α = 0 the IWAE bound; α < 0 is not a lower bound.

    References:
        Rényi Divergence Variational Inference (Li & Turner, 2016), https://arxiv.org/abs/1602.02311

    Args:
        model: A :class:`~elbox.models.LatentModel`.
        guide: A guide.
        x: Data, ``[B, *data_shape]``, or an :class:`~elbox.data.Batch` (data and indices).
        alpha: α, a finite real number.
        num_samples: S.
        index: The data points' indices, for local guides.

    Returns:
        ``[B]``.
    """
    alpha = check_number(alpha, "alpha")
    log_w, log_q = log_weights(model, guide, x, num_samples=num_samples, index=index)
    if alpha == 1.0:
        value = log_w.mean(0)
        return value if log_q is None else value + score_surrogate(log_q, log_w)
    a = (1 - alpha) * log_w
    return _with_score(log_mean_exp(a) / (1 - alpha), a, log_q, scale=1 / (1 - alpha))



def cubo(model, guide, x: Tensor, *, num_samples: int, n: float = 2.0, index: Tensor | None = None) -> Tensor:
    r"""The χ upper bound (CUBO) of order n > 1, per data point.

    .. math:: \mathrm{CUBO}_n(x) = \frac{1}{n}\log \mathbb{E}_{q(z|x)}\Big[
              \Big(\frac{p_\theta(x, z)}{q(z \mid x)}\Big)^n\Big] \ge \log p_\theta(x),

    with equality when q is the exact posterior; it is the Rényi bound of order α = 1 − n, and
    finite only when q's tails are heavy enough that E_q[w^n] is (for n = 2: the χ² divergence
    from q to the posterior is finite). The estimate with S particles,
    (1/n) log (1/S) Σ_s w_s^n, is biased *low* (Jensen) and converges slowly when the weights
    are heavy-tailed, so it is an upper bound in the limit of S, not for every S: report it
    beside a large S, and read it with the PSIS k-hat of the same weights.

    References:
        Variational Inference via χ Upper Bound Minimization (Dieng et al., 2017),
        https://arxiv.org/abs/1611.00328

    Args:
        model: A :class:`~elbox.models.LatentModel`.
        guide: A guide.
        x: Data, ``[B, *data_shape]``, or an :class:`~elbox.data.Batch` (data and indices).
        num_samples: S.
        n: The order, greater than 1 (default 2, the χ² bound).
        index: The data points' indices, for local guides.

    Returns:
        ``[B]``.
    """
    n = check_number(n, "n", only_type=True)
    if not (n > 1 and math.isfinite(n)):
        raise ValueError(f"n must be a finite number greater than 1; received {n}")
    return renyi(model, guide, x, alpha=1 - n, num_samples=num_samples, index=index)
