"""The command-line architecture syntax: short presets for the common cases, a YAML/JSON list of
layers for everything else.

Presets (``name:key=value,...``; every key optional)::

    fc:depth=3,act=relu,W_std=1.414,b_std=0.05,width=512,param=ntk,out=1
    cnn:depth=6,readout=gap,channels=256,kernel=3,stride=1,padding=same,act=relu,W_std=1.414,b_std=0

``fc`` is ``depth`` × [Linear(width), act] followed by a Linear(out) readout; ``cnn`` is
``depth`` × [Conv2d(channels, kernel), act], then GlobalAvgPool2d (``readout=gap``) or Flatten
(``readout=flatten``), then a Linear(out) readout. ``act`` names any ntkit activation, with
arguments in parentheses when it takes some: ``act=leakyrelu(0.1)``, ``act=abrelu(-0.5,1)``,
``act=erf``. ``b_std=none`` means no bias parameter. ``param`` is ``ntk`` or ``standard``.

The architectures of the literature (``ntkit.layers.presets``; see their docstrings)::

    myrtle:depth=5,width=128,pool=8,param=ntk,out=10          Myrtle-5/7/10 (Shankar et al. 2020)
    wide_resnet:depth=16,k=4,pool=8,param=ntk,out=10          WRN-depth-k (depth = 6n + 4)
    cntk:depth=14,readout=gap,width=256,out=10                CNTK of Arora et al. 2019

``pool`` is the final average pool's size (8: global on 32x32 inputs; 2 for 8x8 inputs).
A bare value stands for the key whose choices contain it: ``cntk:depth=14,gap`` is
``cntk:depth=14,readout=gap``.

Files (``.yaml``, ``.yml``, ``.json``; or the same text inline, starting with ``[`` or ``{``)
list layers by their ntkit class name, with keyword or positional arguments::

    - Linear: {out_features: 512, W_std: 1.5, b_std: 0.05}
    - ReLU
    - LeakyReLU: {negative_slope: 0.1}
    - Conv2d: [64, 3]
    - Elementwise: {fn: cos}        # fn: the name of a torch function

(a mapping ``{layers: [...]}`` is accepted too). Every layer exported by ``ntkit`` is available.

Errors raise :class:`ArchSpecError` pointing at the offending token: its position and text in a
preset string, its line and entry number in a file.
"""
from __future__ import annotations

import difflib
import inspect
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["ArchSpecError", "parse_arch", "layer_classes", "PRESETS"]

_FILE_SUFFIXES = (".yaml", ".yml", ".json")


class ArchSpecError(ValueError):
    """A bad architecture specification. ``position`` (0-based character offset) and ``token``
    locate the problem in a preset string; ``where`` names a file location."""

    def __init__(self, message: str, spec: Optional[str] = None, position: Optional[int] = None,
                 token: Optional[str] = None, where: Optional[str] = None):
        self.message, self.spec, self.position, self.token, self.where = (
            message, spec, position, token, where)
        super().__init__(self._render())

    def _render(self) -> str:
        if self.where is not None:
            return f"{self.where}: {self.message}"
        if self.spec is None or self.position is None:
            return self.message
        head = f"bad architecture at position {self.position}"
        if self.token is not None:
            head += f" ({self.token!r})"
        caret = " " * self.position + "^" * max(1, len(self.token or "x"))
        return f"{head}: {self.message}\n  {self.spec}\n  {caret}"


# ------------------------------------------------------------------------------------------
# the layers ntkit exports
# ------------------------------------------------------------------------------------------
def layer_classes() -> Dict[str, type]:
    """Every layer class in ``ntkit.__all__`` (name -> class), Sequential included."""
    import ntkit as nk
    from ntkit.layers.base import Layer

    out = {}
    for name in getattr(nk, "__all__", []):
        obj = getattr(nk, name, None)
        if inspect.isclass(obj) and issubclass(obj, Layer) and obj is not Layer:
            out[name] = obj
    return out


def _activation_classes() -> Dict[str, type]:
    from ntkit.layers.activation import Activation

    return {n: c for n, c in layer_classes().items() if issubclass(c, Activation)}


def _normalize(name: str) -> str:
    return re.sub(r"[_\-\s]", "", name).lower()


