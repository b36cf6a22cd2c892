"""xdrop.layers.torch.convert: a model written with torch's own dropout (modules, functional calls,
attention with dropout) made to draw every mask from xdrop, on streams named after each site, kept
in state_dict, never touching torch's global generator."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import xdrop  # noqa: E402
from xdrop.layers import common  # noqa: E402
from xdrop.layers import torch as layers  # noqa: E402
from xdrop.layers.torch import convert, set_mc_sampling  # noqa: E402
from xdrop.layers.torch_functional import attention  # noqa: E402

pytestmark = pytest.mark.backend_independent
ROOT = Path(__file__).resolve().parents[1]


# -- models written as other people write them -----------------------------------------------------
class SelfAttention(nn.Module):
    """Attention as Hugging Face's eager and sdpa paths write it: F.dropout on the probabilities,
    or SDPA given dropout_p, then a dropout module on the output."""

    def __init__(self, width: int = 16, heads: int = 2, sdpa: bool = False) -> None:
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(0.1)
        self.attention_dropout = 0.25

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        rate = self.attention_dropout if self.training else 0.0
        if self.sdpa:
            h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=rate)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
            if mask is not None:
                scores = scores + mask
            probs = F.dropout(scores.softmax(-1), p=rate, training=self.training)
            h = probs @ v
        return self.dropout(self.out(h.transpose(1, 2).reshape(n, length, width)))


class Block(nn.Module):
    def __init__(self, sdpa: bool = False) -> None:
        super().__init__()
        self.attention = SelfAttention(sdpa=sdpa)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(x)
        return x + F.dropout(self.mlp(x), 0.1, self.training)


class Encoder(nn.Module):
    def __init__(self, sdpa: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(sdpa), Block(sdpa)])
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(torch.dropout(x.mean(1), 0.3, self.training))


def _encoder(sdpa: bool = False, seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(sdpa)


def _inputs() -> torch.Tensor:
    return torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))


def _site(seed: int, name: str, step: int) -> torch.Tensor:
    """A functional site's seed by the documented formula, from host integers."""
    return torch.tensor(common.signed(xdrop.fold_in(common.site_seed(seed, name), step), 64))


# -- modules --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("original", "expected"),
    [
        (nn.Dropout(0.3, inplace=True), layers.Dropout),
        (nn.Dropout1d(0.2), layers.Dropout1d),
        (nn.Dropout2d(0.4, inplace=True), layers.Dropout2d),
        (nn.Dropout3d(0.5), layers.Dropout3d),
        (nn.AlphaDropout(0.1), layers.AlphaDropout),
        (nn.FeatureAlphaDropout(0.2, inplace=True), layers.FeatureAlphaDropout),
    ],
)
def test_each_torch_dropout_module_becomes_the_xdrop_layer_of_the_same_arguments(
    original, expected
):
    model = nn.Sequential(nn.Identity(), original).eval()
    convert(model, seed=5)
    layer = model[1]
    assert type(layer) is expected
    assert (layer.p, layer.inplace, layer.training) == (original.p, original.inplace, False)
    assert int(layer.seed) % 2**64 == common.site_seed(5, "1")


def test_module_streams_depend_on_names_not_on_the_order_modules_were_created_in():
    class Forward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Dropout(0.5)
            self.b = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([self.a(x), self.b(x)])

    class Backward(Forward):
        def __init__(self) -> None:
            nn.Module.__init__(self)
            self.b = nn.Dropout(0.5)
            self.a = nn.Dropout(0.5)

    first, second = convert(Forward(), seed=3), convert(Backward(), seed=3)
    assert [name for name, _ in second.named_children()] == ["b", "a"]
    for name in ("a", "b"):
        assert int(getattr(first, name).seed) == int(getattr(second, name).seed)
        assert int(getattr(first, name).seed) % 2**64 == common.site_seed(3, name)
    y = first(torch.ones(64))
    assert torch.equal(y, second(torch.ones(64)))
    assert not torch.equal(y[0], y[1])


def test_a_module_registered_under_two_names_stays_one_layer_named_after_its_first_name():
    shared = nn.Dropout(0.5)
    model = nn.Module()
    model.first = shared
    model.inner = nn.Sequential(nn.Identity(), shared)
    convert(model, seed=1)
    assert model.first is model.inner[1]
    assert isinstance(model.first, layers.Dropout)
    assert int(model.first.seed) % 2**64 == common.site_seed(1, "first")


def test_rename_maps_site_names_before_their_seeds_are_derived():
    model = convert(nn.Sequential(nn.Dropout(0.5)), seed=2, rename=lambda n: f"encoder/{n}")
    assert int(model[0].seed) % 2**64 == common.site_seed(2, "encoder/0")


# -- functional sites -----------------------------------------------------------------------------
def test_functional_calls_draw_the_documented_stream_of_their_module_and_index():
    model = convert(_encoder(), seed=11)
    x = _inputs()
    for step in range(2):
        expected = _by_hand(model, x, seed=11, step=step)
        assert torch.equal(model(x), expected)
        assert int(model.xdrop_step) == step + 1


def _by_hand(model: Encoder, x: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """The converted encoder's training forward, written out with xdrop.dropout and the
    documented site seeds (module layers at their own step ``step``)."""

    def layer(module: layers.Dropout, h: torch.Tensor) -> torch.Tensor:
        return xdrop.dropout(h, module.p, seed=xdrop.fold_in(int(module.seed) % 2**64, step))

    for index, block in enumerate(model.layers):
        a = block.attention
        n, length, width = x.shape
        q, k, v = a.qkv(x).view(n, length, 3, a.heads, -1).permute(2, 0, 3, 1, 4)
        probs = (q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))).softmax(-1)
        site = _site(seed, f"layers.{index}.attention#0", step)
        h = xdrop.dropout(probs, 0.25, seed=site) @ v
        x = x + layer(a.dropout, a.out(h.transpose(1, 2).reshape(n, length, width)))
        mlp = block.mlp
        hidden = mlp[3](layer(mlp[2], mlp[1](mlp[0](x))))
        x = x + xdrop.dropout(hidden, 0.1, seed=_site(seed, f"layers.{index}#0", step))
    pooled = xdrop.dropout(x.mean(1), 0.3, seed=_site(seed, "#0", step))
    return model.head(pooled)


