"""The HTML evaluation report renders in headless Chromium with its plots."""

import shutil
import subprocess

import pytest

from tunegate.evaluation.report import plots, render_html, render_markdown
from tunegate.evaluation.suites import ModelEvaluation, Score, compare
from tunegate.governance.gate import verdict_cell
from tunegate.params import EvalParams

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make setup installs it where apt is available)")
def test_report_renders_with_plots_in_chromium(tmp_path, tunegate_home):
    base, cand = ModelEvaluation(), ModelEvaluation()
    base.scores["exact_match"] = [Score(f"k{i}", f"f{i % 3}", 1.0) for i in range(30)]
    cand.scores["exact_match"] = [Score(f"k{i}", f"f{i % 3}", float(i % 3 != 0)) for i in range(30)]
    deltas = compare(base, cand, EvalParams(bootstrap_resamples=200))
    markdown = render_markdown({"run_id": "r", "model_name": "m", "baseline": {"source": "base_model"}}, deltas, [], verdict_cell=verdict_cell)
    page = tmp_path / "evaluation.html"
    page.write_text(render_html(markdown, plots(deltas, [(1, 3.0), (2, 2.0), (3, 1.5)]), "report"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'data-plots-rendered="3"' in dom.stdout, dom.stderr[-2000:]
    screens = tunegate_home / "screens"
    screens.mkdir(exist_ok=True)
    shot = screens / "evaluation_report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1100,1600", page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
