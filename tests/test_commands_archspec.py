"""The command-line architecture syntax (ntkit.commands.archspec).

References: the arc-cosine closed form of Cho & Saul (2009) for ReLU networks, written here in
numpy (independent of ntkit's layers), and hand-built nk.Sequential architectures.
"""
import json
import math

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.commands.archspec import ArchSpecError, layer_classes, parse_arch


def relu_fc_kernels(x, depth, w_std, b_std):
    """NNGP and NTK of depth x [Linear, ReLU] + Linear in the NTK parameterization, from the
    arc-cosine formulas (numpy, float64)."""
    d = x.shape[1]
    w2, b2 = w_std ** 2, b_std ** 2
    sigma = w2 * x @ x.T / d + b2
    theta_ntk = sigma.copy()
    for _ in range(depth):
        diag = np.sqrt(np.diag(sigma))
        rho = np.clip(sigma / np.outer(diag, diag), -1.0, 1.0)
        th = np.arccos(rho)
        np.fill_diagonal(th, 0.0)  # exact angle of x with itself (arccos(1 - eps) loses digits)
        e_phi = np.outer(diag, diag) * (np.sin(th) + (math.pi - th) * np.cos(th)) / (2 * math.pi)
        e_dphi = (math.pi - th) / (2 * math.pi)
        sigma = w2 * e_phi + b2
        theta_ntk = theta_ntk * w2 * e_dphi + sigma
    return sigma, theta_ntk


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(7, 5))


