"""The demo report: ``ntkit demo --quick`` run for real, then the page checked against its own
results.json (files exist, every referenced figure exists and is a PNG, every number shown is
the JSON's number, formatted as stated), and the page rendered from a synthetic results dict
for the experiment statuses."""
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Collect(HTMLParser):
    """Local links (img src, a href) and the elements carrying a data-json number."""

    def __init__(self):
        super().__init__()
        self.links, self.numbers, self.headings = [], [], []
        self._open = None
        self._heading = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("#", "http:", "https:")):
                self.links.append(a[key])
        if "data-json" in a:
            self._open = {"path": a["data-json"], "value": a["data-value"],
                          "format": a["data-format"], "text": ""}
        if tag in ("h1", "h2", "h3"):
            self._heading = ""

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data
        if self._heading is not None:
            self._heading += data

    def handle_endtag(self, tag):
        if self._open is not None and tag in ("td", "div"):
            self.numbers.append(self._open)
            self._open = None
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append(self._heading.strip())
            self._heading = None


def _lookup(results, path):
    node = results
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _expected_text(value, fmt):
    # written independently of ntkit.report.html.format_value
    return {"pct": lambda v: "%.2f%%" % (v * 100), "seconds": lambda v: "%.2f s" % v,
            "int": lambda v: str(int(v)), "num": lambda v: "%.4g" % v}[fmt](value)


def _check_page(folder: Path):
    page = (folder / "index.html").read_text(encoding="utf-8")
    results = json.loads((folder / "results.json").read_text())
    parser = _Collect()
    parser.feed(page)
    for link in parser.links:
        target = folder / link
        assert target.is_file(), f"index.html links to {link}, which does not exist"
        if link.endswith(".png"):
            assert target.read_bytes()[:8] == PNG_MAGIC, link
    for number in parser.numbers:
        value = _lookup(results, number["path"])
        assert float(number["value"]) == value, number
        assert number["text"].strip() == _expected_text(value, number["format"]), number
    return page, results, parser


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "ntkit-report"
    res = subprocess.run([sys.executable, "-m", "ntkit.cli", "demo", "--quick", "--experiments",
                          "none", "--out", str(out), "-q"], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"report: {out / 'index.html'}"
    return out


def test_files_exist(report):
    assert (report / "index.html").is_file() and (report / "results.json").is_file()
    figures = sorted(p.name for p in (report / "digits-kernels").glob("*.png"))
    assert figures == ["accuracy_vs_depth.png", "kernel_matrices.png", "kernel_pca.png",
                       "ntk_spectrum.png"]


def test_page_matches_the_json(report):
    page, results, parser = _check_page(report)
    d = results["digits"]
    shown = {n["path"] for n in parser.numbers}
    # every depth's accuracies and every baseline's accuracy are on the page
    for i, _ in enumerate(d["kernels"]):
        assert {f"digits.kernels.{i}.ntk_accuracy", f"digits.kernels.{i}.nngp_accuracy"} <= shown
    for i, _ in enumerate(d["baselines"]):
        assert f"digits.baselines.{i}.accuracy" in shown
    assert {b["name"] for b in d["baselines"]} == {"RBF SVM", "Random forest", "Finite MLP"}
    assert all(0.5 < r["ntk_accuracy"] <= 1 for r in d["kernels"])
    for fig in d["figures"].values():
        assert f"digits-kernels/{fig}" in parser.links
    assert "Which kernel wins on digits?" in parser.headings
    assert results["quick"] is True and "quick mode" in page


def test_experiment_sections_render_each_status(tmp_path, report):
    """ok (with figures and numbers), failed and skipped experiments, from a synthetic dict."""
    from ntkit.report.page import render

    results = json.loads((report / "results.json").read_text())
    (tmp_path / "digits-kernels").symlink_to(report / "digits-kernels")
    exp_dir = tmp_path / "experiments" / "width-sweep"
    exp_dir.mkdir(parents=True)
    (exp_dir / "error.png").write_bytes((report / "digits-kernels" / "kernel_pca.png").read_bytes())
    results["experiments"] = {
        "width-sweep": {"description": "width sweep", "dir": "experiments/width-sweep",
                        "status": "ok", "seconds": 1.5, "figures": ["error.png"],
                        "results": {"slope": -0.51, "widths": [64, 128], "fit": {"r2": 0.998},
                                    "n_seeds": 4}},
        "uci": {"description": "uci", "dir": "experiments/uci", "status": "failed",
                "reason": "ValueError: boom", "seconds": 0.1, "figures": []},
        "cifar10-cntk": {"description": "cifar", "dir": "experiments/cifar10-cntk",
                         "status": "skipped", "reason": "not available"},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "index.html").write_text(render(results), encoding="utf-8")
    page, _, parser = _check_page(tmp_path)
    shown = {n["path"] for n in parser.numbers}
    assert {"experiments.width-sweep.results.slope", "experiments.width-sweep.results.fit.r2",
            "experiments.width-sweep.results.n_seeds"} <= shown
    assert "experiments/width-sweep/error.png" in parser.links
    assert 'status failed' in page and "ValueError: boom" in page and 'status skipped' in page


def test_every_experiment_follows_the_run_contract():
    """The demo and the command line call run(out_dir, quick=, seed=, progress=): an experiment
    whose run lacks one of them fails there (as the three theory experiments did at merge)."""
    import inspect
    from ntkit import experiments
    for name in experiments.names():
        params = inspect.signature(experiments.get(name)).parameters
        missing = [p for p in ("out_dir", "quick", "seed", "progress") if p not in params]
        assert not missing, (name, missing)
