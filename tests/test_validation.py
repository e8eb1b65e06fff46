"""Bad input gets a ValueError or TypeError naming the argument, what was expected and received."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import elbox
from elbox.guides import Categorical, MeanFieldNormal


def test_nan_and_inf_in_data_are_located():
    model = elbox.GaussianMixture(2, 3)
    x = torch.randn(10, 3)
    x[4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x must be finite.*first \(NaN\) at index \(4, 1\)"):
        model.log_evidence(x)
    x[4, 1] = float("inf")
    with pytest.raises(ValueError, match="an infinite value"):
        elbox.em(model, x)


def test_wrong_dimensions_are_named():
    model = elbox.FactorAnalysis(4, 2)
    with pytest.raises(ValueError, match=r"x must have 2 dimensions; received Tensor of shape \(4,\)"):
        model.log_evidence(torch.randn(4))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 4\] for FactorAnalysis; received shape \(3, 5\)"):
        model.log_evidence(torch.randn(3, 5))
    with pytest.raises(TypeError, match="x must be numeric"):
        model.log_evidence("data")


def test_numpy_input_is_accepted():
    model = elbox.FactorAnalysis(3, 1)
    value = model.log_evidence(np.random.default_rng(0).normal(size=(5, 3)))
    assert value.shape == (5,)


def test_more_components_than_points():
    with pytest.raises(ValueError, match=r"num_components \(5\) must not exceed the number of data points \(3\)"):
        elbox.em(elbox.GaussianMixture(5, 2), torch.randn(3, 2), init="kmeans++")


def test_probabilities_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"weights must be probabilities in \[0, 1\]"):
        elbox.GaussianMixture(2, 2, weights=torch.tensor([1.5, -0.5]))
    with pytest.raises(ValueError, match="weights must sum to one"):
        elbox.GaussianMixture(2, 2, weights=torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match="x must hold coin flips, each 0 or 1; received the value 0.5"):
        elbox.BetaBernoulli().log_evidence(torch.tensor([[1.0, 0.5]]))
    with pytest.raises(ValueError, match="concentration1 must be a positive finite number"):
        elbox.BetaBernoulli(concentration1=-1.0)


def test_non_positive_definite_covariance_suggests_the_regularizer():
    bad = torch.tensor([[[1.0, 2.0], [2.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    with pytest.raises(ValueError, match="covariance is not positive definit.*reg_covar"):
        elbox.GaussianMixture(2, 2, covariance=bad)
    # A component that collapses onto one point has a singular covariance without the regularizer.
    x = torch.cat([torch.zeros(5, 2), torch.randn(20, 2)])
    model = elbox.GaussianMixture(2, 2, reg_covar=0.0)
    resp = torch.zeros(25, 2)
    resp[:5, 0], resp[5:, 1] = 1.0, 1.0
    with pytest.raises(ValueError, match="not positive definite.*increase reg_covar"):
        model.m_step(x, torch.distributions.Categorical(probs=resp))
    diag = elbox.GaussianMixture(2, 2, covariance_type="diag", reg_covar=0.0)
    with pytest.raises(ValueError, match="variance is not positive.*increase reg_covar"):
        diag.m_step(x, torch.distributions.Categorical(probs=resp))
    elbox.GaussianMixture(2, 2, reg_covar=1e-6).m_step(x, torch.distributions.Categorical(probs=resp))
    with pytest.raises(ValueError, match="noise_covariance must be symmetric"):
        elbox.NormalNormal(2, noise_covariance=torch.tensor([[1.0, 0.5], [0.0, 1.0]]))


def test_model_and_guide_constructor_arguments():
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        elbox.GaussianMixture(2, 2, covariance_type="tied")
    with pytest.raises(ValueError, match=r"loc must have shape \[2, 3\]; received \[3, 2\]"):
        elbox.GaussianMixture(2, 3, loc=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"latent_dim \(5\) must not exceed dim \(3\)"):
        elbox.FactorAnalysis(3, 5)
    with pytest.raises(ValueError, match="noise_scale must be positive"):
        elbox.HierarchicalNormal(3, noise_scale=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(TypeError, match="num_components must be an integer >= 1; received float 2.5"):
        elbox.GaussianMixture(2.5, 2)
    with pytest.raises(ValueError, match=r"init_logits must have shape \[3\] or \[num_points, 3\]"):
        Categorical(3, init_logits=torch.zeros(4))
    with pytest.raises(ValueError, match=r"init_loc must have shape \[2\] or \[num_points, 2\]"):
        MeanFieldNormal(2, num_points=3, init_loc=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="method must be 'kmeans\\+\\+' or 'random'"):
        elbox.GaussianMixture(2, 2).initialize(torch.randn(10, 2), method="kmeans")
