r"""The Gaussian VAE's one-particle ELBO with its gradient written by hand: one autograd node for
the encoder, the reparameterized draw, the closed-form KL, the decoder and the log-likelihood.

The ELBO objective takes this path where it computes exactly what the general one does:
a :class:`~elbox.models.VAE` with the N(0, I) prior and a Bernoulli or Gaussian decoder, its
:class:`~elbox.guides.Amortized` Gaussian q, MLPs of linear layers with tanh or ReLU between
them, one particle, the analytic KL, float32 products. Everything else takes the general path.

Why: at the shapes of a VAE on MNIST the step is bound by per-operation costs (dispatch,
autograd's graph, temporaries), not by arithmetic. Here the forward keeps the activations it
needs, the backward is a fixed sequence of matrix products and in-place element-wise updates,
and the draw consumes torch's RNG exactly as ``Normal.rsample`` does, so the two paths give the
same numbers to rounding (``tests/test_fused.py`` checks values and every gradient in float64
against autograd through the general path).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elbox.data.batches import Batch
from elbox.guides.amortized import LOG_SCALE_BOUND
from elbox.precision import current_precision

__all__ = ["fused_elbo_parts"]

_ACTIVATIONS = (nn.Tanh, nn.ReLU)


def _layers(network: nn.Module) -> tuple[list[nn.Linear], type] | None:
    """The linear layers of an MLP ``Linear (act Linear)*`` with one activation class, or None."""
    if not isinstance(network, nn.Sequential) or len(network) % 2 == 0:
        return None
    modules = list(network._modules.values())  # not network[::2], which builds a new Sequential
    linears, activations = modules[::2], modules[1::2]
    if not all(type(m) is nn.Linear for m in linears):
        return None
    kinds = {type(a) for a in activations}
    if len(kinds) > 1 or not kinds <= set(_ACTIVATIONS):
        return None
    return linears, (kinds.pop() if kinds else nn.Tanh)


def fused_elbo_parts(model, guide, batch: Batch, num_samples: int, kl: str, expectation: str):
    """(reconstruction, kl), each ``[B]``, by the fused step, or None where it does not apply
    (then nothing was computed, and the data not checked)."""
    from elbox.guides.amortized import Amortized
    from elbox.models.vae import VAE

    if (type(model) is not VAE or type(guide) is not Amortized or guide.deterministic or num_samples != 1
            or kl != "analytic" or expectation not in ("auto", "sample") or model.prior_flow is not None
            or model.decoder_type not in ("bernoulli", "gaussian") or current_precision() != "float32"
            or not isinstance(batch.data, Tensor)):  # fmt: skip
        return None
    encoder, decoder = _layers(guide.encoder), _layers(model.decoder)
    if encoder is None or decoder is None or encoder[1] is not decoder[1]:
        return None
    (enc, activation), (dec, _) = encoder, decoder
    L = guide.latent_dim
    if enc[-1].out_features != 2 * L or dec[0].in_features != L:
        return None
    # the data checked as prepare() checks them (once, at fit's entry, for the engine's batches)
    x = batch.data if batch.checked else model.check_data(batch.data)
    if x.dim() != 2 or x.dtype not in (torch.float32, torch.float64) or enc[0].in_features != x.shape[1]:
        return None
    # the draw's noise, as Normal.rsample draws it: the same RNG stream, so the same z
    eps = torch.empty(x.shape[0], L, dtype=x.dtype, device=x.device).normal_()
    gaussian = model.decoder_type == "gaussian"
    log_var = model.log_variance if gaussian else x.new_zeros(())
    params = [t for layer in (*enc, *dec) for t in (layer.weight, layer.bias)]
    return _FusedELBO.apply(x, eps, log_var, activation is nn.Tanh, gaussian, len(enc), *params)


class _FusedELBO(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps, log_var, tanh: bool, gaussian: bool, n_enc: int, *params):
        weights, biases = params[0::2], params[1::2]
        act = torch.tanh_ if tanh else torch.relu_  # in place, on each product's fresh output
        # the encoder: every hidden layer's output kept for the backward pass
        h, hidden = x, []
        for i in range(n_enc):
            h = torch.addmm(biases[i], h, weights[i].t())
            if i < n_enc - 1:
                h = act(h)
                hidden.append(h)
        L = eps.shape[1]
        loc, log_scale = h[:, :L], h[:, L:]
        clamped = log_scale.clamp(-LOG_SCALE_BOUND, LOG_SCALE_BOUND)
        scale = clamped.exp()
        z = torch.addcmul(loc, scale, eps)
        # KL(N(μ, σ²) ‖ N(0, 1)) per dimension, as torch's registered Normal–Normal KL computes it
        var_ratio = scale.square()
        kl = 0.5 * (var_ratio + loc.square() - 1 - var_ratio.log())
        kl = kl.sum(-1)
        # the decoder
        g, decoded = z, []
        for i in range(n_enc, len(weights)):
            g = torch.addmm(biases[i], g, weights[i].t())
            if i < len(weights) - 1:
                g = act(g)
                decoded.append(g)
        if gaussian:
            sq = (x - g).square() * (-log_var).exp()
            reconstruction = -0.5 * (sq + log_var + math.log(2 * math.pi)).sum(-1)
        else:
            reconstruction = -F.binary_cross_entropy_with_logits(g, x, reduction="none").sum(-1)
        ctx.tanh, ctx.gaussian, ctx.n_enc = tanh, gaussian, n_enc
        ctx.save_for_backward(x, eps, log_var, loc, log_scale, scale, z, g, *hidden, *decoded, *weights)
        return reconstruction, kl

    @staticmethod
    def backward(ctx, g_rec, g_kl):
        n_enc, tanh = ctx.n_enc, ctx.tanh
        x, eps, log_var, loc, log_scale, scale, z, out, *rest = ctx.saved_tensors
        n_layers = (len(rest) + 2) // 2  # hidden outputs (n_layers − 2), then the weights (n_layers)
        hidden = rest[: n_enc - 1]
        decoded = rest[n_enc - 1 : n_layers - 2]
        weights = rest[n_layers - 2 :]
        grads: list[Tensor | None] = [None] * (2 * n_layers)
        g_log_var = None
        # d reconstruction / d decoder output, per point times its upstream gradient
        if ctx.gaussian:
            precision = (-log_var).exp()
            residual = (x - out) * precision  # [B, D]
            delta = residual * g_rec[:, None]
            if ctx.needs_input_grad[2]:
                # d/d log σ²_d of −½((x−μ)² e^{−log σ²} + log σ²) = ½((x−μ)² e^{−log σ²} − 1)
                g_log_var = 0.5 * ((residual * (x - out) - 1) * g_rec[:, None]).sum(0)
        else:
            delta = torch.sigmoid(out).sub_(x).mul_(-g_rec[:, None])  # (x − σ(logits)) · upstream
        # the decoder's layers, last to first
        inputs = [z, *decoded]
        for j in range(n_layers - 1, n_enc - 1, -1):
            k = j - n_enc  # position among the decoder's layers
            grads[2 * j] = delta.t().mm(inputs[k])
            grads[2 * j + 1] = delta.sum(0)
            delta = delta.mm(weights[j])
            if k > 0:
                delta = _through(delta, inputs[k], tanh)
        # z = μ + σ ε, and the KL's own gradient: d KL/dμ = μ, d KL/d log σ = σ² − 1
        g_loc = torch.addcmul(delta, loc, g_kl[:, None])
        g_log_scale = delta.mul_(scale).mul_(eps).add_((scale.square() - 1).mul_(g_kl[:, None]))
        g_log_scale.mul_((log_scale >= -LOG_SCALE_BOUND) & (log_scale <= LOG_SCALE_BOUND))
        delta = torch.cat([g_loc, g_log_scale], dim=1)
        # the encoder's layers, last to first
        inputs = [x, *hidden]
        for j in range(n_enc - 1, -1, -1):
            grads[2 * j] = delta.t().mm(inputs[j])
            grads[2 * j + 1] = delta.sum(0)
            if j > 0:
                delta = _through(delta.mm(weights[j]), inputs[j], tanh)
        return (None, None, g_log_var, None, None, None, *grads)


def _through(delta: Tensor, activated: Tensor, tanh: bool) -> Tensor:
    """The gradient through the activation, from its output: 1 − h² for tanh, h > 0 for ReLU."""
    if tanh:  # δ − (δ h) h
        return delta.addcmul_(delta * activated, activated, value=-1)
    return delta.mul_(activated > 0)
