"""The cost model of the automatic choice: the profiled multiply-adds and layer shapes against
hand counts, the cost formulas against hand-evaluated numbers, and the choice on clear cases.
(Whether the model ranks the implementations as measured times do is checked by
benchmarks/empirical_ntk.py: "auto_is_fastest".)"""
import pytest
import torch
from torch import nn

from ntkit.empirical import resolve_implementation
from ntkit.empirical import cost
from ntkit.empirical._model import ModelFunction
from ntkit.empirical.structured import StructuredDerivatives

pytestmark = pytest.mark.usefixtures("one_thread")


def profile_of(model, x):
    fn = ModelFunction(model)
    t1, _ = fn.inputs(x, None)
    return cost.profile(fn, t1, StructuredDerivatives(fn))


def test_profile_counts_multiply_adds_and_layer_shapes():
    mlp = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3, bias=False))
    p = profile_of(mlp, torch.randn(4, 5))
    assert p.forward == 5 * 7 + 7 * 3
    assert p.layers == [(1, 5, 7, True, False), (1, 7, 3, False, False)]
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten())
    p = profile_of(conv, torch.randn(2, 2, 5, 5))
    assert p.forward == 25 * (2 * 9) * 3  # 25 output pixels, 18 inputs, 3 channels
    assert p.layers == [(25, 18, 3, True, False)]
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.LayerNorm(12))
    p = profile_of(emb, torch.randint(0, 10, (2, 3)))
    assert p.layers == [(3, 1, 4, False, True)]  # token-equality Gram: a = 1
    assert p.elementwise == [24] and p.left == 0


class LastStep(nn.Module):
    """A recurrent layer (2 layers) -> its last step -> Linear(H, 1)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(rnn.hidden_size, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("kind, gates", [(nn.LSTM, 4), (nn.GRU, 3)])
def test_profile_counts_recurrent_layers(kind, gates):
    """T steps of a 2-layer recurrent net (I = 5 inputs, H = 7 hidden): per step and layer, the
    gates' (g·H, I_layer) and (g·H, H) products (nn.LSTM runs as one oneDNN operator on CPU,
    which torch's flop counter does not count), plus the head."""
    torch.manual_seed(0)
    T, I, H = 6, 5, 7
    p = profile_of(LastStep(kind(I, H, num_layers=2, batch_first=True)), torch.randn(3, T, I))
    assert p.forward == T * gates * H * ((I + H) + (H + H)) + H


def test_cost_formulas_by_hand():
    """Linear(5, 7) - Linear(7, 3), both with bias (66 parameters), n1 = 4, n2 = 3, k = 3,
    "full": examples 7, pairs 12, k' = 9, forward F = 56 multiply-adds."""
    p = cost.Profile(56.0, [(1, 5, 7, True, False), (1, 7, 3, True, False)])
    c = cost.costs(p, 66, 3, examples=7, pairs=12, full=True)
    passes = 7 * 7 * 56
    assert c["jacobian"] == passes + 12 * 9 * 66
    assert c["ntvp"] == passes + 3 * 3 * 12 * 56
    layers = 12 * (5 + 9 * 7) + 12 * 9 * 7 + 12 * (7 + 9 * 3) + 12 * 9 * 3
    assert c["structured"] == passes + layers
    conv = cost.Profile(1350.0, [(25, 18, 3, False, False)])
    c = cost.costs(conv, 162, 1, examples=10, pairs=25, full=False)
    gram = 25 * 25 * 25 * (18 + 3)
    grad = 1 * 10 * 25 * 3 * 18 + 25 * 3 * 18
    assert c["structured"] == 10 * 3 * 1350 + min(gram, grad)


