"""The golden conformance cases: their parameters, and their expected values from the reference.

``xdrop golden FILE`` writes the cases from :mod:`xdrop.reference` to ``FILE`` (from a checkout,
``xdrop/conformance/golden.json`` is the shipped file); ``xdrop golden --check`` fails when the
shipped file differs from what the reference produces now.

Dropout, mask and fold-in cases are bit-exact. The R-Dropout cases (kinds ``rdrop_kl`` and
``rdrop_loss``) hold float64 values that a backend matches to the tolerance of the dtype it
computes in (:mod:`xdrop.conformance.runner`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from xdrop import reference

GOLDEN_PATH = Path(__file__).with_name("golden.json")
STREAM_VERSION = "mask stream v1"

# Input values exact in every float dtype: both zeros' signs, non-finite values (a dropped unit must
# still give +0), and 49152, whose inverted scaling by 2 overflows float16 to infinity.
INPUT_PATTERN = (
    0.5, -1.25, 3.0, -0.0, 2.0, 1.0, -7.5, 0.375, 1000.0, -0.0625, math.inf, 0.0,
    -3.5, 49152.0, math.nan, 0.75, -math.inf, 6.0, -2.0, 0.125,
)  # fmt: skip

LAST_SEED = 2**64 - 1
SEEDS = (0, 1, 42, 2**32, LAST_SEED)


def input_values(count: int) -> list[float]:
    """The row-major input of a case with ``count`` elements."""
    return [INPUT_PATTERN[i % len(INPUT_PATTERN)] for i in range(count)]


def _dropout(
    group: str, shape: tuple[int, ...], p: float, seed: int, **options: Any
) -> dict[str, Any]:
    case = {
        "kind": "dropout",
        "group": group,
        "shape": list(shape),
        "p": p,
        "seed": seed,
        "dtype": options.pop("dtype", "float32"),
        "mode": options.pop("mode", "inverted"),
        "training": options.pop("training", True),
        "noise_shape": options.pop("noise_shape", None),
        "offset": options.pop("offset", 0),
    }
    assert not options, options
    return case


def _mask(shape: tuple[int, ...], p: float, seed: int, offset: int = 0) -> dict[str, Any]:
    return {
        "kind": "mask",
        "group": "mask",
        "shape": list(shape),
        "p": p,
        "seed": seed,
        "offset": offset,
    }


def case_parameters() -> Iterator[dict[str, Any]]:
    """Every case, without its expected values."""
    for seed in SEEDS:
        for p in (0.1, 0.5, 0.9):
            yield _dropout("inverted", (8, 9), p, seed)
            yield _dropout("classic", (8, 9), p, seed, mode="classic")
    for odd_shape in ((), (1,), (3, 4, 5), (2, 1, 3, 1)):
        yield _dropout("inverted", odd_shape, 0.5, 7)
    for mode in ("inverted", "classic"):
        for p in (0.0, 0.3, 1.0):
            yield _dropout("eval", (5, 6), p, 3, mode=mode, training=False)
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        for p in (0.25, 0.5, 0.7, 0.999):
            if not (dtype == "float16" and p == 0.999):  # 1/(1-p) overflows float16: an error
                yield _dropout("dtypes", (40,), p, 11, dtype=dtype)
        yield _dropout("dtypes", (40,), 0.3, 11, dtype=dtype, mode="classic")
        yield _dropout("dtypes", (40,), 0.3, 11, dtype=dtype, mode="classic", training=False)
    for p in (0.0, 1.0, 1e-10, 2.0**-30, 1 - 1e-10, 1 - 2.0**-53, 0.5 + 2.0**-40):
        for mode in ("inverted", "classic"):
            yield _dropout("edge_p", (30,), p, 5, mode=mode, dtype="float64")
    # the edge rates in the narrow dtypes too, so that a backend without float64 (JAX without
    # x64) checks p == 0, p == 1 and tiny p; float16 cannot hold 1/(1 - p) for p near 1
    for dtype in ("float16", "bfloat16", "float32"):
        for p in (0.0, 1.0, 1e-10, 2.0**-30, 1 - 1e-10):
            if not (dtype == "float16" and p == 1 - 1e-10):
                for mode in ("inverted", "classic"):
                    yield _dropout("edge_p_narrow", (30,), p, 5, mode=mode, dtype=dtype)
    for noise_shape in ((4, 1, 5), (1, 6, 1), (5,), (None, 1, None), (1, 1, 1), (None, None, None)):
        yield _dropout("noise_shape", (4, 6, 5), 0.5, 13, noise_shape=list(noise_shape))
    for offset in (0, 7, 2**32 - 30, 2**40 + 3, 2**64 - 72):
        yield _dropout("offset", (72,), 0.5, 17, offset=offset)
        yield _mask((72,), 0.5, 17, offset)
    for empty_shape in ((0,), (3, 0), (0, 4)):
        yield _dropout("empty", empty_shape, 0.5, 19)
        yield _mask(empty_shape, 0.5, 19)
    for seed in SEEDS:
        for p in (0.05, 0.5, 0.95):
            yield _mask((1000,), p, seed)
    yield _mask((37, 29), 0.4, 23)
    yield _mask((2, 3, 4, 5), 0.6, 29, 2**33)
    for seed in SEEDS:
        for data in (0, 1, 2**31, 2**32 - 1):
            yield {"kind": "fold_in", "group": "fold_in", "seed": seed, "data": data}


# -- R-Dropout cases -------------------------------------------------------------------------------
RDROP_IGNORE_INDEX = -100


def _rdrop(kind: str, shape: tuple[int, ...], reduction: str, **options: Any) -> dict[str, Any]:
    case = {
        "kind": kind,
        "group": kind,
        "shape": list(shape),
        "axis": options.pop("axis", -1),
        "dtype": options.pop("dtype", "float32"),
        "reduction": reduction,
        "pad_every": options.pop("pad_every", None),
        "masked_classes": options.pop("masked_classes", []),
        "one_sided_classes": options.pop("one_sided_classes", []),
    }
    if kind == "rdrop_loss":
        case["alpha"] = options.pop("alpha", 1.0)
        case["ignore_every"] = options.pop("ignore_every", None)
        case["label_smoothing"] = options.pop("label_smoothing", 0.0)
    assert not options, options
    return case


def rdrop_case_parameters() -> Iterator[dict[str, Any]]:
    """The R-Dropout cases, without their expected values."""
    kl, loss = "rdrop_kl", "rdrop_loss"
    for reduction in ("sum", "mean", "batchmean", "none"):
        yield _rdrop(kl, (4, 5), reduction)
        yield _rdrop(kl, (3, 4, 6), reduction, pad_every=3)
        yield _rdrop(loss, (6, 4), reduction)
        yield _rdrop(loss, (2, 3, 5), reduction, pad_every=2, ignore_every=3)
    for dtype in ("float16", "bfloat16", "float64"):
        yield _rdrop(kl, (4, 5), "sum", dtype=dtype)
        yield _rdrop(kl, (4, 5), "none", dtype=dtype)
        yield _rdrop(loss, (6, 4), "mean", dtype=dtype, alpha=2.5, label_smoothing=0.1)
    for reduction in ("mean", "none"):
        yield _rdrop(kl, (2, 5, 3), reduction, axis=1, pad_every=2)
        yield _rdrop(kl, (6,), reduction)
        yield _rdrop(kl, (4, 6), reduction, masked_classes=[1, 3])
        yield _rdrop(loss, (2, 5, 3), reduction, axis=1, ignore_every=2)
        yield _rdrop(loss, (5, 6), reduction, masked_classes=[0, 4], alpha=3.0)
        yield _rdrop(loss, (6, 4), reduction, ignore_every=3, label_smoothing=0.2)
    yield _rdrop(kl, (3, 4), "none", one_sided_classes=[2])  # probability 0 in one pass: inf
    for alpha in (0.0, 0.5, 4.0):
        yield _rdrop(loss, (6, 4), "sum", alpha=alpha)
    for reduction in ("sum", "mean"):  # nothing to average: 0, not NaN
        yield _rdrop(kl, (3, 4), reduction, pad_every=1)
        yield _rdrop(kl, (0, 4), reduction)
        yield _rdrop(loss, (3, 4), reduction, ignore_every=1)


def rdrop_logits(case: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The two float64 logit arrays of a case: small multiples of 1/16, exact in every float dtype,
    the second a perturbation of the first; masked classes are ``-inf`` in both, one-sided ones in
    the second only."""
    shape = tuple(case["shape"])
    index = np.arange(math.prod(shape))
    logits1 = ((index * 29 + 5) % 47 - 23) / 8
    logits2 = logits1 + ((index * 13 + 3) % 9 - 4) / 16
    logits1, logits2 = logits1.reshape(shape), logits2.reshape(shape)
    for classes, arrays in ((case["masked_classes"], (logits1, logits2)),
                            (case["one_sided_classes"], (logits2,))):  # fmt: skip
        for array in arrays:
            np.moveaxis(array, case["axis"], -1)[..., classes] = -np.inf
    return logits1, logits2


