"""VI on the coin: a Beta guide converges to the exact Beta posterior.

    python examples/coin.py
"""

import torch
from torch.distributions import kl_divergence

import elbox
from elbox.guides import Beta

torch.set_default_dtype(torch.float64)
model = elbox.BetaBernoulli(2.0, 2.0)
x = torch.tensor([[1.0, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1]])  # 9 heads, 3 tails
guide = Beta()
history = elbox.fit(model, guide, x, epochs=3000, lr=0.02, seed=0)
with torch.no_grad():
    q, posterior = guide(x), model.posterior(x)
print(f"exact posterior  Beta({float(posterior.concentration1):.3f}, {float(posterior.concentration0):.3f})")
print(f"fitted q         Beta({float(q.concentration1):.3f}, {float(q.concentration0):.3f})")
print(f"ELBO {history.final:.6f}  log p(x) {float(model.log_evidence(x).detach()):.6f}  "
      f"gap KL(q‖posterior) {float(kl_divergence(q, posterior)):.2e}")
