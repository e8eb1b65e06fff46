"""Numbers right at the edges: the Kalman filter's steady state in any units, EM that never
calls a fall convergence, HMMs with structural zeros."""

from __future__ import annotations

import math

import pytest
import torch

import elbox
from elbox.distributions.kalman import kalman_covariances


def _channel_models(a2: float, q2: float, scale: float, **options):
    """A 2-d state-space model of two independent channels, the second's state in units `scale`
    times smaller (its state is scale·z, so Q and P_0 scale by scale², C by 1/scale), and the two
    one-channel models it is made of."""
    d = lambda a, b: torch.diag(torch.tensor([a, b], dtype=torch.float64))  # noqa: E731
    one = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    joint = elbox.LinearGaussianSSM(
        2, 2, transition_matrix=d(0.5, a2), observation_matrix=d(1.0, 1.0 / scale),
        transition_covariance=d(1.0, q2 * scale**2), observation_covariance=d(1.0, 1.0),
        initial_covariance=d(1.0, scale**2), **options,
    ).double()  # fmt: skip
    fast = elbox.LinearGaussianSSM(1, 1, transition_matrix=one(0.5), steady_state=False).double()
    slow = elbox.LinearGaussianSSM(1, 1, transition_matrix=one(a2), transition_covariance=one(q2),
                                   steady_state=False).double()  # fmt: skip
    return joint, fast, slow


@pytest.mark.parametrize("scale", [1.0, 1e-4, 1e4, 1e-6, 1e6])
def test_the_kalman_steady_state_does_not_depend_on_the_units_of_the_state(scale):
    torch.manual_seed(0)
    x = torch.randn(3, 1500, 2, dtype=torch.float64)
    joint, fast, slow = _channel_models(0.98, 1e-3, scale)
    full, _, _ = _channel_models(0.98, 1e-3, scale, steady_state=False)
    with torch.no_grad():
        value = joint.log_evidence(x)
        channels = fast.log_evidence(x[..., :1]) + slow.log_evidence(x[..., 1:])
        torch.testing.assert_close(value, channels, rtol=1e-10, atol=0)
        torch.testing.assert_close(value, full.log_evidence(x), rtol=1e-10, atol=0)
        steps = kalman_covariances(joint._linear_gaussian(), 1500)["steps"]
    assert steps < 1500  # the shortcut was taken
    # the same step in every unit: the criterion is invariant to a rescaling of the state
    assert steps == kalman_covariances(_channel_models(0.98, 1e-3, 1.0)[0]._linear_gaussian(), 1500)["steps"]