@pytest.mark.parametrize("step", [2**32 - 1, 2**32 + 5, 2**63 - 1])
def test_functional_sites_follow_step_seed_past_two_to_the_32_steps(step):
    class Calls(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.dropout(x, 0.5)

    model = convert(Calls(), seed=5)
    model.xdrop_step.fill_(step)
    x = torch.ones(64)
    site = torch.tensor(common.signed(common.site_seed(5, "#0"), 64))
    expected = xdrop.dropout(x, 0.5, seed=common.step_seed(site, torch.tensor(step)))
    assert torch.equal(model(x), expected)
    assert int(model.xdrop_step) == common.signed((step + 1) % 2**64, 64)


def test_each_call_of_one_module_takes_the_next_index_also_when_the_module_is_called_twice():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.dropout(x, 0.5) + 10 * F.dropout(x, 0.5)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.twice = Twice()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([self.twice(x), self.twice(x)])

    model = convert(Outer(), seed=4)
    x = torch.ones(32)
    expected = torch.stack(
        [
            xdrop.dropout(x, 0.5, seed=_site(4, f"twice#{2 * call}", 0))
            + 10 * xdrop.dropout(x, 0.5, seed=_site(4, f"twice#{2 * call + 1}", 0))
            for call in range(2)
        ]
    )
    assert torch.equal(model(x), expected)


@pytest.mark.parametrize(
    ("function", "noise"),
    [
        (lambda x: F.dropout(x, 0.5, True, inplace=True), None),
        (lambda x: torch.dropout_(x, 0.5, True), None),
        (lambda x: F.dropout2d(x, 0.5), (None, None, 1, 1)),
        (lambda x: torch.feature_dropout(x, 0.5, True), (None, None, 1, 1)),
        (lambda x: F.dropout1d(x.flatten(2), 0.5).view_as(x), (None, None, 1, 1)),
        (lambda x: F.dropout3d(x[None], 0.5)[0], (None, 1, 1, 1)),
        (lambda x: torch.native_dropout(x, 0.5, True)[0], None),
    ],
)
def test_the_torch_dropout_family_is_computed_by_xdrop_with_torchs_decision_shapes(function, noise):
    class Calls(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return function(x.clone())

    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = convert(Calls(), seed=9)(x)
    expected = xdrop.dropout(x, 0.5, seed=_site(9, "#0", 0), noise_shape=noise)
    assert torch.equal(y, expected)


def test_alpha_dropout_functions_are_computed_by_xdrop_alpha_dropout():
    class Calls(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack(
                [F.alpha_dropout(x, 0.2, True), F.feature_alpha_dropout(x, 0.2, True)]
            )

    x = torch.randn(2, 3, 4)
    y = convert(Calls(), seed=9)(x)
    first = xdrop.alpha_dropout(x, 0.2, seed=_site(9, "#0", 0))
    second = xdrop.alpha_dropout(x, 0.2, seed=_site(9, "#1", 0), noise_shape=(None, None, 1))
    assert torch.equal(y, torch.stack([first, second]))


# -- attention ------------------------------------------------------------------------------------
def _qkv(heads: int = 4, kv_heads: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, heads, 5, 8, generator=g)
    k = torch.randn(2, kv_heads, 7, 8, generator=g)
    v = torch.randn(2, kv_heads, 7, 8, generator=g)
    return q, k, v


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"is_causal": True},
        {"scale": 0.3},
        {"attn_mask": torch.rand(5, 7) > 0.3},
        {"attn_mask": torch.randn(2, 1, 5, 7)},
        {"enable_gqa": True},
    ],
    ids=["plain", "causal", "scale", "bool-mask", "float-mask", "gqa"],
)
def test_explicit_attention_equals_sdpa_without_dropout(options):
    q, k, v = _qkv(kv_heads=2 if options.get("enable_gqa") else 4)
    expected = F.scaled_dot_product_attention(q, k, v, **options)
    got = attention(
        q,
        k,
        v,
        options.get("attn_mask"),
        0.0,
        options.get("is_causal", False),
        options.get("scale"),
        options.get("enable_gqa", False),
        seed=0,
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_rows_masked_whole_by_a_float_mask_give_zeros_and_finite_gradients_as_sdpa():
    # a causal mask and left padding, as nn.MultiheadAttention makes them: -inf floats
    q, k, v = (t.requires_grad_() for t in _qkv(kv_heads=4))
    mask = torch.zeros(5, 7).masked_fill(torch.ones(5, 7, dtype=torch.bool).triu(1), -math.inf)
    mask = mask.masked_fill(torch.arange(7) < 3, -math.inf)  # rows 0-2 see nothing
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = attention(q, k, v, mask, 0.0, False, None, False, seed=0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (got[..., :3, :] == 0).all()
    dropped = attention(q, k, v, mask, 0.3, False, None, False, seed=0)
    gradients = torch.autograd.grad(dropped[..., 3:, :].sum(), (q, k, v))
    assert all(torch.isfinite(gradient).all() for gradient in gradients)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_attention_computes_in_float32_as_torchs_math_attention(dtype):
    # q . q over 64 features of about 35 would pass float16's 65504 before the scale
    g = torch.Generator().manual_seed(3)
    q, v = (
        (35 * torch.randn(2, 2, 6, 64, generator=g)).to(dtype),
        torch.randn(2, 2, 6, 64).to(dtype),
    )
    k = q
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        expected = F.scaled_dot_product_attention(q, k, v)
    got = attention(q, k, v, None, 0.0, False, None, False, seed=0)
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_under_autocast_is_torchs_in_the_autocast_dtype(dtype):
    # float32 inputs whose q . q passes float16's 65504: autocast casts them, the product is
    # still formed in float32, and the output has autocast's dtype, as torch's attention's
    g = torch.Generator().manual_seed(3)
    q, v = 35 * torch.randn(2, 2, 6, 64, generator=g), torch.randn(2, 2, 6, 64, generator=g)
    mask = torch.randn(6, 6, generator=g)
    with torch.autocast("cpu", dtype=dtype):
        expected = F.scaled_dot_product_attention(q, q, v.to(dtype), attn_mask=mask)
        got = attention(q, q, v.to(dtype), mask, 0.0, False, None, False, seed=0)
        assert torch.is_autocast_enabled("cpu")  # left as it was
    assert got.dtype == expected.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected)


def test_sdpa_with_dropout_applies_xdrop_dropout_to_the_attention_probabilities():
    class Attend(nn.Module):
        def forward(self, q, k, v, mask):  # type: ignore[no-untyped-def]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.4)

    q, k, v = _qkv()
    mask = torch.randn(5, 7)
    y = convert(Attend(), seed=6)(q, k, v, mask)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8) + mask, -1)
    expected = xdrop.dropout(probs, 0.4, seed=_site(6, "#0", 0)) @ v
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)


