"""Random effects: a mean-field q keeps a gap that a full-rank q closes (μ couples the groups).

    python examples/hierarchical.py
"""

import torch
from torch.distributions import kl_divergence

import elbox
from elbox.guides import FullRankNormal, MeanFieldNormal

torch.set_default_dtype(torch.float64)
torch.manual_seed(0)
model = elbox.HierarchicalNormal(num_groups=5, group_size=3, hyper_scale=3.0, group_scale=0.7, fit_noise=False)
x, _ = model.sample(1)
log_px = float(model.log_evidence(x).detach())
for name, guide in (("mean-field", MeanFieldNormal(6)), ("full-rank", FullRankNormal(6))):
    history = elbox.fit(model, guide, x, epochs=3000, lr=0.02, optimize_model=False, seed=0)
    gap = float(kl_divergence(guide(x), model.posterior(x)).detach())
    print(f"{name:10s}  ELBO {history.final:.5f}  log p(x) {log_px:.5f}  gap {gap:.2e}")
