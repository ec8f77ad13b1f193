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


#: a rate verdict as experiments.statistics.rate_verdict writes it (written out by hand here)
VERDICT = {"slope": -0.97, "intercept": 0.3, "interval": [-1.08, -0.88], "level": 0.95,
           "stated_rate": -1.0, "verdict": "consistent", "reason": "contains -1",
           "source": "Lee et al. 2019"}


def _fake_results(folder: Path) -> Path:
    """A results/ folder as ntkit reproduce leaves it: a full width-sweep run (figure, verdict
    nested two levels down, machine and reproduce records), a quick ntk-gp run, and a folder
    that is no experiment."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = folder / "width-sweep"
    full.mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([1, 2], [2, 1])
    fig.savefig(full / "error_vs_width.png", dpi=50)
    plt.close(fig)
    (full / "units").mkdir()
    (full / "results.json").write_text(json.dumps({
        "experiment": "width-sweep", "quick": False, "slope_mean": -0.51,
        "config": {"widths": [500, 10000], "dtype": "float64"},
        "rates": {"error": VERDICT},
        "machine": {"cpus": 2, "gpu": None, "load_average": [1.5, 1.2, 1.0]},
        "reproduce": {"command": "ntkit reproduce width-sweep", "wall_seconds": 321.0,
                      "finished": "2026-12-01 18:40 UTC", "quick": False}}))
    (folder / "ntk-gp").mkdir()
    (folder / "ntk-gp" / "results.json").write_text(json.dumps(
        {"experiment": "ntk-gp", "quick": True, "fraction_inside": 0.8}))
    (folder / "cifar10-cntk").mkdir()
    (folder / "cifar10-cntk" / "results.json").write_text(json.dumps(
        {"experiment": "cifar10-cntk", "quick": False, "markdown": "| depth |",
         "reproduce": {"options": {"n_test": 1000}, "finished": "2026-12-01 19:00 UTC"}}))
    (folder / "not-an-experiment").mkdir()
    (folder / "not-an-experiment" / "results.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "ntkit-report"
    kept = _fake_results(tmp_path_factory.mktemp("kept") / "results")
    res = subprocess.run([sys.executable, "-m", "ntkit.cli", "demo", "--quick", "--experiments",
                          "none", "--out", str(out), "--results", str(kept), "-q"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"report: {out / 'index.html'}"
    return out


def test_full_runs_are_shown_labelled_with_their_verdicts(report):
    """The kept full run's figure, verdict (slope, interval, stated rate) and label are on the
    page, its numbers are the JSON's; the quick kept run is labelled quick; the folder that is
    no experiment is left out; the digits section says it is a quick run."""
    page, results, parser = _check_page(report)
    full = results["full_runs"]
    assert set(full) == {"width-sweep", "ntk-gp", "cifar10-cntk"}
    assert full["cifar10-cntk"]["label"] == ("run with options n_test=1000 (not the full "
                                             "configuration), 2026-12-01 19:00 UTC")
    assert "full/width-sweep/error_vs_width.png" in parser.links
    assert full["width-sweep"]["label"] == ("full run, 2026-12-01 18:40 UTC, 2 CPUs, load 1.5, "
                                            "321 s wall")
    assert full["ntk-gp"]["label"].startswith("quick run")
    shown = {n["path"] for n in parser.numbers}
    prefix = "full_runs.width-sweep.results.rates.error"
    assert {f"{prefix}.slope", f"{prefix}.interval.0", f"{prefix}.interval.1",
            f"{prefix}.stated_rate", "full_runs.width-sweep.results.slope_mean"} <= shown
    assert "consistent" in page and "Lee et al. 2019" in page
    assert "Full runs (kept in results/)" in parser.headings
    assert "Quick run (reduced data)" in page
    assert not (report / "full" / "width-sweep" / "units").exists()


def test_headline_takes_the_widths_of_the_run():
    """The unit-circle description names the seed's widths; the page's headline must name the
    widths of the run whose figure it sits above."""
    from ntkit.report.page import headline

    seed = "Jacot et al.: NTK on the unit circle, widths 500 and 10,000, before/after training"
    text = headline(seed, {"config": {"widths": [64, 512]}})
    assert text == "Jacot et al.: NTK on the unit circle, widths 64, 512, before/after training"
    assert headline(seed, {"config": {"widths": [500, 10000]}}) == seed.replace(
        "500 and 10,000", "500, 10,000")
    assert headline("no widths named", {"config": {"widths": [8]}}) == "no widths named (widths 8)"


def test_find_verdicts_anywhere():
    from ntkit.report.verdicts import find_verdicts

    doc = {"a": {"b": [1, {"c": VERDICT}]}, "verdict": "not a dict", "x": {"verdict": "no rate"}}
    assert find_verdicts(doc) == [("a.b.1.c", VERDICT)]


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
    (tmp_path / "full").symlink_to(report / "full")
    exp_dir = tmp_path / "experiments" / "width-sweep"
    exp_dir.mkdir(parents=True)
    (exp_dir / "error.png").write_bytes((report / "digits-kernels" / "kernel_pca.png").read_bytes())
    results["experiments"] = {
        "width-sweep": {"description": "width sweep", "dir": "experiments/width-sweep",
                        "status": "ok", "seconds": 1.5, "figures": ["error.png"],
                        "results": {"slope": -0.51, "widths": [64, 128], "fit": {"r2": 0.998},
                                    "n_seeds": 4, "rates": {"error": VERDICT}}},
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
    assert "experiments.width-sweep.results.rates.error.interval.1" in shown
    assert 'href="#full-width-sweep"' in page      # its full run (in the fixture) is linked
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
