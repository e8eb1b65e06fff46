"""Numbers right at the edges: the Kalman filter's steady state in any units, EM that never
calls a fall convergence, HMMs with structural zeros."""

from __future__ import annotations

import pytest
import torch

import elbox


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
        steps = joint._covariances(1500)["steps"]
    assert steps < 1500  # the shortcut was taken
    # the same step in every unit: the criterion is invariant to a rescaling of the state
    assert steps == _channel_models(0.98, 1e-3, 1.0)[0]._covariances(1500)["steps"]