def test_sdpa_arguments_sdpa_refuses_are_refused_as_sdpa_refuses_them():
    class Attend(nn.Module):
        def forward(self, q, k, v):  # type: ignore[no-untyped-def]
            mask = torch.ones(5, 7, dtype=torch.bool)
            return F.scaled_dot_product_attention(q, k, v, mask, 0.1, is_causal=True)

    with pytest.raises(RuntimeError, match="attn_mask"):
        convert(Attend(), seed=0)(*_qkv())


def test_sdpa_without_dropout_is_sdpa_itself():
    model = convert(_encoder(sdpa=True), seed=0).eval()
    reference = _encoder(sdpa=True).eval()
    x = _inputs()
    assert torch.equal(model(x), reference(x))


class Attention(nn.Module):
    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(16, 2, dropout=0.3, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=self.need_weights)[0]


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_drops_its_probabilities_with_xdrop(need_weights):
    model = convert(Attention(need_weights), seed=1)
    x = _inputs()
    state = torch.get_rng_state()
    y = model(x)
    assert torch.equal(torch.get_rng_state(), state)
    attn = model.attn
    n, length, width = x.shape
    q, k, v = (
        h.view(n, length, 2, -1).transpose(1, 2)
        for h in F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    )
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // 2), -1)
    h = xdrop.dropout(probs, 0.3, seed=_site(1, "attn#0", 0)) @ v
    expected = attn.out_proj(h.transpose(1, 2).reshape(n, length, width))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    reference = Attention(need_weights).eval()  # the same weights; torch's eval fast path
    torch.testing.assert_close(model.eval()(x), reference(x), rtol=1e-5, atol=1e-6)


# -- state, resumption, global generator ------------------------------------------------------------
def test_seed_and_step_live_in_state_dict_and_load_into_a_model_converted_with_another_seed():
    x = _inputs()
    trained = convert(_encoder(), seed=1)
    trained(x)
    other = convert(_encoder(), seed=2)
    other.load_state_dict(trained.state_dict())
    assert {"xdrop_seed", "xdrop_step", "layers.0.mlp.2.seed", "layers.0.mlp.2.step"} <= set(
        trained.state_dict()
    )
    assert torch.equal(other(x), trained(x))


def test_a_checkpoint_saved_before_conversion_loads_non_strictly_missing_the_streams_alone():
    old = _encoder(seed=5).state_dict()  # an nn.Dropout's module holds nothing to save
    model = convert(_encoder(seed=6), seed=3)
    fresh = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(old)
    missing = model.load_state_dict(old, strict=False).missing_keys
    streams = {
        f"{name}.{buffer}"
        for name, module in model.named_modules()
        if isinstance(module, layers.Dropout)
        for buffer in ("seed", "step")
    }
    assert "layers.0.mlp.2.seed" in streams
    assert set(missing) == {"xdrop_seed", "xdrop_step"} | streams
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in old.items())
    assert all(torch.equal(loaded[name], fresh[name]) for name in missing)  # convert's streams


def test_a_model_whose_stream_module_type_cast_to_float_is_refused_naming_the_buffer():
    model = convert(_encoder(), seed=2**40 + 3)
    model.type(torch.float32)  # every buffer, xdrop_seed and xdrop_step too
    with pytest.raises(xdrop.ArgumentTypeError, match="xdrop_seed buffer must be an int64"):
        model(_inputs())
    assert convert(_encoder(), seed=3).to(torch.float64).xdrop_seed.dtype == torch.int64
    # the refused forward entered nothing: the model's next forward is a forward of its own
    model.xdrop_seed = torch.tensor(common.signed(2**40 + 3, 64))
    model.xdrop_step = torch.tensor(0)
    reference = convert(_encoder(), seed=2**40 + 3)
    model.load_state_dict(reference.state_dict())
    assert torch.equal(model(_inputs()), reference(_inputs()))
    assert int(model.xdrop_step) == 1


