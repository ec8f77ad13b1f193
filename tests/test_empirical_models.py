"""The empirical NTK of models beyond MLPs/CNNs on float tensors: language models on token ids
with a padding mask, recurrent networks (which torch.func.vmap cannot run: fallback to
per-example autograd), a ResNet-style CNN with BatchNorm (eval), parameter subsets, models with
two inputs or dict inputs. Reference: the brute-force Jacobian of tests/empirical_bruteforce.py,
one example and one output at a time with torch.autograd.grad (no torch.func), in float64, to
1e-10.
"""
import warnings

import pytest
import torch
from torch import nn

from ntkit.empirical import VmapFallbackWarning, empirical_ntk
from ntkit.empirical import TileOptions, ntk_tile
from ntkit.empirical._model import ModelFunction
from tests.empirical_bruteforce import assert_close as _assert_close
from tests.empirical_bruteforce import brute_force_ntk, modes_of

IMPLS = ["jacobian", "ntvp", "structured", "auto"]
F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_close(a, b, rtol=1e-10):
    _assert_close(a, b, rtol)


def check_all(model, x1, x2, impls=IMPLS, params=None, ref_params=None, **kw):
    ref = modes_of(brute_force_ntk(model, x1, x2, ref_params))
    for impl in impls:
        for mode, r in ref.items():
            got = empirical_ntk(model, x1, x2, mode=mode, implementation=impl, params=params, **kw)
            assert got.shape[:2] == r.shape[:2]
            assert_close(got.reshape(r.shape), r)


# -- models -----------------------------------------------------------------------------------------
class TinyLM(nn.Module):
    """nn.Embedding -> nn.TransformerEncoder (padding mask) -> masked mean -> nn.Linear."""

    def __init__(self, vocab=11, d=8, heads=2, layers=2, out=3, norm_first=False,
                 batch_first=True):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        layer = nn.TransformerEncoderLayer(d, heads, 16, dropout=0.0, batch_first=batch_first,
                                           norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, out)
        self.batch_first = batch_first

    def forward(self, ids, pad):
        e = self.emb(ids)
        if self.batch_first:
            h = self.enc(e, src_key_padding_mask=pad)
        else:  # torch's default layout (L, n, d) inside the encoder
            h = self.enc(e.transpose(0, 1), src_key_padding_mask=pad).transpose(0, 1)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


def token_batch(n, length, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    pad = torch.arange(length)[None, :] >= lengths[:, None]
    ids[pad] = 0
    return ids, pad


class Recurrent(nn.Module):
    def __init__(self, cell, d_in=3, hidden=5, out=2):
        super().__init__()
        self.rnn = cell(d_in, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def resnet():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), Block(4),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


class TwoInputs(nn.Module):
    """f(x, y) = W2 tanh(W1 x + V y) with x (n, 4) and y (n, 2, 3)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x, y):
        return self.out(torch.tanh(self.a(x) + self.b(y.flatten(1))))


# -- tests ------------------------------------------------------------------------------------------
def test_transformer_on_token_ids_with_padding_mask():
    torch.manual_seed(0)
    model = TinyLM().double().eval()
    x1, x2 = token_batch(4, 6, 11, 1), token_batch(3, 6, 11, 2)
    check_all(model, x1, x2)


def test_embedding_padding_with_nonzero_cotangents():
    """Padding ids (padding_idx=0) whose embedding outputs do reach the output (no mask): torch
    gives the padding row no gradient, so padding positions must match nothing in the token
    Gram, with x2 given and with x2=None (the one-block Gram)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 4, padding_idx=0), nn.Flatten(), nn.Tanh(),
                          nn.Linear(20, 2)).double().eval()
    x1 = torch.tensor([[0, 1, 0, 2, 3], [4, 0, 0, 5, 6], [0, 0, 0, 0, 0]])
    x2 = torch.tensor([[0, 0, 1, 6, 2], [3, 3, 0, 0, 4]])
    check_all(model, x1, x2)
    ref = modes_of(brute_force_ntk(model, x1, x1))["full"]
    for impl in IMPLS:
        assert_close(empirical_ntk(model, x1, mode="full", implementation=impl), ref)


def test_sequence_first_transformer_with_as_many_examples_as_tokens():
    """batch_first=False: the encoder's Linear/LayerNorm modules see (L, n, d); with L = n the
    batch dimension is ambiguous from shapes and is taken from the transformer layer."""
    torch.manual_seed(10)
    model = TinyLM(batch_first=False).double().eval()
    x1, x2 = token_batch(5, 5, 11, 11), token_batch(5, 5, 11, 12)
    check_all(model, x1, x2, impls=["structured"])
    check_all(model, x1, (x2[0][:3], x2[1][:3]), impls=["structured"])