def _lookup(name: str, table: Dict[str, type]) -> Optional[type]:
    wanted = _normalize(name)
    for key, cls in table.items():
        if _normalize(key) == wanted:
            return cls
    return None


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (choices: {', '.join(sorted(choices))})"


# ------------------------------------------------------------------------------------------
# presets
# ------------------------------------------------------------------------------------------
@dataclass
class _Token:
    text: str
    pos: int


def _split_top(text: str, start: int, sep: str = ",") -> List[_Token]:
    """Split ``text`` on ``sep`` outside parentheses, keeping each piece's offset."""
    tokens, depth, begin = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            tokens.append(_Token(text[begin:i], start + begin))
            begin = i + 1
    tokens.append(_Token(text[begin:], start + begin))
    return tokens


def _parse_int(tok: _Token, spec: str, minimum: int = 0) -> int:
    try:
        value = int(tok.text.strip())
    except ValueError:
        raise ArchSpecError(f"expected an integer, got {tok.text!r}", spec, tok.pos, tok.text) from None
    if value < minimum:
        raise ArchSpecError(f"must be >= {minimum}, got {value}", spec, tok.pos, tok.text)
    return value


def _parse_float(tok: _Token, spec: str, allow_none: bool = False) -> Optional[float]:
    text = tok.text.strip()
    if allow_none and text.lower() in ("none", "null"):
        return None
    m = re.fullmatch(r"sqrt\(([^()]+)\)", text)
    try:
        value = math.sqrt(float(m.group(1))) if m else float(text)
    except ValueError:
        extra = " or 'none'" if allow_none else ""
        raise ArchSpecError(f"expected a number (e.g. 1.414 or sqrt(2)){extra}, got {text!r}",
                            spec, tok.pos, tok.text) from None
    if not math.isfinite(value) or value < 0:
        raise ArchSpecError(f"expected a finite non-negative number, got {text!r}", spec, tok.pos,
                            tok.text)
    return value


def _parse_choice(choices: Sequence[str]) -> Callable[[_Token, str], str]:
    def parse(tok: _Token, spec: str) -> str:
        value = tok.text.strip().lower()
        if value not in choices:
            raise ArchSpecError(f"expected one of {', '.join(choices)}, got {tok.text!r}", spec,
                                tok.pos, tok.text)
        return value
    parse.choices = tuple(choices)  # a bare value names its key (_bare_value)
    return parse


def _parse_int_choice(choices: Sequence[int]) -> Callable[[_Token, str], int]:
    def parse(tok: _Token, spec: str) -> int:
        value = _parse_int(tok, spec)
        if value not in choices:
            raise ArchSpecError(f"expected one of {', '.join(map(str, choices))}, got {value}",
                                spec, tok.pos, tok.text)
        return value
    return parse


def _parse_wrn_depth(tok: _Token, spec: str) -> int:
    value = _parse_int(tok, spec)
    if value < 10 or (value - 4) % 6:
        raise ArchSpecError(f"a WideResNet depth is 6n + 4 with n >= 1 (10, 16, 22, 28, ...), "
                            f"got {value}", spec, tok.pos, tok.text)
    return value


def _parse_activation(tok: _Token, spec: str):
    """``name`` or ``name(arg, ...)`` -> an activation instance."""
    text = tok.text.strip()
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?", text)
    table = {n: c for n, c in _activation_classes().items() if n != "Elementwise"}
    if not m:
        raise ArchSpecError("expected an activation such as relu, erf or leakyrelu(0.1)", spec,
                            tok.pos, tok.text)
    cls = _lookup(m.group(1), table)
    if cls is None:
        raise ArchSpecError(f"unknown activation {m.group(1)!r}"
                            + _suggest(m.group(1).lower(), [n.lower() for n in table]),
                            spec, tok.pos, tok.text)
    args: List[float] = []
    if m.group(2) is not None and m.group(2).strip():
        inner_start = tok.pos + tok.text.index("(") + 1
        for arg in _split_top(m.group(2), inner_start):
            args.append(_parse_float_signed(arg, spec))
    try:
        return cls(*args)
    except (TypeError, ValueError) as err:
        raise ArchSpecError(f"{cls.__name__}{tuple(args)}: {err}", spec, tok.pos, tok.text) from None


def _parse_float_signed(tok: _Token, spec: str) -> float:
    try:
        return float(tok.text.strip())
    except ValueError:
        raise ArchSpecError(f"expected a number, got {tok.text!r}", spec, tok.pos, tok.text) from None


