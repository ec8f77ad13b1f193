"""The report page: ``render(results) -> html`` from the demo's results dict."""
from __future__ import annotations

import re
from typing import Any, Dict, List

from .full_runs import full_runs_section
from .html import Num, card, esc, figure, page, table
from .verdicts import find_verdicts, verdict_table

_MAX_EXPERIMENT_ROWS = 14


def _leaderboard(d: Dict[str, Any]) -> str:
    chosen = d["chosen"]
    entries = []
    for kernel in ("ntk", "nngp"):
        i = next(i for i, r in enumerate(d["kernels"]) if r["depth"] == chosen[kernel]["depth"])
        entries.append((f"{kernel.upper()} kernel regression",
                        f"depth {chosen[kernel]['depth']} (chosen by cross-validation)",
                        Num(d["kernels"][i][f"{kernel}_accuracy"],
                            f"digits.kernels.{i}.{kernel}_accuracy", "pct"),
                        Num(d["kernels"][i][f"{kernel}_total_seconds"],
                            f"digits.kernels.{i}.{kernel}_total_seconds", "seconds")))
    for i, b in enumerate(d["baselines"]):
        entries.append((b["name"], b["params"], Num(b["accuracy"], f"digits.baselines.{i}.accuracy", "pct"),
                        Num(b["seconds"], f"digits.baselines.{i}.seconds", "seconds")))
    entries.sort(key=lambda e: -e[2].value)
    return table(["method", "settings", "test accuracy", "time (fit + predict)"], entries,
                 caption=f"Digits, {d['data']['n_train']} training / {d['data']['n_test']} test "
                         f"images, sorted by accuracy (the best in bold). One test image is "
                         f"{100 / d['data']['n_test']:.2f} percentage points, so differences of "
                         f"one or two images are noise.",
                 highlight={0})


def _depth_table(d: Dict[str, Any]) -> str:
    rows = []
    for i, r in enumerate(d["kernels"]):
        p = f"digits.kernels.{i}"
        rows.append((Num(r["depth"], f"{p}.depth", "int"),
                     Num(r["ntk_cv_accuracy"], f"{p}.ntk_cv_accuracy", "pct"),
                     Num(r["ntk_accuracy"], f"{p}.ntk_accuracy", "pct"),
                     Num(r["nngp_cv_accuracy"], f"{p}.nngp_cv_accuracy", "pct"),
                     Num(r["nngp_accuracy"], f"{p}.nngp_accuracy", "pct"),
                     Num(r["kernel_seconds"], f"{p}.kernel_seconds", "seconds"),
                     Num(r["ntk_solve_seconds"], f"{p}.ntk_solve_seconds", "seconds"),
                     Num(r["nngp_solve_seconds"], f"{p}.nngp_solve_seconds", "seconds")))
    n_all = d["data"]["n_train"] + d["data"]["n_test"]
    return table(["depth", "NTK CV", "NTK test", "NNGP CV", "NNGP test", "kernels (both)",
                  "NTK solve", "NNGP solve"], rows,
                 caption=f"Per depth: cross-validated accuracy on the training images (CV, "
                         f"which chooses the depth) and test accuracy, and the time to compute "
                         f"both {n_all}×{n_all} kernel matrices in one pass and to solve each "
                         f"regression.")


