"""A Gaussian mixture on the digits fitted by EM and by VI; both traces on one figure.

    python examples/em_vs_vi.py [OUT_DIR]
"""

import sys

from elbox.runs.demo import run_demo

report = run_demo(sys.argv[1] if len(sys.argv) > 1 else "runs/em_vs_vi")
for row in report["rows"]:
    print(f"{row['method']:28s} log p(x) {row['log_evidence']:.4f}  ELBO {row['elbo']:.4f}  gap {row['gap_kl']:.2e}")
print("figure:", report["figure"])