def _train(model: nn.Module, steps: int, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(_inputs()).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def test_a_converted_model_saved_whole_loads_and_goes_on_drawing_its_streams(tmp_path):
    model = convert(_encoder(), seed=1)
    x = _inputs()
    model(x)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert torch.equal(loaded(x), model(x))
    assert int(loaded.xdrop_step) == 2


_RESUME = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_convert_torch import _encoder, _train
from xdrop.layers.torch import convert

model = convert(_encoder(sdpa=True, seed=1), seed=99)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
state = torch.load(sys.argv[1])
model.load_state_dict(state["model"])
optimizer.load_state_dict(state["optimizer"])
torch.save(_train(model, 3, optimizer), sys.argv[1] + ".resumed")
"""


def test_a_converted_model_pickled_before_its_exit_hooks_kept_names_runs(tmp_path):
    from xdrop.layers.torch_functional import ExitModule

    model = convert(Dropping(), seed=3)
    reference = copy.deepcopy(model)
    for hook in model._forward_hooks.values():
        if isinstance(hook, ExitModule):
            del hook.name  # as pickled by the release before
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    x = torch.ones(64)
    assert [torch.equal(loaded(x), reference(x)) for _ in range(2)] == [True, True]


def test_a_checkpoint_resumes_every_stream_bit_identically_in_a_fresh_process(tmp_path):
    model = convert(_encoder(sdpa=True), seed=7)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _train(model, 2, optimizer)
    checkpoint = str(tmp_path / "state.pt")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
    straight = _train(model, 3, optimizer)
    script = tmp_path / "resume.py"
    script.write_text(_RESUME.format(tests=str(ROOT / "tests")))
    subprocess.run([sys.executable, str(script), checkpoint], check=True, cwd=ROOT)
    resumed = torch.load(checkpoint + ".resumed")
    assert torch.equal(straight, resumed)


@pytest.mark.parametrize("sdpa", [False, True], ids=["eager-attention", "sdpa"])
def test_a_training_step_leaves_torchs_global_generator_untouched(sdpa):
    model = convert(_encoder(sdpa), seed=0)
    optimizer = torch.optim.Adam(model.parameters())
    state = torch.get_rng_state()
    loss = model(_inputs()).square().mean()
    loss.backward()
    optimizer.step()
    assert torch.equal(torch.get_rng_state(), state)


def test_eval_computes_what_torch_computes_and_draws_nothing():
    model = convert(_encoder(), seed=0).eval()
    reference = _encoder().eval()
    state = torch.get_rng_state()
    x = _inputs()
    assert torch.equal(model(x), reference(x))
    assert int(model.xdrop_step) == 0
    assert torch.equal(torch.get_rng_state(), state)


# -- compilers ------------------------------------------------------------------------------------
def _small() -> nn.Module:
    """One attention layer: a dropout module, F.dropout, and SDPA with dropout."""
    torch.manual_seed(0)
    return nn.Sequential(SelfAttention(sdpa=True), Pooled())


class Pooled(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x.mean(1), 0.3, self.training)


def _renamed(name: str) -> str:
    return "model/" + name.replace(".", "/")


def test_torch_compile_fullgraph_equals_eager_step_for_step_compiling_once():
    import torch._dynamo.testing

    torch._dynamo.reset()
    eager = convert(_small(), seed=3, rename=_renamed)
    compiled_model = copy.deepcopy(eager)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_model, fullgraph=True, backend=counter)
    x = _inputs()
    for _ in range(3):
        assert torch.equal(compiled(x), eager(x))
    assert counter.frame_count == 1
    assert int(compiled_model.xdrop_step) == int(eager.xdrop_step) == 3
    fresh = convert(_small(), seed=4, rename=_renamed)
    compiled_model.load_state_dict(fresh.state_dict())  # the graph reads the new buffers
    assert torch.equal(compiled(x), fresh(x))


@pytest.mark.parametrize("compiled_part", ["each block", "the forward"])
def test_compiling_part_of_a_converted_model_equals_eager_compiling_once(compiled_part: str):
    """Blocks compiled one by one (``block.compile()``, as torchtitan compiles them) and a
    compiled ``model.forward`` run under the hooks the eager root enters: the step is read in
    the graph, not guarded on, so a new step is no new graph."""
    import torch._dynamo.testing

    torch._dynamo.reset()
    eager = convert(_encoder(), seed=3)
    model = copy.deepcopy(eager)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    if compiled_part == "each block":
        for block in model.layers:
            block.compile(backend=counter, fullgraph=True)
    else:
        model.forward = torch.compile(model.forward, backend=counter, fullgraph=True)
    x = _inputs()
    assert torch.equal(model(x), eager(x))
    graphs = counter.frame_count  # the first step's (a block's input may require grad or not)
    for _ in range(3):
        assert torch.equal(model(x), eager(x))
    assert counter.frame_count == graphs
    assert int(model.xdrop_step) == int(eager.xdrop_step) == 4


def test_torch_compile_of_a_model_with_dropout_modules_equals_eager_on_any_thread():
    """The layers convert put in check at each call that the model's forward is running: state
    of each thread, which a full graph reads anew at every call, on any thread."""
    torch._dynamo.reset()
    eager = convert(_encoder(), seed=3)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = _inputs()
    assert torch.equal(compiled(x), eager(x))
    outputs: list[torch.Tensor] = []
    thread = threading.Thread(target=lambda: outputs.append(compiled(x)))
    thread.start()
    thread.join()
    assert torch.equal(outputs[0], eager(x))
    assert int(compiled_model.xdrop_step) == int(eager.xdrop_step) == 2


def test_torch_compile_of_torchs_transformer_layer_with_a_padding_mask_in_one_graph():
    """``nn.TransformerEncoderLayer`` called as padded batches call it: its attention runs
    torch's own function body, whose padding-mask check Dynamo traces too."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    eager = convert(layer, seed=3)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = _inputs()
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    for _ in range(2):
        expected = eager(x, src_key_padding_mask=padding)
        assert torch.equal(compiled(x, src_key_padding_mask=padding), expected)
    with pytest.raises(AssertionError, match="key_padding_mask"):
        eager(x, src_key_padding_mask=padding[:, :4])  # torch's check, as without convert


def test_a_converted_encoder_in_eval_mode_runs_torchs_general_path_padded_positions_too():
    """In eval mode torch's nested-tensor fast path writes zeros at padded positions; the
    converted encoder runs the general path (a torch-function mode is active), which computes
    them as torch does without nested tensors: the kept positions agree either way."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    general = copy.deepcopy(encoder)
    general.use_nested_tensor = False  # torch's own switch for the nested-tensor path
    converted = convert(copy.deepcopy(encoder), seed=1).eval()
    x = _inputs()
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        fast, y = (
            encoder(x, src_key_padding_mask=padding),
            converted(x, src_key_padding_mask=padding),
        )
        expected = general(x, src_key_padding_mask=padding)
    assert torch.count_nonzero(fast[1, 3:]) == 0 and torch.count_nonzero(y[1, 3:]) > 0
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y[~padding], fast[~padding], rtol=1e-5, atol=1e-6)


def test_torch_export_keeps_the_streams_and_advances_the_step():
    model = convert(_small(), seed=3)
    reference = copy.deepcopy(model)
    x = _inputs()
    exported = torch.export.export(model, (x,)).module()
    for _ in range(2):
        assert torch.equal(exported(x), reference(x))
    assert int(exported.xdrop_step) == 2


def test_torch_jit_trace_records_the_streams_step_for_step():
    # the site seeds come from the step buffer in the recorded graph, not from a host copy
    model = convert(_small(), seed=3)
    reference = copy.deepcopy(model)
    x = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's TracerWarnings
        traced = torch.jit.trace(model, (x,), check_trace=False)  # runs step 0 once
    reference(x)
    for _ in range(3):
        assert torch.equal(traced(x), reference(x))
    assert int(model.xdrop_step) == int(reference.xdrop_step) == 4


def test_an_ensemble_of_converted_models_under_vmap_draws_each_models_masks():
    """``torch.func``'s model ensembling: the models' states stacked, one ``functional_call``
    vmapped over them; each model draws what it draws alone (its seed, step and sites)."""
    from torch.func import functional_call, stack_module_state, vmap

    models = [convert(_encoder(sdpa=True), seed=seed) for seed in (1, 2, 3)]
    parameters, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = _inputs()

    def call(parameters, buffers, x):
        return functional_call(base, (parameters, buffers), (x,))

    outputs = vmap(call, in_dims=(0, 0, None), randomness="different")(parameters, buffers, x)
    assert torch.equal(buffers["xdrop_step"], torch.ones(3, dtype=torch.int64))
    for output, model in zip(outputs, models, strict=True):
        # batched matrix products may round in another order (an ulp); another mask would move
        # values by whole units
        torch.testing.assert_close(output, model(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(outputs[0], outputs[1], rtol=1e-2, atol=1e-2)


# -- what is not converted ------------------------------------------------------------------------
class TokenDropout(nn.Module):
    """A dropout module convert does not know: its mask would come from torch's generator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (torch.rand_like(x[..., :1]) > 0.1)


class Dropped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens = TokenDropout()
        self.attention = nn.MultiheadAttention(16, 2, dropout=0.1)
        self.scale = ScaledDrop()


class ScaledDrop(nn.Module):
    """Not named like dropout, but holding timm's float ``drop_prob``."""

    drop_prob = 0.1


def test_unknown_dropout_like_modules_are_left_alone_with_one_warning_naming_each():
    with pytest.warns(xdrop.UnconvertedDropoutWarning) as caught:
        model = convert(Dropped(), seed=0)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "tokens (TokenDropout)" in message and "scale (ScaledDrop)" in message
    assert "attention" not in message  # its dropout is routed through xdrop
    assert type(model.tokens) is TokenDropout


def test_strict_refuses_unknown_dropout_like_modules_naming_each():
    with pytest.raises(xdrop.UnconvertedDropoutError, match=r"tokens \(TokenDropout\)"):
        convert(Dropped(), seed=0, strict=True)


def test_strict_refuses_before_changing_the_model():
    """Converted again once mended, every stream derives from the seed given then."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), TokenDropout())
    generator = xdrop.Generator(3)
    with pytest.raises(xdrop.UnconvertedDropoutError, match=r"2 \(TokenDropout\)"):
        convert(model, seed=generator, strict=True)
    assert type(model[1]) is nn.Dropout and "xdrop_seed" not in model.state_dict()
    assert generator.next_seed() == xdrop.Generator(3).next_seed()  # no seed was taken
    model[2] = nn.Identity()
    convert(model, seed=2, strict=True)
    assert int(model[1].seed) % 2**64 == common.site_seed(2, "1")


def test_a_model_on_the_meta_device_is_refused_saying_to_materialize_it_first():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    with pytest.raises(xdrop.ArgumentValueError, match=r"materialize the model first"):
        convert(model, seed=0)
    assert type(model[1]) is nn.Dropout
    model.to_empty(device="cpu")
    convert(model, seed=5)
    assert int(model[1].seed) % 2**64 == common.site_seed(5, "1")


def test_a_converted_model_computes_shapes_alone_on_the_meta_device_and_under_fake_tensors():
    # nothing to read back there: the sites' seeds are computed from the buffers
    from torch._subclasses.fake_tensor import FakeTensorMode

    for training in (True, False):
        model = convert(_encoder(sdpa=True), seed=1).train(training)
        expected = model(_inputs()).shape
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            assert model(mode.from_tensor(_inputs())).shape == expected
        assert model.to("meta")(_inputs().to("meta")).shape == expected


def test_a_compiled_model_is_refused_saying_to_convert_it_first():
    compiled = torch.compile(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)))
    in_place = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    in_place.compile()
    for model, dropout in ((compiled, compiled._orig_mod[1]), (in_place, in_place[1])):
        with pytest.raises(xdrop.ArgumentValueError, match=r"convert it first, then compile it"):
            convert(model, seed=0)
        assert type(dropout) is nn.Dropout


def test_a_subclass_of_a_known_dropout_is_unknown():
    class Mine(nn.Dropout):
        pass

    with pytest.raises(xdrop.UnconvertedDropoutError, match=r"0 \(Mine\)"):
        convert(nn.Sequential(Mine()), seed=0, strict=True)


def test_a_submodule_drawing_outside_the_models_forward_is_refused():
    model = convert(_encoder(), seed=0)
    with pytest.raises(xdrop.UnconvertedDropoutError, match=r"'layers\.0\.attention'"):
        model.layers[0](_inputs())
    model.eval()
    model.layers[0](_inputs())  # nothing drawn: torch's answer
    assert torch.equal(model.layers[0](_inputs()), model.layers[0](_inputs()))


def test_a_converted_layer_drawing_outside_the_models_forward_is_refused():
    model = convert(_encoder(), seed=0)
    layer = model.layers[0].mlp[2]
    with pytest.raises(xdrop.UnconvertedDropoutError, match=r"'layers\.0\.mlp\.2'"):
        layer(torch.ones(4))
    assert int(layer.step) == 0
    layer.eval()
    assert torch.equal(layer(torch.ones(4)), torch.ones(4))
    # in eval mode, Monte Carlo sampling draws: the message names the switch that stops it
    set_mc_sampling(model.eval())
    with pytest.raises(xdrop.UnconvertedDropoutError, match=r"set_mc_sampling\(model, False\)"):
        layer(torch.ones(4))


class TrainedCopy(nn.Module):
    """A block and a deep copy of it that runs instead, as PEFT's ``modules_to_save`` wraps a
    head or a layer it trains in full."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.original, self.trained = block, copy.deepcopy(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trained(x)


def test_a_submodule_copied_alone_is_its_own_until_the_model_running_it_is_converted():
    # a copy is independent of the model it came from: run inside that model, it has no site
    # there until converting the model again gives it the sites of its own names
    model = convert(_encoder(), seed=0)
    model.layers[1] = TrainedCopy(model.layers[1])
    with pytest.raises(xdrop.UnconvertedDropoutError, match=r"copy\.deepcopy.*modules_to_save"):
        model(_inputs())
    model.eval()
    model(_inputs())  # nothing drawn: it runs
    model.train()
    convert(model, seed=None)
    step = int(model.xdrop_step)
    first, second = model(_inputs()), model(_inputs())
    assert not torch.equal(first, second)
    assert int(model.xdrop_step) == step + 2


def test_copies_made_in_one_deepcopy_share_the_copied_models_streams():
    model = convert(_encoder(), seed=0)
    block, whole = copy.deepcopy([model.layers[1], model])
    assert block is whole.layers[1]
    assert torch.equal(whole(_inputs()), model(_inputs()))  # the same streams, advancing apart
    assert int(whole.xdrop_step) == int(model.xdrop_step) == 1


class Adapted(nn.Module):
    """A wrapper that reads the attributes it lacks from the model it wraps, as PEFT's
    ``PeftModel`` does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


def test_a_wrapper_converted_around_a_converted_model_is_a_root_with_a_stream_of_its_own():
    inner = convert(_encoder(), seed=0)
    alone = copy.deepcopy(inner)
    wrapper = convert(Adapted(inner), seed=1)
    assert {"xdrop_seed", "xdrop_step"} <= set(dict(wrapper.named_buffers(recurse=False)))
    assert torch.equal(wrapper(_inputs()), alone(_inputs()))  # the inner model's sites draw
    assert int(wrapper.xdrop_step) == int(inner.xdrop_step) == 1  # one step each per forward


@pytest.mark.parametrize("first", ["the block", "the model"])
def test_a_block_converted_on_its_own_runs_alone_whichever_was_converted_first(first: str):
    """An encoder converted on its own, then put in a model converted in turn (or the other
    way round): called alone its functional sites draw on its own streams. Its dropout modules
    became layers at the first conversion, which a second leaves as they are."""
    block = Block()
    alone = convert(copy.deepcopy(block), seed=1)  # the same block, converted by itself
    model = nn.Sequential(block, nn.Linear(16, 16))
    if first == "the block":
        convert(model[0], seed=1)
        convert(model, seed=0)
    else:
        convert(model, seed=0)
        convert(model[0], seed=1)
        for name, layer in model[0].named_modules():  # the layers the model's convert made
            if isinstance(layer, layers.Dropout):
                alone.get_submodule(name).load_state_dict(layer.state_dict())
    assert torch.equal(model[0](_inputs()), alone(_inputs()))
    assert int(model[0].xdrop_step) == 1
    model(_inputs())
    assert int(model[0].xdrop_step) == 2 and int(model.xdrop_step) == 1


def test_a_submodule_called_in_the_forward_of_a_model_that_does_not_hold_it_is_refused():
    """Another converted model's forward names only its own modules' sites."""
    other = convert(_encoder(), seed=0)

    class Borrower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(16, 16)
            self.borrowed = [other.layers[0]]  # not a submodule: convert does not see it

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.borrowed[0](self.linear(x))

    borrower = convert(Borrower(), seed=1)
    with pytest.raises(xdrop.UnconvertedDropoutError, match=r"'layers\.0\.attention'"):
        borrower(_inputs())


def test_a_converted_model_holds_the_hooks_of_the_modules_it_replaced():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    seen: list[str] = []
    model[1].register_forward_pre_hook(lambda module, args: seen.append("pre"))
    handle = model[1].register_forward_hook(lambda module, args, out: seen.append("post"))
    model[1].register_full_backward_hook(lambda module, grad_in, grad_out: seen.append("back"))
    convert(model, seed=0)
    assert isinstance(model[1], layers.Dropout)
    model(torch.ones(2, 8, requires_grad=True)).sum().backward()
    assert seen == ["pre", "post", "back"]
    handle.remove()
    seen.clear()
    model(torch.ones(2, 8))
    assert seen == ["pre"]


def test_a_dropout_module_also_in_a_model_not_converted_keeps_running_there():
    """The replaced module keeps its own hooks, not those convert puts on the new layer."""
    dropout = nn.Dropout(0.5)
    converted = convert(nn.Sequential(nn.Linear(8, 8), dropout), seed=0)
    plain = nn.Sequential(nn.Linear(8, 8), dropout)
    assert isinstance(converted[1], layers.Dropout) and plain[1] is dropout
    assert plain(torch.ones(2, 8)).shape == (2, 8)  # torch's dropout, as before
    bare = nn.Dropout(0.5)
    assert isinstance(convert(bare, seed=0), layers.Dropout)
    assert bare(torch.ones(2, 8)).shape == (2, 8)


def test_forwards_on_several_threads_run_each_in_its_own_mode():
    """Two forwards of one converted model at the same time (both wait inside their forward
    for the other): each draws on the model's streams at the step both read, neither touches
    torch's generator, and each advances the step; no mode is left behind on either thread,
    and the next forward draws at the step the buffer holds."""
    from torch.overrides import _get_current_function_mode_stack

    class Meets(nn.Module):
        meeting: threading.Barrier | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.dropout(x, 0.5, training=self.training)
            if self.meeting is not None:
                self.meeting.wait()  # both forwards are running now
            return F.dropout(x, 0.5, training=self.training)

    model = convert(Meets(), seed=0)
    reference = copy.deepcopy(model)
    expected = [reference(torch.ones(64)) for _ in range(3)]  # steps 0, 1 and 2
    model.meeting = threading.Barrier(2, timeout=30)
    outputs, modes_left, errors = [], [], []

    def forward() -> None:
        try:
            outputs.append(model(torch.ones(64)))
        except Exception as error:  # reported below, on the test's thread
            errors.append(error)
        modes_left.append(len(_get_current_function_mode_stack()))

    generator = torch.get_rng_state()
    threads = [threading.Thread(target=forward) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and modes_left == [0, 0]
    assert torch.equal(torch.get_rng_state(), generator)
    assert all(torch.equal(y, expected[0]) for y in outputs)  # both read step 0
    assert int(model.xdrop_step) == 2
    model.meeting = None
    assert torch.equal(model(torch.ones(64)), expected[2])


def test_activation_checkpointing_recomputation_is_refused_not_given_torchs_masks():
    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=False)

    model = convert(Checkpointed(), seed=0)
    loss = model(_inputs()).sum()
    with pytest.raises(xdrop.RecomputationError, match="activation checkpointing"):
        loss.backward()


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("converted", ["the model", "each block, then the model"])
def test_a_checkpointed_converted_forward_is_refused_in_training_and_runs_in_eval(
    use_reentrant, converted
):
    """The recomputation runs the converted forward again at the advanced step: other masks,
    and a gradient that mixes the two, unless refused."""

    class FunctionalOnly(nn.Module):  # no dropout module: only the model's sites draw
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.dropout(self.linear(x), 0.3, self.training)
            return F.scaled_dot_product_attention(x, x, x, dropout_p=0.2 if self.training else 0)

    model = nn.Sequential(FunctionalOnly(), FunctionalOnly())
    if converted != "the model":
        for block in model:
            convert(block, seed=1)
    model = convert(model, seed=0)

    def checkpointed(x: torch.Tensor) -> torch.Tensor:
        for block in model:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=use_reentrant)
        return x

    inputs = _inputs().requires_grad_()
    if converted == "the model":
        loss = torch.utils.checkpoint.checkpoint(model, inputs, use_reentrant=use_reentrant).sum()
    else:
        loss = checkpointed(inputs).sum()
    with pytest.raises(xdrop.RecomputationError, match="activation checkpointing"):
        loss.backward()
    model.eval()
    checkpointed(inputs).sum().backward()
    expected = torch.autograd.grad(model(inputs).sum(), inputs)[0]
    inputs.grad = None
    checkpointed(inputs).sum().backward()
    assert torch.equal(inputs.grad, expected)


def test_fx_refuses_to_trace_a_converted_model_and_a_traced_model_converts():
    # FX calls the root's forward without its hooks: the trace would record torch's dropout
    with pytest.raises(xdrop.TracingError, match="convert the traced module"):
        torch.fx.symbolic_trace(convert(_encoder(), seed=3))
    held = convert(_encoder(), seed=3)
    with pytest.raises(xdrop.TracingError, match="convert the traced module"):
        torch.fx.symbolic_trace(nn.Sequential(held))  # its hooks run, and are refused
    assert torch.equal(held(_inputs()), convert(_encoder(), seed=3)(_inputs()))  # as new
    traced = [convert(torch.fx.symbolic_trace(_encoder()), seed=3) for _ in range(2)]
    generator = torch.get_rng_state()
    first, second = (model(_inputs()) for model in traced)
    assert torch.equal(torch.get_rng_state(), generator)  # xdrop's masks, not torch's
    assert torch.equal(first, second)
    assert not torch.equal(first, traced[0].eval()(_inputs()))


@pytest.mark.parametrize("name", ["xdrop_seed", "xdrop_step"])
def test_load_state_dict_refuses_a_model_seed_or_step_that_is_not_an_integer(name):
    # a checkpoint cast whole to bfloat16 would put seed 123207680 in place of 123456789
    model = nn.Sequential(convert(_encoder(), seed=123456789))
    state = {key: value.clone() for key, value in model.state_dict().items()}
    state[f"0.{name}"] = state[f"0.{name}"].bfloat16()
    with pytest.raises(xdrop.ArgumentTypeError, match=rf"state_dict\['0.{name}'\] must be a 0-d"):
        model.load_state_dict(state)
    assert int(model[0].xdrop_seed) == 123456789
    state[f"0.{name}"] = state[f"0.{name}"].int()  # any integer dtype is read exactly
    model.load_state_dict(state)


def test_a_model_without_dropout_like_modules_converts_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(_encoder(), seed=0, strict=True)


# -- forwards that fail, models run inside others, buffers written from outside -------------------
class Raises:
    """A forward pre-hook that raises on the calls asked for (a sharding all-gather out of
    memory, a check of the inputs), as a hook registered before convert's, or prepended."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self, module: nn.Module, args: Any) -> None:
        if self.armed:
            self.armed = False
            raise MemoryError("out of memory")


class Dropping(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, 0.5, self.training)


@pytest.mark.parametrize("registered", ["before convert", "after convert, prepended"])
def test_a_forward_that_a_pre_hook_before_converts_refused_leaves_the_model_as_it_was(
    registered: str,
):
    """Torch runs the model's always-called forward hooks after a pre-hook raised, also where
    that pre-hook ran before convert's: nothing was entered, so nothing is left, and the
    retried forward draws the masks of the step the failed one would have drawn."""
    raises = Raises()
    model = Dropping()
    if registered == "before convert":
        model.register_forward_pre_hook(raises)
        model = convert(model, seed=3)
    else:
        model = convert(model, seed=3)
        model.register_forward_pre_hook(raises, prepend=True)
    x = torch.ones(64)
    expected = [xdrop.dropout(x, 0.5, seed=_site(3, "#0", step)) for step in range(2)]
    raises.armed = True
    with pytest.raises(MemoryError):
        model(x)
    generator = torch.get_rng_state()
    assert [torch.equal(model(x), mask) for mask in expected] == [True, True]
    assert int(model.xdrop_step) == 2
    assert torch.equal(torch.get_rng_state(), generator)


class Recursive(nn.Module):
    """A model whose forward calls the model again, once."""

    def forward(self, x: torch.Tensor, again: bool = True) -> torch.Tensor:
        y = F.dropout(x, 0.5)
        return self(y, again=False) if again else y


class Interrupted(nn.Module):
    """A model whose forward is interrupted (Ctrl+C in a notebook) after a site drew."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupt = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.dropout(x, 0.5)
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        return y


def test_a_model_calling_itself_in_its_forward_is_one_forward_of_the_model():
    model = convert(Recursive(), seed=6)
    x = torch.ones(64)
    first = xdrop.dropout(x, 0.5, seed=_site(6, "#0", 0))
    assert torch.equal(model(x), xdrop.dropout(first, 0.5, seed=_site(6, "#1", 0)))
    assert int(model.xdrop_step) == 1


def test_a_forward_interrupted_without_torchs_forward_hooks_is_dropped_by_the_next_forward():
    """Torch runs always-called forward hooks on an Exception alone: after a KeyboardInterrupt
    the next forward of the model leaves the interrupted one's mode behind and is a forward of
    its own, at the step the interrupted one had not taken; nothing of it stays on torch's
    stack of modes, and torch's generator is torch's again."""
    from torch.overrides import _get_current_function_mode_stack

    model = convert(Interrupted(), seed=6)
    x = torch.ones(64)
    model.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        model(x)
    generator = torch.get_rng_state()
    for step in range(2):
        assert torch.equal(model(x), xdrop.dropout(x, 0.5, seed=_site(6, "#0", step)))
    assert int(model.xdrop_step) == 2
    assert _get_current_function_mode_stack() == []
    F.dropout(x, 0.5)
    assert not torch.equal(torch.get_rng_state(), generator)


def test_a_submodule_whose_pre_hook_raised_leaves_its_callers_sites_named_after_the_caller():
    """A block falls back to its own code when a submodule's pre-hook refuses (a fast path
    not available): the fallback's dropout is the block's site, not the root's."""

    class FallsBack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fast = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            try:
                return self.fast(x)
            except MemoryError:
                return F.dropout(x, 0.5)

    model = nn.Sequential()
    model.add_module("block", FallsBack())
    raises = Raises()
    model.block.fast.register_forward_pre_hook(raises)
    model = convert(model, seed=5)
    raises.armed = True
    x = torch.ones(64)
    assert torch.equal(model(x), xdrop.dropout(x, 0.5, seed=_site(5, "block#0", 0)))