def _digits_section(d: Dict[str, Any], quick: bool) -> str:
    base = "digits-kernels"
    fig = d["figures"]
    cfg = d["config"]
    chosen = d["chosen"]
    deepest = d["kernels"][-1]
    check = d.get("estimator_check")
    if check and "accuracy" in check:
        verdict = "the same" if check["matches_direct_solve"] else "a different"
        check_html = (f"<p>Cross-check: the public estimator <code>nk.NTKClassifier(arch, "
                      f"t=None, diag_reg={cfg['diag_reg']})</code> at the chosen NTK depth gives "
                      f"{verdict} test accuracy ({100 * check['accuracy']:.2f}%).</p>")
    elif check and "error" in check:
        check_html = f"<p>Cross-check with <code>nk.NTKClassifier</code> failed: {esc(check['error'])}</p>"
    else:
        check_html = ""
    return f"""
<section id="digits">
<h2>Which kernel wins on digits?</h2>
<p class="lead"><b>{"Quick run (reduced data): not the full configuration." if quick else
"Full configuration, run while this report was built."}</b> scikit-learn's handwritten digits (8×8 pixels, 10 classes), pixels standardized.
Each infinite-width network is <code>{esc(cfg['arch'])}</code>: L hidden ReLU layers in the NTK
parameterization. <b>NTK regression</b> is what an infinitely wide network converges to when
trained by gradient descent on the squared loss; <b>NNGP regression</b> is the Bayesian posterior
mean of the same network's Gaussian-process prior. Both are a single linear solve with a
ridge of {cfg['diag_reg']:g} × the mean diagonal, one-hot targets, and the class with the largest
output. Baselines use fixed, standard settings; nothing was tuned on the test set. The depth
of each kernel is chosen by {esc(chosen['method'])}; the test accuracy shown is the one at that
depth.</p>
{_leaderboard(d)}
{figure(f"{base}/{fig['accuracy_vs_depth']}",
        "Test accuracy against depth (log scale). Red: NTK, teal: NNGP (solid: test, dotted: "
        "cross-validation on the training images; rings: the depths the cross-validation "
        "chose); grey lines: the baselines. With depth both kernels approach their deep limit, "
        "in which all inputs look alike (see the kernel matrices below). Cross-validation "
        f"chooses the NTK at depth {chosen['ntk']['depth']} (test accuracy "
        f"{100 * chosen['ntk']['test_accuracy']:.2f}%); the NTK reaches "
        f"{100 * deepest['ntk_accuracy']:.2f}% at depth {deepest['depth']}; the NNGP reaches "
        f"{100 * deepest['nngp_accuracy']:.2f}% there.",
        "accuracy against depth")}
<h3>Accuracy and time per depth</h3>
{_depth_table(d)}
{check_html}
<h3>What the kernels look like</h3>
{figure(f"{base}/{fig['kernel_matrices']}",
        "Each panel is the kernel between 200 test digits, normalized to a correlation "
        "K(x,x')/√(K(x,x)K(x',x')) and sorted by class (the tick marks are the digit of each block). "
        "Bright diagonal blocks mean same-class digits look alike to the kernel. With depth, all "
        "correlations move towards a constant (note the colour range in each title, from the "
        "1st to the 99.5th percentile of the off-diagonal values): the deep kernel keeps the "
        "block structure only in a narrow band.",
        "normalized kernel matrices")}
{figure(f"{base}/{fig['kernel_pca']}",
        "Kernel PCA of the test digits: the first two principal components of the NTK and "
        "NNGP (at their depths chosen by cross-validation), normalized to correlations and centred. Each colour is a digit, drawn at its class mean. "
        "Classes that separate here are easy for the kernel.",
        "kernel PCA")}
{figure(f"{base}/{fig['ntk_spectrum']}",
        "Eigenvalues of the training-set NTK per depth, divided by their sum, log-log. Gradient "
        "descent learns the top eigendirections first (rate ∝ eigenvalue); deeper kernels put "
        "more weight on the top eigenvalue (the constant direction) and flatten the rest.",
        "NTK spectrum", narrow=True)}
</section>"""


_NOT_HEADLINE = ("seed", "seconds", "quick", "experiment", "config", "figures", "dtype", "device",
                 "machine", "reproduce", "markdown", "figure_depth_ticks", "kernel_seconds",
                 "paper_reference")