@pytest.mark.parametrize("depth", [1, 2])
def test_fc_preset_matches_arccos_closed_form(x, depth):
    arch = parse_arch(f"fc:depth={depth},act=relu,W_std=1.414,b_std=0.05")
    k = arch.kernel(x)
    nngp, ntk = relu_fc_kernels(x, depth, 1.414, 0.05)
    np.testing.assert_allclose(k.nngp.numpy(), nngp, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(k.ntk.numpy(), ntk, rtol=1e-10, atol=1e-12)


def test_fc_preset_builds_the_hand_written_sequential():
    arch = parse_arch("fc:depth=2,act=erf,W_std=1.5,b_std=none,width=64,param=standard,out=3")
    hand = nk.Sequential(nk.Linear(64, W_std=1.5, b_std=None, parameterization="standard"), nk.Erf(),
                         nk.Linear(64, W_std=1.5, b_std=None, parameterization="standard"), nk.Erf(),
                         nk.Linear(3, W_std=1.5, b_std=None, parameterization="standard"))
    assert repr(arch) == repr(hand)


def test_activation_arguments_and_sqrt():
    arch = parse_arch("fc:depth=1,act=leaky_relu(0.2),W_std=sqrt(2)")
    assert isinstance(arch[1], nk.LeakyReLU) and arch[1].negative_slope == 0.2
    assert arch[0].W_std == pytest.approx(math.sqrt(2))
    ab = parse_arch("fc:depth=1,act=ABReLU(-0.5, 1)")[1]
    assert (ab.a, ab.b) == (-0.5, 1.0)


YAML_SPEC = """\
# depth-1 ReLU network
- Linear: {out_features: 512, W_std: 1.414, b_std: 0.05}
- ReLU
- Linear: {out_features: 1, W_std: 1.414, b_std: 0.05}
"""


def test_yaml_json_and_inline_files_match_closed_form(tmp_path, x):
    nngp, ntk = relu_fc_kernels(x, 1, 1.414, 0.05)
    yaml_file = tmp_path / "arch.yaml"
    yaml_file.write_text(YAML_SPEC)
    json_file = tmp_path / "arch.json"
    json_file.write_text(json.dumps({"layers": [
        {"Linear": {"out_features": 512, "W_std": 1.414, "b_std": 0.05}}, "ReLU",
        {"Linear": [1, 1.414, 0.05]}]}))
    inline = "[{Linear: {out_features: 8, W_std: 1.414, b_std: 0.05}}, ReLU, {Linear: [1, 1.414, 0.05]}]"
    for spec in (str(yaml_file), str(json_file), inline):
        k = parse_arch(spec).kernel(x)
        np.testing.assert_allclose(k.nngp.numpy(), nngp, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(k.ntk.numpy(), ntk, rtol=1e-10, atol=1e-12)


def test_every_exported_layer_is_reachable_from_a_file():
    """Each layer class of nk.__all__ can be named in a layer list (case-insensitively)."""
    required = {"Linear": {"out_features": 4}, "Conv2d": {"out_channels": 4, "kernel_size": 3},
                "Elementwise": {"fn": "cos"}, "AvgPool2d": {"kernel_size": 2},
                "LocalAvgPool2d": {"c": 2}, "Residual": {"branch": [{"Linear": [4]}]},
                "ParallelSum": [{"Linear": [4]}, [{"ReLU": None}, {"Linear": [4]}]]}
    for name, cls in layer_classes().items():
        if name == "Sequential":
            entry = {name: ["ReLU"]}
        else:
            entry = {name.lower(): required.get(name)}
        arch = parse_arch(json.dumps([entry]))
        assert isinstance(arch[0], cls if name != "Sequential" else nk.ReLU), name


def test_elementwise_from_torch_function_name(x):
    arch = parse_arch('[{Linear: [8, 1.0, 0.0]}, {Elementwise: {fn: "cos"}}, {Linear: [1]}]')
    hand = nk.Sequential(nk.Linear(8), nk.Elementwise(torch.cos), nk.Linear(1))
    np.testing.assert_allclose(arch.kernel(x).ntk.numpy(), hand.kernel(x).ntk.numpy(), rtol=1e-12)


@pytest.mark.parametrize("spec, position, token, words", [
    ("fc:depth=x", 9, "x", "integer"),
    ("fc:depht=3", 3, "depht", "did you mean 'depth'"),
    ("fcc:depth=3", 0, "fcc", "unknown preset"),
    ("fc:depth=3,act=relux", 15, "relux", "did you mean 'relu'"),
    ("fc:depth=3,,W_std=1", 11, ",", "empty entry"),
    ("fc:W_std=-1", 9, "-1", "non-negative"),
    ("fc:depth=2,depth=3", 11, "depth", "twice"),
    ("fc:depth", 3, "depth", "key=value"),
    ("fc:act=abrelu(a,1)", 14, "a", "number"),
    ("fc:param=ntkk", 9, "ntkk", "ntk, standard"),
    # the presets of the literature (myrtle, wide_resnet, cntk)
    ("myrtle:depth=6", 13, "6", "one of 5, 7, 10"),
    ("wide_resnet:depth=15", 18, "15", "6n + 4"),
    ("wide_resnet:k=0", 14, "0", ">= 1"),
    ("cntk:depth=1", 11, "1", ">= 2"),
    ("cntk:depth=14,gapp", 14, "gapp", "bare value (flatten, gap)"),
    ("cntk:readout=gap,gap", 17, "gap", "'readout' given twice"),
    ("myrtle:act=relu", 7, "act", "unknown key 'act'"),
    ("myrtl:depth=5", 0, "myrtl", "'myrtle:...'"),
    ("myrtle:pool=x", 12, "x", "integer"),
])
def test_preset_errors_point_at_the_token(spec, position, token, words):
    with pytest.raises(ArchSpecError) as info:
        parse_arch(spec)
    err = info.value
    assert (err.position, err.token) == (position, token)
    assert spec[position:position + len(token)] == token
    text = str(err)
    assert words in text and f"position {position}" in text
    caret_line = text.splitlines()[-1]
    assert caret_line.index("^") - 2 == position  # the caret sits under the token


def test_file_errors_name_the_line_and_entry(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- Linear: {out_features: 8}\n- ReLU\n- Linaer: {out_features: 1}\n")
    with pytest.raises(ArchSpecError, match=r"bad.yaml:3: layer #3 \('Linaer'\).*did you mean 'Linear'"):
        parse_arch(str(bad))
    bad.write_text("- Linear: {out_features: 8, W_sdt: 1.0}\n")
    with pytest.raises(ArchSpecError, match=r"bad.yaml:1: layer #1 \(Linear\).*W_sdt.*takes out_features"):
        parse_arch(str(bad))
    bad.write_text("- Linear: {out_features: 8\n- ReLU\n")
    with pytest.raises(ArchSpecError, match=r"bad.yaml:\d+:\d+: invalid YAML"):
        parse_arch(str(bad))
    with pytest.raises(ArchSpecError, match="does not exist"):
        parse_arch(str(tmp_path / "missing.yaml"))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"Linear": [8]},]')
    with pytest.raises(ArchSpecError, match=r"bad.json:1:\d+: invalid JSON"):
        parse_arch(str(bad_json))


def test_cnn_preset():
    if not hasattr(nk, "Conv2d"):
        pytest.skip("nk.Conv2d (convolutional layers, issue 5) not available yet")
    arch = parse_arch("cnn:depth=2,readout=flatten,channels=8,kernel=3")
    names = [type(layer).__name__ for layer in arch.layers]
    assert names == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Flatten", "Linear"]
    gap = parse_arch("cnn:depth=1,readout=gap")
    assert type(gap.layers[-2]).__name__ == "GlobalAvgPool2d"


# -- presets of the literature: myrtle, wide_resnet, cntk ----------------------------------------
S2 = math.sqrt(2.0)


def _conv(c, stride=1, w=S2, trainable=True):
    return nk.Conv2d(c, 3, stride=stride, padding="same", W_std=w, b_std=None,
                     trainable=trainable)


def test_myrtle_preset_is_the_papers_network():
    """Shankar et al. 2020, Myrtle-7: stages of [2, 2, 2] (conv 3x3 + ReLU), 2x2 average pools
    between stages, the final pool and a dense readout; W_std √2, no bias."""
    arch = parse_arch("myrtle:depth=7,width=32,out=3")
    block = lambda: [_conv(32), nk.ReLU()]  # noqa: E731
    hand = nk.Sequential(*block(), *block(), nk.AvgPool2d(2), *block(), *block(), nk.AvgPool2d(2),
                         *block(), *block(), nk.AvgPool2d(8), nk.Flatten(),
                         nk.Linear(3, W_std=S2, b_std=None))
    assert repr(arch) == repr(hand)
    assert repr(parse_arch("myrtle")) == repr(nk.myrtle(5))
    std = parse_arch("myrtle:depth=10,pool=2,param=standard")
    assert repr(std) == repr(nk.myrtle(10, pool_size=2, parameterization="standard"))


def test_wide_resnet_preset_is_the_papers_network():
    """WRN-10-1 (n = 1 block per group): Conv(16), then per group (16k, 32k, 64k channels;
    stride 1, 2, 2) Residual([ReLU, conv(stride), ReLU, conv], shortcut conv(stride)), pool,
    Flatten, Linear(W_std 1, b_std 0)."""
    arch = parse_arch("wide_resnet:depth=10,k=1,out=2")
    groups = []
    for ch, st in ((16, 1), (32, 2), (64, 2)):
        branch = nk.Sequential(nk.ReLU(), _conv(ch, st, 1.0), nk.ReLU(), _conv(ch, 1, 1.0))
        groups.append(nk.Residual(branch, _conv(ch, st, 1.0)))
    hand = nk.Sequential(_conv(16, 1, 1.0), *groups, nk.AvgPool2d(8), nk.Flatten(),
                         nk.Linear(2, W_std=1.0, b_std=0.0))
    assert repr(arch) == repr(hand)
    assert repr(parse_arch("wide_resnet:depth=16,k=4")) == repr(nk.wide_resnet(16, 4))


def test_cntk_preset_bare_gap_and_readouts():
    gap = parse_arch("cntk:depth=4,gap")
    assert repr(gap) == repr(parse_arch("cntk:depth=4,readout=gap"))
    hand = nk.Sequential(_conv(256, trainable=False), nk.ReLU(), _conv(256), nk.ReLU(), _conv(256),
                         nk.ReLU(), nk.GlobalAvgPool2d(), nk.Linear(10, b_std=None, trainable=False))
    assert repr(gap) == repr(hand)
    assert repr(parse_arch("cntk")) == repr(nk.cntk(14, "gap"))
    flat = parse_arch("cntk:depth=3,flatten,width=8,out=1")
    assert isinstance(flat[-2], nk.Flatten) and flat[-1].trainable and flat[0].trainable


def test_cntk_preset_kernel_matches_numpy():
    """cntk:depth=2,readout=flatten NNGP: Σ(p) = 2/(9C) Σ_δ Σ_c x_c(p+δ) x'_c(p+δ) (zero padding),
    then the ReLU arc-cosine expectation (Cho & Saul 2009), averaged over positions (Flatten +
    Linear(W_std 1, no bias)); numpy float64."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, 4, 5))
    pad = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])

    def sigma(a, b):
        return sum((pad[a, :, i:i + 4, j:j + 5] * pad[b, :, i:i + 4, j:j + 5]).sum(0)
                   for i in range(3) for j in range(3)) * 2.0 / (9 * 2)

    want = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            s, va, vb = sigma(a, b), sigma(a, a), sigma(b, b)
            sv = np.sqrt(va * vb)
            th = np.arccos(np.clip(s / sv, -1.0, 1.0))
            if a == b:
                th = np.zeros_like(th)
            want[a, b] = np.mean(sv * (np.sin(th) + (math.pi - th) * np.cos(th)) / (2 * math.pi))
    k = parse_arch("cntk:depth=2,readout=flatten").kernel(x, get="nngp").nngp.numpy()
    np.testing.assert_allclose(k, want, rtol=1e-12)