class Student(nn.Module):
    """A model whose forward runs a teacher it does not hold (kept out of its parameters)."""

    def __init__(self, teacher: nn.Module | None) -> None:
        super().__init__()
        self.__dict__["teacher"] = teacher

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        taught = None if self.teacher is None else self.teacher(x)
        return F.dropout(x, 0.5, self.training), taught


@pytest.mark.parametrize("teaching", ["training", "evaluating"])
def test_a_converted_teacher_run_in_a_students_forward_leaves_the_students_masks(
    teaching: str,
):
    """The teacher's sites are its own, those that draw nothing too: the student's masks are
    those it draws alone, whatever mode the teacher is in."""
    x = torch.ones(64)
    alone = convert(Student(None), seed=1)(x)[0]
    teacher = convert(Dropping(), seed=2).train(teaching == "training")
    assert torch.equal(convert(Student(teacher), seed=1)(x)[0], alone)


@pytest.mark.parametrize("write", ["copy_", ".data.copy_", ".data ="])
def test_a_step_written_in_place_is_the_step_the_next_forward_draws(write: str):
    """On the CPU a converted model reads its seed and step on every forward, also after a
    write torch does not count as a change (through ``.data``, as older EMA code copies)."""
    x = torch.ones(64)
    model = convert(Dropping(), seed=4)
    model(x)
    step = torch.tensor(9)
    if write == "copy_":
        with torch.no_grad():
            model.xdrop_step.copy_(step)
    elif write == ".data.copy_":
        model.xdrop_step.data.copy_(step)
    else:
        model.xdrop_step.data = step
    assert torch.equal(model(x), xdrop.dropout(x, 0.5, seed=_site(4, "#0", 9)))