def _collinear(n=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    x[:, 1] = 2 * x[:, 0]  # a column twice another: a noise variance collapses (a Heywood case)
    return x


@pytest.mark.parametrize("case", ["two points in five dimensions", "a collinear column"])
def test_factor_analysis_em_never_reports_convergence_after_its_bound_fell(case):
    torch.manual_seed(0)
    x, K = (torch.randn(2, 5, dtype=torch.float64), 3) if case.startswith("two") else (_collinear(), 2)
    reference = None
    for dtype in (torch.float64, torch.float32):
        model = elbox.FactorAnalysis(5, K).to(dtype)
        try:
            history = elbox.em(model, x.to(dtype), init="pca", max_iter=500)
        except (FloatingPointError, ValueError) as error:
            message = str(error)
            assert "FactorAnalysis" in message and "collinear" in message
            if isinstance(error, FloatingPointError):  # a fall, naming the dtype and the advice
                assert "bound fell" in message and str(dtype)[6:] in message and "float64" in message
            else:  # an optimum set by the noise floor, not by the data
                assert "Heywood" in message and "at its floor" in message
            assert math.isfinite(float(model.log_evidence(x.to(dtype)).detach().mean()))
            continue
        bounds = history.lower_bound
        assert history.converged and all(b >= a - 1e3 * torch.finfo(dtype).eps * max(1, abs(a))
                                         for a, b in zip(bounds, bounds[1:]))  # fmt: skip
        if reference is None:
            reference = history.final
        else:  # float32 converged: then at the float64 optimum, within float32's resolution
            assert history.final == pytest.approx(reference, rel=1e-4, abs=1e-3)


def test_a_fall_can_be_a_warning_and_the_model_keeps_its_best_iteration():
    from elbox.inference import BoundaryWarning, BoundDecreaseWarning

    x = _collinear().float()
    model = elbox.FactorAnalysis(5, 2).double()  # the float64 fit of the collinear data falls
    with pytest.warns(BoundDecreaseWarning, match="bound fell"):  # in the per-point steps, which a callback asks for
        history = elbox.em(model, x.double(), init="pca", max_iter=500, on_failure="warn",
                           callback=lambda *step: None)  # fmt: skip
    assert history.decreased and not history.converged
    assert history.final == max(history.lower_bound)
    assert float(model.log_evidence(x.double()).detach().mean()) == pytest.approx(history.final, rel=1e-12)
    torch.manual_seed(0)
    with pytest.warns(BoundaryWarning, match="Heywood"):
        elbox.em(elbox.FactorAnalysis(5, 3), torch.randn(2, 5), init="pca", on_failure="warn")
    with pytest.raises(ValueError, match="on_failure must be"):
        elbox.em(model, x, on_failure="ignore")


LEFT_TO_RIGHT = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.6, 0.4], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("separation", [1.0, 3.0, 10.0])
def test_left_to_right_hmms_keep_their_structural_zeros_everywhere(dtype, separation):
    def model():
        return elbox.HMM(3, "gaussian", dim=1, initial_probs=torch.tensor([1.0, 0.0, 0.0]),
                         transition_matrix=LEFT_TO_RIGHT,
                         loc=torch.tensor([[-separation], [0.0], [separation]])).to(dtype)  # fmt: skip

    torch.manual_seed(0)
    reference = model().double()
    x, _ = reference.sample(6, num_steps=15)
    x = torch.cat([x, x.flip(1)])  # reversed in time: only paths the chain forbids explain them well
    hmm = model()
    x = x.to(dtype)
    rounding = 100 * torch.finfo(dtype).eps
    with torch.no_grad():
        log_px = hmm.log_evidence(x)
        posterior = hmm.posterior(x)
        marginals = posterior.marginals()
        bound = elbox.elbo(hmm, elbox.guides.Exact(hmm), x).value
        path, score = hmm.viterbi(x)
        exact = reference.log_evidence(x.double())  # the float64 model, exactly zero where A is
    assert torch.isfinite(log_px).all() and torch.isfinite(marginals).all()
    torch.testing.assert_close(marginals.sum(-1), torch.ones_like(marginals[..., 0]), rtol=0, atol=rounding * 10)
    torch.testing.assert_close(log_px.double(), exact, rtol=rounding * 10, atol=0)  # zeros are zeros, in float32 too
    torch.testing.assert_close(bound, log_px, rtol=rounding * 10, atol=rounding)  # the exact guide's ELBO
    forbidden = LEFT_TO_RIGHT[path[:, :-1], path[:, 1:]] == 0
    assert not forbidden.any() and (path[:, 0] == 0).all()
    assert (score <= log_px + rounding * 10 * log_px.abs()).all()  # log p(x, z*) ≤ log p(x)
    assert (posterior.pairwise_marginals()[..., LEFT_TO_RIGHT == 0] == 0).all()
    history = elbox.em(hmm, x, max_iter=20)  # Baum–Welch keeps the zeros: no count ever reaches them
    assert math.isfinite(history.final) and (hmm.transition_matrix.detach()[LEFT_TO_RIGHT == 0] == 0).all()


def test_a_regularized_m_step_may_lower_the_likelihood_and_says_so():
    from elbox.data import digits
    from elbox.inference import BoundDecreaseWarning

    x, _ = digits(dtype=torch.float64)
    model = elbox.GaussianMixture(10, 64, covariance_type="diag", reg_covar=1e-2).double()
    assert model.em_regularizer == "reg_covar=0.01" and elbox.GaussianMixture(2, 2, reg_covar=0).em_regularizer is None
    with pytest.warns(BoundDecreaseWarning, match="regularized"):
        history = elbox.em(model, x, init="kmeans++", seed=0, max_iter=300, tol=1e-6)
    assert history.decreased and not history.converged and history.final == max(history.lower_bound)
    assert float(model.log_evidence(x).mean()) == pytest.approx(history.final, abs=1e-9)