def rdrop_positions(case: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The labels (int64) and the pad mask (True = padded) of a case, one per position.

    Labels avoid masked classes; every ``ignore_every``-th position is labelled
    ``RDROP_IGNORE_INDEX`` and every ``pad_every``-th is padded (1: all of them)."""
    shape = tuple(case["shape"])
    axis = case["axis"] % len(shape)
    positions = shape[:axis] + shape[axis + 1 :]
    index = np.arange(math.prod(positions))
    excluded = set(case["masked_classes"]) | set(case["one_sided_classes"])
    allowed = np.array([c for c in range(shape[axis]) if c not in excluded])
    labels = allowed[(index * 5 + 2) % len(allowed)]
    if case.get("ignore_every"):
        labels = np.where(index % case["ignore_every"] == case["ignore_every"] - 1,
                          RDROP_IGNORE_INDEX, labels)  # fmt: skip
    padded = np.zeros(index.shape, bool)
    if case["pad_every"]:
        padded = index % case["pad_every"] == case["pad_every"] - 1
    return labels.astype(np.int64).reshape(positions), padded.reshape(positions)


def _rdrop_expectations(case: dict[str, Any]) -> dict[str, Any]:
    logits1, logits2 = rdrop_logits(case)
    labels, padded = rdrop_positions(case)
    classes = logits1.shape[case["axis"]]
    rows1 = np.moveaxis(logits1, case["axis"], -1).reshape(-1, classes).tolist()
    rows2 = np.moveaxis(logits2, case["axis"], -1).reshape(-1, classes).tolist()
    batch = labels.shape[0] if labels.ndim else 1
    if case["kind"] == "rdrop_kl":
        value = reference.rdrop_kl(rows1, rows2, padded.ravel().tolist(), case["reduction"], batch)
    else:
        value = reference.rdrop_loss(
            rows1,
            rows2,
            labels.ravel().tolist(),
            padded.ravel().tolist(),
            alpha=case["alpha"],
            ignore_index=RDROP_IGNORE_INDEX if case["ignore_every"] else None,
            label_smoothing=case["label_smoothing"],
            reduction=case["reduction"],
            batch=batch,
        )
    values = value if isinstance(value, list) else [value]
    return {
        **case,
        "result_dtype": "float64" if case["dtype"] == "float64" else "float32",
        "result_shape": list(labels.shape) if case["reduction"] == "none" else [],
        "expected": [float(v).hex() for v in values],
    }


def _with_expectations(case: dict[str, Any]) -> dict[str, Any]:
    if case["kind"] in ("rdrop_kl", "rdrop_loss"):
        return _rdrop_expectations(case)
    if case["kind"] == "fold_in":
        return {**case, "expected": reference.fold_in(case["seed"], case["data"])}
    count = math.prod(case["shape"])
    if case["kind"] == "mask":
        keep = reference.keep_mask(case["seed"], case["p"], count, case["offset"])
        return {**case, "keep": pack_bits(keep)}
    outputs, keep = reference.dropout(
        input_values(count),
        case["shape"],
        case["p"],
        case["seed"],
        dtype=case["dtype"],
        mode=case["mode"],
        training=case["training"],
        noise_shape=case["noise_shape"],
        offset=case["offset"],
    )
    return {**case, "y": [value.hex() for value in outputs], "keep": pack_bits(keep)}


def _case_id(case: dict[str, Any]) -> str:
    if case["kind"] == "fold_in":
        return f"fold_in/seed={case['seed']}/data={case['data']}"
    if case["kind"] in ("rdrop_kl", "rdrop_loss"):
        parts = [case["kind"], "x".join(map(str, case["shape"])), case["reduction"]]
        for option, default in (("axis", -1), ("dtype", "float32"), ("pad_every", None),
                                ("masked_classes", []), ("one_sided_classes", []), ("alpha", 1.0),
                                ("ignore_every", None), ("label_smoothing", 0.0)):  # fmt: skip
            if case.get(option, default) != default:
                parts.append(f"{option}={case[option]}")
        return "/".join(str(part) for part in parts)
    parts = [case["group"], "x".join(map(str, case["shape"])) or "scalar", f"p={case['p']!r}"]
    parts.append(f"seed={case['seed']}")
    for option, default in (("dtype", "float32"), ("mode", "inverted"), ("training", True),
                            ("noise_shape", None), ("offset", 0)):  # fmt: skip
        if case.get(option, default) != default:
            parts.append(f"{option}={case[option]}")
    return "/".join(str(part) for part in parts)


def generate() -> dict[str, Any]:
    """The golden document, computed from the reference now."""
    parameters = [*case_parameters(), *rdrop_case_parameters()]
    cases = [{"id": _case_id(case), **_with_expectations(case)} for case in parameters]
    ids = [case["id"] for case in cases]
    assert len(set(ids)) == len(ids), "case ids must be unique"
    return {
        "stream": STREAM_VERSION,
        "input_pattern": [value.hex() for value in INPUT_PATTERN],
        "cases": cases,
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1) + "\n"


def load() -> dict[str, Any]:
    """The golden document shipped with the package."""
    document: dict[str, Any] = json.loads(GOLDEN_PATH.read_text())
    return document


def pack_bits(bits: list[bool]) -> str:
    """Booleans as hex, eight to a byte, most significant bit first (``numpy.packbits``)."""
    padded = bits + [False] * (-len(bits) % 8)
    return bytes(
        sum(bit << (7 - j) for j, bit in enumerate(padded[i : i + 8]))
        for i in range(0, len(padded), 8)
    ).hex()