def test_on_an_accelerator_the_step_is_remembered_between_forwards_and_read_when_changed(
    monkeypatch: pytest.MonkeyPatch,
):
    """Where reading the step would wait for the device, the forward remembers it, advances
    what it remembers with the buffer, and reads it again when torch counts a change (a
    ``load_state_dict``, a ``copy_``); checked on the CPU by treating it as such a device."""
    from xdrop.layers import torch_functional

    monkeypatch.setattr(torch_functional, "READ_ON_EVERY_FORWARD", set())
    x = torch.ones(64)
    model = convert(Dropping(), seed=4)
    drawn = [model(x) for _ in range(2)]
    assert [
        torch.equal(y, xdrop.dropout(x, 0.5, seed=_site(4, "#0", s))) for s, y in enumerate(drawn)
    ] == [True, True]
    with torch.no_grad():
        model.xdrop_step.copy_(torch.tensor(7))
    assert torch.equal(model(x), xdrop.dropout(x, 0.5, seed=_site(4, "#0", 7)))
    model.load_state_dict({"xdrop_seed": torch.tensor(6), "xdrop_step": torch.tensor(0)})
    assert torch.equal(model(x), xdrop.dropout(x, 0.5, seed=_site(6, "#0", 0)))
    assert torch.equal(model(x), xdrop.dropout(x, 0.5, seed=_site(6, "#0", 1)))


