"""The HTML evidence report, looked at as a person would: rendered by headless Chromium (Debian's
chromium package; `make test` installs it), its text read back from the rendered DOM and its
screenshot checked for the figures.

This test is never skipped: without the browser it fails, saying how to install it."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import elbox
from elbox.plots import write_html_report
from tests.conftest import CASES
from tests.test_evidence import Overdispersed

WIDTH, HEIGHT = 1100, 3400


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed to check the HTML report: `make test` installs it "
                "(apt-get install chromium)")


def _render(page, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *flags, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


@pytest.fixture
def report():
    model = CASES[5].make()[0]  # factor analysis: an exact model, and a q that is not its posterior
    x, _ = model.sample(60)
    result = elbox.evidence_report(model, Overdispersed(model), x, num_samples=500, refine_steps=100, refine_lr=0.05,
                                   refine_points=30)  # fmt: skip
    return result


def test_the_report_renders_in_chromium_with_its_numbers_and_figures(report, tmp_path):
    page = tmp_path / "report.html"
    training = [{"epoch": e, "bound": -10 + e, "reconstruction": -8 + e, "kl": 2.0, "validation": None}
                for e in range(1, 6)]  # fmt: skip
    write_html_report(report, page, title="Evidence report: test", training=training, context={"data": "simulated"})

    dom = _render(page, "--dump-dom").stdout
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    r = report.to_dict()
    for label, value in (("ELBO", r["elbo"]["mean"]), ("IWAE-50", r["iwae"]["mean"]),
                         ("log p(x)", r["log_evidence"]["mean"]), ("CUBO-2", r["upper_bound"]["mean"])):  # fmt: skip
        assert f"{label} {value:.3f}" in text, (label, value)
    assert f"{r['gap']:.3f}" in text
    assert f"{r['approximation_gap']['mean']:.3f}" in text and f"{r['amortization_gap']['mean']:.3f}" in text
    assert "exact" in text and "upper bound" in text and "lower bound" in text
    for figure in ("bracket", "gaps", "khat", "training"):
        assert re.search(rf"<img id=\"{figure}\"[^>]*src=\"data:image/png;base64,", dom), figure

    shot = tmp_path / "shot.png"
    _render(page, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (HEIGHT, WIDTH)
    # The tables sit at the top; below them the four figures. Each band of the page where a figure
    # should be holds drawn pixels (axes, bars, text), not a blank or a broken-image icon.
    figures = pixels[900:2900]
    bands = figures.reshape(20, -1)
    drawn = (bands < 200).mean(1)
    assert (drawn > 0.002).sum() >= 12, drawn.round(4).tolist()
    assert pixels[:300].min() < 100  # the title's dark text