def headline(description: str, results: Dict[str, Any]) -> str:
    """The experiment's one-line description with the widths the run used: a description naming
    widths ("widths 500 and 10,000", the seed's) gets the run's ``config.widths`` in their
    place, so that the headline never contradicts the figure below it."""
    config = results.get("config") if isinstance(results, dict) else None
    widths = config.get("widths") if isinstance(config, dict) else None
    if isinstance(widths, list) and widths and all(isinstance(w, (int, float)) for w in widths):
        shown = ", ".join(f"{w:,}" for w in widths)
        number = r"\d+(?:,\d{3})*"
        text, n = re.subn(rf"\bwidths? {number}(?:(?:, and |, | and ){number})*",
                          f"widths {shown}", description)
        return text if n else f"{description} (widths {shown})"
    return description


def _scalar_rows(results: Dict[str, Any], prefix: str) -> List[tuple]:
    """The experiment's headline numbers: its scalar results (top level, and up to two levels
    down in dicts), leaving out its configuration, bookkeeping and rate verdicts (shown in
    their own table); ``prefix``: where ``results`` sits in the report's results.json."""
    rows = []

    def add(key: str, value: Any, path: str, level: int) -> None:
        if isinstance(value, bool) or len(rows) >= _MAX_EXPERIMENT_ROWS:
            return
        if isinstance(value, dict) and level < 2 and not find_verdicts(value):
            for sub, v in value.items():
                if "." not in str(sub) and sub not in _NOT_HEADLINE:
                    add(f"{key} / {sub}", v, f"{path}.{sub}", level + 1)
        elif isinstance(value, (int, float)):
            rows.append((key, Num(value, path, "int" if isinstance(value, int) else "num")))
        elif isinstance(value, str) and len(value) <= 80:
            rows.append((key, value))

    for key, value in results.items():
        if "." not in str(key) and key not in _NOT_HEADLINE:
            add(str(key), value, f"{prefix}.{key}", 0)
    return rows


def _numbers(name: str, results: Dict[str, Any], prefix: str) -> str:
    rows = _scalar_rows(results, prefix)
    numbers = table(["result", "value"], rows, caption="From its results.json") if rows else ""
    return numbers + _config_line(results)


def _config_line(results: Dict[str, Any]) -> str:
    config = results.get("config")
    if not isinstance(config, dict):
        return ""
    items = [f"{k}={v}" for k, v in config.items() if isinstance(v, (int, float, str, bool))]
    lists = [f"{k}={v}" for k, v in config.items() if isinstance(v, list) and len(v) <= 8]
    text = ", ".join(items + lists)
    return f'<p class="config">Configuration: <code>{esc(text)}</code></p>' if text else ""


def _experiment_block(name: str, e: Dict[str, Any], full: Dict[str, Any]) -> str:
    status = e["status"]
    results = e.get("results") or {}
    full_link = (f' Its full run is <a href="#full-{esc(name)}">above</a>.'
                 if full.get(name, {}).get("status") == "ok" else "")
    head = (f'<h3 id="exp-{esc(name)}">{esc(name)}<span class="status {status}">{status}</span>'
            f'<span class="status skipped">quick run</span></h3>'
            f'<p class="lead">{esc(headline(e["description"], results))}'
            + (f" — quick configuration, ran in {e['seconds']:.1f} s while building this "
               f"report." if "seconds" in e else "") + full_link + "</p>")
    if status != "ok":
        return head + f"<p>{esc(e.get('reason', ''))}</p>"
    figs = "".join(figure(f"{e['dir']}/{f}", f"<code>{esc(f)}</code> (quick run)", f"{name}: {f}")
                   for f in e["figures"])
    prefix = f"experiments.{name}.results"
    body = figs + verdict_table(results, prefix) + _numbers(name, results, prefix)
    if full_link:   # the full run is the one to read: the quick one folds away
        body = f"<details><summary>the quick run's figures and numbers</summary>{body}</details>"
    return head + body