class Bilinear(nn.Module):
    """A custom module no rule covers: x Wᵀ with W a plain parameter (256 x 64)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(256, 64) / 8)

    def forward(self, x):
        return torch.tanh(x @ self.w.T).sum(-1, keepdim=True)


def test_choices_on_clear_cases():
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 1))
    assert resolve_implementation(wide, torch.randn(200, 784)) == "structured"
    # nothing covered: structured does not compete; one output, few examples: Jacobians
    assert resolve_implementation(Bilinear(), torch.randn(8, 64)) == "jacobian"


def test_structured_feature_count_by_hand():
    """Dense layer (T = 1, a = 5, o = 7), conv layer (T = 25, a = 18, o = 3; plus its per-example
    weight gradients), an embedding (T = 4 ids, o = 6), a LayerNorm of 24 gradient numbers,
    10 parameters left to Jacobians; k = 2 outputs."""
    layers = [(1, 5, 7, True, False), (25, 18, 3, True, False), (4, 1, 6, False, True)]
    p = cost.Profile(0.0, layers, [24], left=10)
    expected = (5 + 2 * 7) + (25 * 18 + 2 * 25 * 3) + (4 + 2 * 4 * 6) + 2 * 24 + 2 * 10
    transient = 25 * 18 + 2 * 3 * 18  # the conv's patches and weight gradients while contracted
    assert p.structured_numbers(2) == expected + transient
    # the conv keeps its 2 x 7 x 7 input instead of its 25 x 18 patches
    kept = cost.Profile(0.0, layers, [24], left=10, inputs=[5, 2 * 7 * 7, 4])
    assert kept.structured_numbers(2) == expected - 25 * 18 + 2 * 7 * 7 + transient
    assert p.largest_cotangent(2) == 2 * 25 * 3


def test_traffic_formulas_by_hand():
    """Numbers moved (cost.traffic), hand-counted: a dense layer (T = 1, a = 5, o = 7), a conv
    layer (T = 25, a = 18, o = 3) and a token embedding (T = 4 ids, o = 6, Gram form),
    4 parameters left to Jacobians, an elementwise layer of 24 numbers; k = 2, "trace"
    (k' = 2), N = 10 examples, 30 pairs, P = 500."""
    p = cost.Profile(0.0, [(1, 5, 7, True, False), (25, 18, 3, False, False),
                           (4, 1, 6, False, True)], [24], left=4)
    t = cost.traffic(p, 500, 2, examples=10, pairs=30, full=False)
    assert t["jacobian"] == t["ntvp"] == 2 * 10 * 2 * 500
    dense = 10 * (5 + 2 * 7) + 2 * 30
    # conv: Gram 30·625·(18 + 6) = 450,000 multiply-adds against gradients 2·10·25·3·18 +
    # 30·2·3·18 = 30,240: the gradient form, whose numbers are read and formed
    conv = 10 * 25 * (18 + 2 * 3) + 2 * 10 * 2 * 3 * 18
    tokens = 2 * 30 * 16 * (2 + 4 * 2)
    assert t["structured"] == dense + conv + tokens + 10 * 2 * 24 + 2 * 10 * 2 * 4


def test_shapes_only_profile_and_the_choice_without_flops():
    """count_flops=False: forward = Σ T·a·o of the covered maps, by hand (Linear(6, 5) on flat
    inputs, Conv2d(2, 3, 3) on 4x4 'same': T = 16, a = 18, o = 3), the rest as counted. The
    shortcut of ``choose`` (structured derivatives without flop counting) must give the choice
    the full prediction gives, over models and modes where it applies and where it does not."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    fn = ModelFunction(dense)
    t1, _ = fn.inputs(torch.randn(4, 6), None)
    rules = StructuredDerivatives(fn)
    full, shapes = cost.profile(fn, t1, rules), cost.profile(fn, t1, rules, count_flops=False)
    assert shapes.forward == 6 * 5 + 5 * 2 and full.forward == 6 * 5 + 5 * 2
    assert shapes.layers == full.layers and shapes.inputs == full.inputs
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(48, 2))
    p = profile_of(conv, torch.randn(2, 2, 4, 4))
    fn = ModelFunction(conv)
    t1, _ = fn.inputs(torch.randn(2, 2, 4, 4), None)
    q = cost.profile(fn, t1, StructuredDerivatives(fn), count_flops=False)
    assert q.forward == 16 * 18 * 3 + 48 * 2 and p.forward == q.forward  # ReLU counts nothing

    from ntkit.empirical.auto import Request, choose, predicted_times
    for model, x in [(dense, torch.randn(30, 6)), (conv, torch.randn(3, 2, 4, 4)),
                     (Bilinear(), torch.randn(5, 64)),
                     (nn.Sequential(nn.Linear(1, 40), nn.Tanh(), nn.Linear(40, 12)),
                      torch.randn(2, 1))]:
        for full_mode in (False, True):
            fn = ModelFunction(model)
            t1, _ = fn.inputs(x, None)
            picked = choose(Request(fn, t1, None, full_mode, 2 ** 30), "auto")  # fresh: shapes
            req = Request(fn, t1, None, full_mode, 2 ** 30)
            t = predicted_times(req, bool(req.rules.covered))
            assert picked == min(t, key=t.get)