def test_transformer_norm_first_dict_inputs_and_the_fast_path_left_alone():
    """A pre-LN encoder called with a dict (model(**x)); torch's fused fast path (eval mode,
    no grad) is switched off only inside the call and restored after."""
    torch.manual_seed(1)
    model = TinyLM(norm_first=True).double().eval()
    ids, pad = token_batch(3, 5, 11, 3)
    x = {"ids": ids, "pad": pad}
    before = torch.backends.mha.get_fastpath_enabled()
    check_all(model, x, x, impls=["jacobian", "structured"])
    assert torch.backends.mha.get_fastpath_enabled() == before


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_recurrent_models_fall_back_with_a_warning(cell):
    torch.manual_seed(3)
    model = Recurrent(cell).double().eval()
    x1, x2 = torch.randn(3, 4, 3, dtype=F64), torch.randn(2, 4, 3, dtype=F64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_all(model, x1, x2)
    msgs = [str(w.message) for w in caught if issubclass(w.category, VmapFallbackWarning)]
    assert any("per-example derivatives by plain autograd" in m for m in msgs)
    assert all("doesn't match the broadcast shape" in m for m in msgs)  # the reason
    with pytest.raises(RuntimeError):  # vmap required: no silent fallback
        empirical_ntk(model, x1, vectorize=True, implementation="jacobian")


def test_resnet_with_batchnorm_eval():
    model = resnet()
    torch.manual_seed(4)
    x1, x2 = torch.randn(3, 2, 5, 5, dtype=F64), torch.randn(2, 2, 5, 5, dtype=F64)
    check_all(model, x1, x2)


def test_parameter_subsets():
    """Pattern, callable, list of parameters and list of names select the same subset; the
    reference differentiates exactly those; a frozen layer is differentiated when selected."""
    torch.manual_seed(5)
    model = TinyLM().double().eval()
    model.head.requires_grad_(False)  # selected explicitly below all the same
    x1, x2 = token_batch(3, 5, 11, 4), token_batch(2, 5, 11, 5)
    named = dict(model.named_parameters())
    chosen = [n for n in named if n.startswith("enc.layers.1.") and n.endswith("bias")]
    assert len(chosen) == 6
    ref_params = [named[n] for n in chosen]
    ref = brute_force_ntk(model, x1, x2, ref_params)
    selections = ["enc.layers.1.*bias", lambda n: n in chosen, ref_params, chosen]
    for sel in selections:
        for impl in ("jacobian", "structured", "ntvp"):
            got = empirical_ntk(model, x1, x2, mode="full", implementation=impl, params=sel)
            assert_close(got, ref)
    only_head = modes_of(brute_force_ntk(model, x1, x2, [named["head.weight"],
                                                          named["head.bias"]]))
    assert_close(empirical_ntk(model, x1, x2, params="head.*"), only_head["trace"])
    with pytest.raises(ValueError, match="selects no parameter"):
        empirical_ntk(model, x1, params="nothing.*")
    with pytest.raises(ValueError, match="not a parameter of the model"):
        empirical_ntk(model, x1, params=[nn.Parameter(torch.zeros(2))])


def test_two_inputs_and_block_sizes():
    torch.manual_seed(6)
    model = TwoInputs().double()
    g = torch.Generator().manual_seed(0)
    x1 = (torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 2, 3, generator=g, dtype=F64))
    x2 = (torch.randn(3, 4, generator=g, dtype=F64), torch.randn(3, 2, 3, generator=g, dtype=F64))
    check_all(model, x1, x2)
    check_all(model, x1, x1, batch_size=2)
    ref = brute_force_ntk(model, x1, x1)
    assert_close(empirical_ntk(model, x1, None, mode="full", batch_size=2), ref)
    # a budget too small for more than one example per block: still exact
    assert_close(empirical_ntk(model, x1, None, mode="full", memory_budget=1,
                               implementation="jacobian"), ref)


def test_vectorize_false_agrees_everywhere():
    model = resnet()
    torch.manual_seed(7)
    x = torch.randn(3, 2, 4, 4, dtype=F64)
    check_all(model, x, x, impls=["jacobian", "ntvp", "structured"], vectorize=False)


def test_ntk_tile_is_the_kernel_block():
    """The pure tile function gives the (rows, columns) block of the kernel, off-diagonal and
    diagonal, for every implementation."""
    torch.manual_seed(8)
    model = TinyLM().double().eval()
    ids, pad = token_batch(5, 6, 11, 6)
    ref = brute_force_ntk(model, (ids, pad), (ids, pad))
    fn = ModelFunction(model)
    fn.inputs((ids, pad), None)
    rows, cols = (ids[:2], pad[:2]), (ids[2:], pad[2:])
    for impl in ("jacobian", "ntvp", "structured"):
        off = ntk_tile(fn, rows, cols, TileOptions(impl, full=True))
        assert_close(off, ref[:2, 2:])
        diag = ntk_tile(fn, cols, None, TileOptions(impl, full=False))
        assert_close(diag, torch.diagonal(ref[2:, 2:], dim1=2, dim2=3))