def _describe(name: str, results: Dict[str, Any]) -> str:
    from ..experiments import REGISTRY
    return esc(headline(REGISTRY.get(name, ("", name))[1], results))


def render(results: Dict[str, Any]) -> str:
    """The whole page."""
    d = results["digits"]
    env = results["environment"]
    chosen = d["chosen"]
    kernels = d["kernels"]
    i_ntk = next(i for i, r in enumerate(kernels) if r["depth"] == chosen["ntk"]["depth"])
    i_nngp = next(i for i, r in enumerate(kernels) if r["depth"] == chosen["nngp"]["depth"])
    i_base = max(range(len(d["baselines"])), key=lambda i: d["baselines"][i]["accuracy"])
    cards = "".join([
        card("NTK", Num(kernels[i_ntk]["ntk_accuracy"], f"digits.kernels.{i_ntk}.ntk_accuracy",
                        "pct"), f'<span class="ntk">■</span> test accuracy on digits at depth '
                                f'{chosen["ntk"]["depth"]}, chosen by cross-validation'),
        card("NNGP", Num(kernels[i_nngp]["nngp_accuracy"],
                         f"digits.kernels.{i_nngp}.nngp_accuracy", "pct"),
             f'<span class="nngp">■</span> depth {chosen["nngp"]["depth"]}, chosen by '
             f'cross-validation'),
        card("Best baseline", Num(d["baselines"][i_base]["accuracy"],
                                  f"digits.baselines.{i_base}.accuracy", "pct"),
             esc(d["baselines"][i_base]["name"])),
        card("Report built in", Num(results["total_seconds"], "total_seconds", "seconds"),
             f"{env['cpus']} CPU cores, {esc(env['device'])}, {esc(env['dtype'])}"),
    ])
    exps = results["experiments"]
    full = results.get("full_runs") or {}
    full_html = full_runs_section(full, _describe, _numbers, verdict_table)
    exp_html = ""
    if exps:
        blocks = "".join(_experiment_block(n, e, full) for n, e in exps.items())
        exp_html = (f'<section id="experiments"><h2>Theory against real networks (quick runs)</h2>'
                    f'<p class="lead">Every number and figure in this section comes from a quick '
                    f'configuration, run while this report was built; the full runs, where kept, '
                    f'are in the section above. Each experiment runs in full with '
                    f'<code>ntkit reproduce NAME</code>.</p>{blocks}</section>')
    reproduce = f"""
<section id="reproduce">
<h2>Reproduce</h2>
<pre>ntkit demo --out ntkit-report                  # this page
ntkit experiment digits-kernels                # the digits comparison alone
ntkit fit --arch fc:depth={chosen['ntk']['depth']},act=relu,W_std=1.414,b_std=0.05 --data digits
ntkit experiment --list                        # every reproduction
ntkit reproduce NAME                           # its full run into results/NAME (make results: all)</pre>
<p>All numbers on this page are in <a href="results.json">results.json</a>.</p>
</section>"""
    nav = [("digits", "Digits: NTK vs baselines")]
    if full:
        nav.append(("full-runs", "Full runs"))
    if exps:
        nav.append(("experiments", "Quick runs"))
    nav.append(("reproduce", "Reproduce"))
    subtitle = (f"What the Neural Tangent Kernel does on real data — generated {esc(results['generated'])}"
                + (" · quick mode (reduced data)" if results.get("quick") else "")
                + (f" · {len(full)} full run(s) from results/" if full else "")
                + (" · the theory experiments are quick runs" if exps else ""))
    footer = (f"ntkit {esc(env['ntkit'])} · torch {esc(env['torch'])} · Python {esc(env['python'])} · "
              f"{esc(env['platform'])} · seed {env['seed']}")
    body = (f'<div class="cards">{cards}</div>' + _digits_section(d, bool(results.get("quick")))
            + full_html + exp_html + reproduce)
    return page("ntkit report", subtitle, nav, body, footer)