def _fc_keys():
    return {
        "depth": (lambda t, s: _parse_int(t, s, 0), 2),
        "act": (_parse_activation, None),
        "W_std": (lambda t, s: _parse_float(t, s), math.sqrt(2.0)),
        "b_std": (lambda t, s: _parse_float(t, s, allow_none=True), 0.05),
        "width": (lambda t, s: _parse_int(t, s, 1), 512),
        "param": (_parse_choice(("ntk", "standard")), "ntk"),
        "out": (lambda t, s: _parse_int(t, s, 1), 1),
    }


def _cnn_keys():
    keys = _fc_keys()
    keys.pop("width")
    keys.update({
        "depth": (lambda t, s: _parse_int(t, s, 1), 3),
        "b_std": (lambda t, s: _parse_float(t, s, allow_none=True), 0.0),
        "readout": (_parse_choice(("gap", "flatten")), "gap"),
        "channels": (lambda t, s: _parse_int(t, s, 1), 256),
        "kernel": (lambda t, s: _parse_int(t, s, 1), 3),
        "stride": (lambda t, s: _parse_int(t, s, 1), 1),
        "padding": (_parse_choice(("same", "valid", "circular")), "same"),
    })
    return keys


def _build_fc(o: Dict[str, Any]):
    import ntkit as nk

    layers = []
    for _ in range(o["depth"]):
        layers += [nk.Linear(o["width"], W_std=o["W_std"], b_std=o["b_std"],
                             parameterization=o["param"]), o["act"]()]
    layers.append(nk.Linear(o["out"], W_std=o["W_std"], b_std=o["b_std"],
                            parameterization=o["param"]))
    return nk.Sequential(*layers)


def _build_cnn(o: Dict[str, Any]):
    import ntkit as nk

    missing = [n for n in ("Conv2d", "GlobalAvgPool2d", "Flatten") if not hasattr(nk, n)]
    if missing:
        raise ArchSpecError(f"the cnn preset needs nk.{', nk.'.join(missing)}, not available in "
                            f"this installation")
    layers = []
    for _ in range(o["depth"]):
        layers += [nk.Conv2d(o["channels"], o["kernel"], stride=o["stride"], padding=o["padding"],
                             W_std=o["W_std"], b_std=o["b_std"], parameterization=o["param"]),
                   o["act"]()]
    layers.append(nk.GlobalAvgPool2d() if o["readout"] == "gap" else nk.Flatten())
    layers.append(nk.Linear(o["out"], W_std=o["W_std"], b_std=o["b_std"],
                            parameterization=o["param"]))
    return nk.Sequential(*layers)


def _positive(default: int):
    return (lambda t, s: _parse_int(t, s, 1), default)


_PARAM = (_parse_choice(("ntk", "standard")), "ntk")


def _myrtle_keys():
    return {"depth": (_parse_int_choice((5, 7, 10)), 5), "width": _positive(128),
            "pool": _positive(8), "param": _PARAM, "out": _positive(10)}


def _wrn_keys():
    return {"depth": (_parse_wrn_depth, 16), "k": _positive(4), "pool": _positive(8),
            "param": _PARAM, "out": _positive(10)}


def _cntk_keys():
    return {"depth": (lambda t, s: _parse_int(t, s, 2), 14),
            "readout": (_parse_choice(("gap", "flatten")), "gap"), "width": _positive(256),
            "out": _positive(10)}


def _build_myrtle(o: Dict[str, Any]):
    from ntkit.layers.presets import myrtle
    return myrtle(o["depth"], width=o["width"], out_features=o["out"], pool_size=o["pool"],
                  parameterization=o["param"])


def _build_wrn(o: Dict[str, Any]):
    from ntkit.layers.presets import wide_resnet
    return wide_resnet(o["depth"], o["k"], out_features=o["out"], pool_size=o["pool"],
                       parameterization=o["param"])


def _build_cntk(o: Dict[str, Any]):
    from ntkit.layers.presets import cntk
    return cntk(o["depth"], o["readout"], width=o["width"], out_features=o["out"])