def test_a_model_made_in_inference_mode_evaluates_and_samples_there():
    """Inference tensors keep no version for the forward to compare: they are read."""
    x = torch.ones(64)
    reference = convert(nn.Sequential(nn.Dropout(0.5)), seed=4).eval()
    set_mc_sampling(reference, True)
    with torch.inference_mode():
        model = convert(nn.Sequential(nn.Dropout(0.5)), seed=4).eval()
        assert torch.equal(model(x), x)
        set_mc_sampling(model, True)
        assert torch.equal(model(x), reference(x))
        assert int(model[0].step) == 1


@pytest.mark.parametrize("layer", ["an xdrop layer", "a converted call"])
def test_torch_func_grad_takes_the_buffers_as_an_argument_and_refuses_them_captured(layer: str):
    """A training forward advances the step in place: ``functional_call`` with the buffers
    passed in draws the eager forward's mask; with the buffers captured by the transformed
    function torch refuses the write, and xdrop says to pass them."""
    from torch.func import functional_call, grad

    torch.manual_seed(0)
    linear = nn.Linear(8, 8)
    dropout = layers.Dropout(0.5, seed=3) if layer == "an xdrop layer" else Dropping()
    model = nn.Sequential(linear, dropout)
    if layer == "a converted call":
        model = convert(model, seed=3)
    eager = copy.deepcopy(model)
    x = torch.randn(4, 8)
    eager(x).square().sum().backward()
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())

    def loss(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, (params, buffers), (x,)).square().sum()

    gradients = grad(loss)(params, buffers)
    assert all(torch.equal(gradients[name], p.grad) for name, p in eager.named_parameters())
    with pytest.raises(xdrop.TracingError, match="pass the model's buffers"):
        grad(lambda params: functional_call(model, params, (x,)).square().sum())(params)