def test_bad_structured_inputs():
    model = TwoInputs().double()
    x = (torch.randn(3, 4, dtype=F64), torch.randn(2, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match="different batch sizes"):
        empirical_ntk(model, x)
    good = (torch.randn(3, 4, dtype=F64), torch.randn(3, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match="differ in structure"):
        empirical_ntk(model, good, (good[0], good[1][:, :1]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        empirical_ntk(model, (good[0], good[1] * float("nan")))


class AttentionZoo(nn.Module):
    """MultiheadAttention used every way the structured rule must handle: self-attention with a
    packed weight (batch_first, padding mask), the same module again as cross-attention (its
    q/k/v maps split), separate q/k/v weights with kdim/vdim (sequence-first, causal float
    mask, need_weights), no biases, and add_bias_kv (bias_k/bias_v left to Jacobians)."""

    def __init__(self, d=6):
        super().__init__()
        self.packed = nn.MultiheadAttention(d, 2, batch_first=True)
        self.separate = nn.MultiheadAttention(d, 3, kdim=4, vdim=5)
        self.nobias = nn.MultiheadAttention(d, 2, bias=False, batch_first=True)
        self.kv = nn.MultiheadAttention(d, 1, add_bias_kv=True, batch_first=True)
        self.ctx_k, self.ctx_v = nn.Linear(d, 4), nn.Linear(d, 5)
        self.head = nn.Linear(d, 2)

    def forward(self, x, pad):
        h, _ = self.packed(x, x, x, key_padding_mask=pad, need_weights=False)
        h2, _ = self.packed(h, x, x, key_padding_mask=pad)  # cross: the maps are split
        s = h2.transpose(0, 1)  # (L, n, d)
        L = s.shape[0]
        causal = torch.triu(torch.full((L, L), float("-inf"), dtype=s.dtype), diagonal=1)
        h3, w = self.separate(s, self.ctx_k(s), self.ctx_v(s), attn_mask=causal,
                              need_weights=True)
        h3 = h3.transpose(0, 1) + w.sum(-1, keepdim=True)
        h4, _ = self.nobias(h3, h3, h3)
        h5, _ = self.kv(h4, h4, h4, key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h5.dtype)
        return self.head((torch.tanh(h5) * keep).sum(1))


def test_structured_attention_rule_in_every_configuration():
    from ntkit.empirical.structured import StructuredDerivatives

    torch.manual_seed(9)
    model = AttentionZoo().double().eval()
    g = torch.Generator().manual_seed(9)
    x = torch.randn(4, 5, 6, generator=g, dtype=F64)
    pad = torch.zeros(4, 5, dtype=torch.bool)
    pad[1, 3:] = True
    fn = ModelFunction(model)
    s = StructuredDerivatives(fn)
    assert sorted(s.leftover) == ["kv.bias_k", "kv.bias_v"]
    assert s.covered_fraction > 0.95
    x1, x2 = (x[:3], pad[:3]), (x[3:], pad[3:])
    check_all(model, x1, x2, impls=["structured", "jacobian"])
    assert "forward" not in model.packed.__dict__  # the replaced forward is gone


def test_transformer_is_covered_by_structured_rules():
    from ntkit.empirical.structured import StructuredDerivatives

    model = TinyLM().double().eval()
    s = StructuredDerivatives(ModelFunction(model))
    assert s.leftover == []
    assert {type(c.module) for c in s.covered} == {nn.Embedding, nn.MultiheadAttention,
                                                  nn.LayerNorm, nn.Linear}


class ControlFlow(nn.Module):
    """Data-dependent Python control flow and an in-place write of per-example values into a
    fresh buffer: both stop torch.func.vmap; autograd runs them per example."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if bool((h.abs() > 10).any()):  # never true (|tanh| < 1), but must be evaluated
            h = h * 0
        out = torch.zeros(x.shape[0], 3, dtype=x.dtype)
        out[:, :2] = self.b(h)
        out[:, 2] = h.sum(-1)
        return out


def test_control_flow_and_in_place_writes_fall_back():
    torch.manual_seed(11)
    model = ControlFlow().double()
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(3, 3, generator=g, dtype=F64), torch.randn(2, 3, generator=g, dtype=F64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_all(model, x1, x2)
    assert any(issubclass(w.category, VmapFallbackWarning) for w in caught)