#: preset name -> (key table factory, builder, one-line description)
PRESETS = {
    "fc": (_fc_keys, _build_fc, "fully-connected: depth x [Linear(width), act], Linear(out)"),
    "cnn": (_cnn_keys, _build_cnn,
            "convolutional: depth x [Conv2d(channels, kernel), act], GAP or Flatten, Linear(out)"),
    "myrtle": (_myrtle_keys, _build_myrtle, "Myrtle-5/7/10 of Shankar et al. 2020"),
    "wide_resnet": (_wrn_keys, _build_wrn, "WideResNet-depth-k (Zagoruyko & Komodakis 2016)"),
    "cntk": (_cntk_keys, _build_cntk, "the depth-d CNTK of Arora et al. 2019 (GAP or Flatten)"),
}


def _bare_value(tok: _Token, keys: Dict[str, Any], spec: str) -> str:
    """The key whose choices contain the bare value ``tok`` (``gap`` -> ``readout``)."""
    value = tok.text.strip().lower()
    owners = [k for k, (parse, _) in keys.items() if value in getattr(parse, "choices", ())]
    if len(owners) != 1:
        bare = sorted({c for parse, _ in keys.values() for c in getattr(parse, "choices", ())})
        extra = f" or a bare value ({', '.join(bare)})" if bare else ""
        raise ArchSpecError(f"expected key=value{extra}", spec, tok.pos, tok.text)
    return owners[0]


def _parse_preset(spec: str):
    name, _, rest = spec.partition(":")
    if name not in PRESETS:
        what = f"unknown preset {name!r}" if re.fullmatch(r"\w+", name) else "not an architecture"
        known = ", ".join(f"'{p}:...'" for p in PRESETS)
        raise ArchSpecError(f"{what}; expected one of {known}, or a path to a "
                            f".yaml/.yml/.json file listing layers", spec, 0, name or spec)
    key_table, build, _ = PRESETS[name]
    keys = key_table()
    options = {k: default for k, (_, default) in keys.items()}
    seen = set()
    if rest.strip():
        for tok in _split_top(rest, len(name) + 1):
            if not tok.text.strip():
                raise ArchSpecError("empty entry (two commas in a row, or a trailing comma?)",
                                    spec, tok.pos, ",")
            if "=" in tok.text:
                key_text, _, value_text = tok.text.partition("=")
                key = key_text.strip()
                key_pos = tok.pos + (len(key_text) - len(key_text.lstrip()))
                value_tok = _Token(value_text, tok.pos + len(key_text) + 1)
            else:  # a bare value: the key whose choices hold it
                key, value_text, value_tok = _bare_value(tok, keys, spec), tok.text, tok
                key_pos = tok.pos + (len(tok.text) - len(tok.text.lstrip()))
            match = next((k for k in keys if k.lower() == key.lower()), None)
            if match is None:
                raise ArchSpecError(f"unknown key {key!r} for preset {name!r}"
                                    + _suggest(key, list(keys)), spec, key_pos, key)
            if match in seen:
                where = key if "=" in tok.text else tok.text.strip()
                raise ArchSpecError(f"key {match!r} given twice", spec, key_pos, where)
            seen.add(match)
            if not value_text.strip():
                raise ArchSpecError(f"missing value for {match!r}", spec, value_tok.pos - 1, "=")
            options[match] = keys[match][0](value_tok, spec)
    if "act" in options:
        if options["act"] is None:
            import ntkit as nk
            options["act"] = nk.ReLU()
        act = options["act"]
        options["act"] = lambda: _copy_activation(act)
    return build(options)


def _copy_activation(act):
    import copy
    return copy.deepcopy(act)


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------
def _entry_lines(text: str) -> List[Optional[int]]:
    """1-based line of each top-level list entry (best effort; None when unknown)."""
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if getattr(key, "value", None) == "layers":
                node = value
                break
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in node.value]