# -- converting again -----------------------------------------------------------------------------
def test_converting_twice_changes_no_stream_and_no_state_dict_key():
    x = _inputs()
    once = convert(_encoder(), seed=5)
    twice = convert(convert(_encoder(), seed=5), seed=None)
    assert list(twice.state_dict()) == list(once.state_dict())
    assert torch.equal(twice(x), once(x))
    assert len(twice._forward_pre_hooks) == 1


def test_converting_again_with_another_seed_or_rename_is_refused():
    model = convert(_encoder(), seed=5, rename=str.upper)
    with pytest.raises(xdrop.ArgumentValueError, match="seed"):
        convert(model, seed=6)
    with pytest.raises(xdrop.ArgumentValueError, match="rename"):
        convert(model, seed=5, rename=str.lower)


def test_converting_again_converts_what_was_added_with_the_models_seed_and_rename():
    model = convert(_encoder(), seed=5, rename=str.upper)
    model.extra = nn.Dropout(0.5)
    convert(model, seed=None)
    assert int(model.extra.seed) % 2**64 == common.site_seed(5, "EXTRA")


# -- arguments ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"model": "bert"}, xdrop.ArgumentTypeError, "model must be a torch.nn.Module"),
        ({"seed": -1}, xdrop.ArgumentValueError, "seed"),
        ({"seed": 1.5}, xdrop.ArgumentTypeError, "seed"),
        ({"strict": 1}, xdrop.ArgumentTypeError, "strict"),
        ({"rename": "x"}, xdrop.ArgumentTypeError, "rename must be None or a callable"),
        ({"rename": lambda name: 1}, xdrop.ArgumentTypeError, "rename must return a str"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(arguments, error, match):
    call = {"model": nn.Sequential(nn.Dropout()), "seed": 0, **arguments}
    with pytest.raises(error, match=match):
        convert(call.pop("model"), **call)