def _load_document(text: str, source: str, is_json: bool):
    import yaml

    if is_json:
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchSpecError(f"invalid JSON: {err.msg}",
                                where=f"{source}:{err.lineno}:{err.colno}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        loc = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err)
        raise ArchSpecError(f"invalid YAML: {problem}", where=loc) from None


def _resolve_fn(value: Any, where: str) -> Callable:
    import torch

    if callable(value):
        return value
    if isinstance(value, str):
        name = value.removeprefix("torch.")
        fn = getattr(torch, name, None)
        if callable(fn):
            return fn
    raise ArchSpecError(f"Elementwise fn: {value!r} is not the name of a torch function "
                        f"(e.g. cos, tanh, sigmoid)", where=where)


def _branch_args(args: Any, where: str, table: Dict[str, type]):
    """Arguments of a block (Residual, ParallelSum): each a layer entry, a list of entries (a
    Sequential) or null (the identity)."""
    import ntkit as nk

    def branch(v, at):
        if v is None:
            return None
        if isinstance(v, list):
            return nk.Sequential(*[_build_layer(e, f"{where} {at} item {j + 1}", table)
                                   for j, e in enumerate(v)])
        return _build_layer(v, f"{where} {at}", table)

    if isinstance(args, dict):
        return {k: branch(v, k) for k, v in args.items()}
    if isinstance(args, list):
        return [branch(v, f"branch {i + 1}") for i, v in enumerate(args)]
    return args


def _build_layer(entry: Any, where: str, table: Dict[str, type]):
    """One list entry -> a layer instance."""
    if isinstance(entry, str):
        name, args = entry, None
    elif isinstance(entry, dict) and len(entry) == 1:
        name, args = next(iter(entry.items()))
    else:
        raise ArchSpecError(f"expected a layer name or a one-key mapping {{LayerName: arguments}},"
                            f" got {entry!r}", where=where)
    cls = _lookup(str(name), table)
    if cls is None:
        raise ArchSpecError(f"unknown layer {name!r}" + _suggest(str(name), list(table)),
                            where=f"{where} ({name!r})")
    where = f"{where} ({cls.__name__})"
    if cls.__name__ == "Sequential":
        if not isinstance(args, list):
            raise ArchSpecError("Sequential takes a list of layers", where=where)
        return cls(*[_build_layer(e, f"{where} item {i + 1}", table) for i, e in enumerate(args)])
    if getattr(cls, "takes_layers", False):  # blocks: each argument is a layer entry or a list
        args = _branch_args(args, where, table)
    if args is None:
        pos, kw = [], {}
    elif isinstance(args, dict):
        pos, kw = [], dict(args)
    elif isinstance(args, list):
        pos, kw = list(args), {}
    else:
        pos, kw = [args], {}
    if "fn" in kw:
        kw["fn"] = _resolve_fn(kw["fn"], where)
    elif cls.__name__ == "Elementwise" and pos:
        pos[0] = _resolve_fn(pos[0], where)
    try:
        inspect.signature(cls).bind(*pos, **kw)
    except TypeError as err:
        params = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
        raise ArchSpecError(f"{err}; {cls.__name__} takes {', '.join(params) or 'no arguments'}",
                            where=where) from None
    try:
        return cls(*pos, **kw)
    except (TypeError, ValueError) as err:
        raise ArchSpecError(str(err), where=where) from None


def _parse_document(text: str, source: str, is_json: bool):
    import ntkit as nk

    doc = _load_document(text, source, is_json)
    if isinstance(doc, dict) and "layers" in doc:
        doc = doc["layers"]
    if not isinstance(doc, list) or not doc:
        raise ArchSpecError("expected a non-empty list of layers (or a mapping with a 'layers' "
                            "list)", where=source)
    lines = _entry_lines(text)
    table = layer_classes()
    layers = []
    for i, entry in enumerate(doc):
        line = lines[i] if i < len(lines) else None
        where = f"{source}:{line}: layer #{i + 1}" if line else f"{source}: layer #{i + 1}"
        layers.append(_build_layer(entry, where, table))
    return nk.Sequential(*layers)


# ------------------------------------------------------------------------------------------
def parse_arch(spec: str):
    """An ``nk.Sequential`` from a preset string, a path to a YAML/JSON file, or inline
    YAML/JSON text (see the module docstring). Raises ArchSpecError on any problem."""
    if not isinstance(spec, str) or not spec.strip():
        raise ArchSpecError("empty architecture; e.g. 'fc:depth=3' or a .yaml file")
    text = spec.strip()
    if text[0] in "[{":
        return _parse_document(text, "inline architecture", is_json=False)
    path = Path(text).expanduser()
    if path.suffix.lower() in _FILE_SUFFIXES or path.is_file():
        if not path.is_file():
            raise ArchSpecError(f"architecture file {str(path)!r} does not exist")
        return _parse_document(path.read_text(), str(path), path.suffix.lower() == ".json")
    return _parse_preset(text)
