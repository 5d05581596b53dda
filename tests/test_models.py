"""The model zoo: published parameter counts, forward/backward of every registered model, the
pieces each paper specifies (SE, compound scaling, layer scale, μ-law, causality, receptive fields),
WaveNet's and ByteNet's cached decoding, and torch.compile. The learning checks run as recipes
(tests/test_zoo_recipes.py).

Expensive things are avoided on purpose (the suite runs on 2 shared cores): parameter counts are
taken on the meta device (no memory, no initialization work), and forward/backward runs every
registered architecture at its real depth but a few channels wide, on 16×16 inputs or short
sequences, batch 2, on one thread (tensors this small only lose time to threads on a busy machine).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import replearn.models as models
from replearn.data import decode_bytes, encode_bytes, periodic_signal
from replearn.models import ConvSpec, receptive_field
from replearn.models._layers import DropPath
from replearn.models.efficientnet import ALPHA, BETA, GAMMA, B0_STAGES, MBConv, MBConvStage
from replearn.models.squeeze_excitation import SqueezeExcitation

IMAGE_FAMILIES = ("resnet", "seresnet", "efficientnet", "convnext")

# Published parameter counts at ImageNet settings (1000 classes). ResNet, EfficientNet and
# ConvNeXt: the torchvision model documentation (pytorch.org/vision/stable/models), which matches
# the papers' "M" figures (ResNet-50 25.6M, EfficientNet-B0 5.3M, ConvNeXt-T 28M); SE-ResNet: timm's
# seresnet50 (the paper's Table 2 gives 28.1M).
PUBLISHED_PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "seresnet50": 28_088_024,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b7": 66_347_960,
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return models.create(name, **kwargs)


# ------------------------------------------------------------------------------ registry


def test_registry_lists_every_family_and_rejects_unknown_names():
    names = models.list()
    assert names == sorted(names)
    for expected in ("resnet18", "resnet152", "seresnet50", "efficientnet_b0", "efficientnet_b7", "convnext_tiny",
                     "convnext_base", "wavenet", "bytenet"):  # fmt: skip
        assert expected in names
    with pytest.raises(ValueError, match="resnet18"):
        models.create("resnet19")
    with pytest.raises(ValueError, match="already registered"):
        models.register_model(models._registry._MODELS["resnet18"])


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_published_parameter_counts(name):
    assert count_parameters(on_meta(name)) == PUBLISHED_PARAMETERS[name]


# ------------------------------------------------------------------------------ every model runs

TINY = {
    "resnet": {"base_width": 4},
    "seresnet": {"base_width": 8, "se_reduction": 4},
    "efficientnet": {"width_mult": 0.1, "head_channels": 64},
    "convnext": {"dims": (8, 16, 16, 16), "patch_size": 2},  # 16×16 inputs: 8, 4, 2, 1 per stage
    "wavenet": {"layers_per_stack": 4, "stacks": 2, "residual_channels": 4, "gate_channels": 4, "skip_channels": 8},
    "bytenet": {"hidden_size": 4, "encoder_dilations": (1, 2, 4) * 2, "decoder_dilations": (1, 2, 4) * 2},
}


def family(name: str) -> str:
    return name.rstrip("0123456789").removesuffix("_b").split("_")[0]


@pytest.mark.parametrize("name", models.list())
def test_forward_backward_every_registered_model(name):
    """Each registered architecture at its real depth, a few channels wide: shapes, finite outputs,
    a finite gradient for every parameter."""
    kwargs = TINY[family(name)]
    if family(name) in IMAGE_FAMILIES:
        model = models.create(name, num_classes=7, **kwargs)
        x = torch.randn(2, 3, 16, 16)
        y = model(x)
        assert y.shape == (2, 7)
        features = model.forward_features(x)
        assert features.shape[:2] == (2, model.num_features)
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
        loss = y.square().mean()
    elif name == "wavenet":
        model = models.create(name, **kwargs)
        codes = torch.randint(0, 256, (2, 40))
        y = model(codes)
        assert y.shape == (2, 256, 40)
        loss = model.loss(codes)
    else:
        model = models.create(name, **kwargs)
        source, target = torch.randint(3, 259, (2, 5)), torch.randint(3, 259, (2, 7))
        y = model(source, target)
        assert y.shape == (2, 259, 7)
        loss = model.loss(source, target)
    assert torch.isfinite(y).all()
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        if parameter_name.endswith("embedding.weight"):
            continue  # only the rows of the tokens seen get gradients; checked through the loss
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name


def test_reset_classifier_and_headless_features():
    model = models.create("resnet18", num_classes=10, base_width=4)
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features) == (2, 32)


def test_resnet_small_input_stem_and_zero_init_residual():
    small = models.create("resnet18", small_input=True, base_width=4, zero_init_residual=True).eval()
    # 3×3/1 stem, no max-pool: an 8×8 image keeps 8×8 into the first stage, 1×1 after the last.
    assert small.forward_features(torch.randn(1, 3, 8, 8)).shape == (1, 32, 1, 1)
    assert small.stem[0][0].kernel_size == (3, 3) and small.stem[0][0].stride == (1, 1)
    # The standard stem divides by 4 before the first stage (Table 1): 32×32 → 1×1 at the end.
    assert models.create("resnet18", base_width=4).eval().forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 32, 1, 1)
    # zero_init_residual: every block starts as ReLU(shortcut(x)).
    block = small.stages[1][0]
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(block.shortcut(x)))


def test_squeeze_excitation_follows_the_paper():
    se = SqueezeExcitation(8, 2)
    x = torch.randn(3, 8, 5, 5)
    z = x.mean(dim=(2, 3))  # squeeze, eq. 2
    hidden = torch.relu(z @ se.reduce.weight.T + se.reduce.bias)  # δ(W₁z)
    s = torch.sigmoid(hidden @ se.expand.weight.T + se.expand.bias)  # σ(W₂δ(W₁z)), eq. 3
    torch.testing.assert_close(se(x), x * s[:, :, None, None])  # recalibration, eq. 4
    # SE-ResNet-50: r = 16 on the 256-channel output of the first bottleneck.
    assert on_meta("seresnet50").stages[0][0].se.reduce.out_features == 16


def test_efficientnet_compound_scaling():
    assert (ALPHA, BETA, GAMMA) == (1.2, 1.1, 1.15)
    assert abs(ALPHA * BETA**2 * GAMMA**2 - 2) < 0.1  # eq. 3's constraint
    for phi in (0, 1, 2.5):
        assert models.compound_coefficients(phi) == pytest.approx((1.2**phi, 1.1**phi, 1.15**phi))
    config = models.EfficientNetConfig.from_phi(2)
    assert (config.depth_mult, config.width_mult, config.resolution) == pytest.approx((1.44, 1.21, round(224 * 1.3225)))
    # B7's depth 3.1: stage repeats ⌈L·3.1⌉ = 4, 7, 7, 10, 10, 13, 4 → 55 MBConv blocks.
    b7 = on_meta("efficientnet_b7")
    blocks = [m for m in b7.modules() if isinstance(m, MBConv)]
    assert len(blocks) == sum(math.ceil(stage.num_blocks * 3.1) for stage in B0_STAGES) == 55
    assert b7.num_features == 2560 and b7.config.resolution == 600 and b7.head_drop.p == 0.5
    # Stochastic depth grows linearly to 0.2·(n−1)/n; only blocks with an identity shortcut have it.
    rates = [b.drop_path.p for b in blocks if isinstance(b.drop_path, DropPath)]
    assert rates[-1] == pytest.approx(0.2 * 54 / 55) and rates == sorted(rates)


def test_convnext_block_pieces():
    model = on_meta("convnext_tiny")
    block = model.stages[2][0]
    assert block.dwconv.kernel_size == (7, 7) and block.dwconv.groups == 384  # depthwise 7×7
    assert block.pwconv1.out_features == 4 * 384  # inverted bottleneck
    assert model.stem[0].kernel_size == (4, 4) and model.stem[0].stride == (4, 4)  # patchify
    assert len(model.downsample) == 3 and model.downsample[0][1].stride == (2, 2)
    real = models.create("convnext_tiny", dims=(8, 8, 8, 8))
    assert torch.all(real.stages[0][0].gamma == 1e-6)  # layer scale init
    rates = [b.drop_path.p for stage in real.stages for b in stage]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.1) and len(rates) == 18


def test_drop_path_drops_whole_samples():
    drop = DropPath(0.5).train()
    y = drop(torch.ones(400, 3, 2))
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)  # all or nothing per sample
    assert 0.35 < (per_sample[:, 0] == 0).float().mean() < 0.65
    assert torch.equal(drop.eval()(torch.ones(4, 3)), torch.ones(4, 3))


# ------------------------------------------------------------------------------ receptive fields


def test_receptive_field_formula():
    assert receptive_field([]) == 1
    assert receptive_field([ConvSpec(3)] * 3) == 7  # course Fig. 13: three 3×3 layers see 7×7
    assert receptive_field([ConvSpec(3, stride=2), ConvSpec(3)]) == 7  # r₂ = 3 + 2·2
    assert receptive_field([ConvSpec(3, dilation=2)]) == 5  # k̂ = d(k−1)+1, course Fig. 14
    # ResNet-18's stem: 7×7/2 then 3×3/2 max-pool → 7 + 2·2 = 11.
    assert receptive_field([ConvSpec(7, stride=2), ConvSpec(3, stride=2)]) == 11
    with pytest.raises(ValueError):
        ConvSpec(0)


def test_wavenet_receptive_field_matches_the_paper_and_the_model():
    # §2.1: a stack of dilations 1 … 512 with kernel 2 has a receptive field of 1024; three stacks
    # plus the input causal conv (kernel 2): 1 + 1 + 3·1023.
    assert models.create("wavenet", residual_channels=2, gate_channels=2, skip_channels=2).receptive_field == 3071
    config = TINY["wavenet"]
    model = models.create("wavenet", **config).double()
    field = model.receptive_field
    assert field == 2 + 2 * 15
    # Empirically: the last output changes when, and only when, one of the last `field` inputs does.
    torch.manual_seed(1)
    length = field + 10
    codes = torch.randint(0, 256, (1, length))
    base = model(codes)[0, :, -1]
    for position in range(length):
        changed = codes.clone()
        changed[0, position] = (changed[0, position] + 97) % 256
        moved = not torch.allclose(model(changed)[0, :, -1], base, atol=0, rtol=0)
        assert moved == (position >= length - field), position


# ------------------------------------------------------------------------------ WaveNet


def test_mu_law_companding():
    x = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    codes = models.mu_law_encode(x)
    assert codes.dtype == torch.int64 and codes.min() == 0 and codes.max() == 255
    assert torch.all(codes[1:] >= codes[:-1])
    assert int(models.mu_law_encode(torch.tensor(0.0))) == 128
    # f(0.5) = ln(1 + 127.5)/ln 256 (G.711 μ-law) → level round((f + 1)/2·255) = 239.
    f = math.log(1 + 255 * 0.5) / math.log(256)
    assert int(models.mu_law_encode(torch.tensor(0.5))) == round((f + 1) / 2 * 255) == 239
    # Decoding lands within half a quantization step of the companded value.
    decoded = models.mu_law_decode(codes).double()
    companded = lambda v: torch.sign(v) * torch.log1p(255 * v.abs()) / math.log(256)  # noqa: E731
    assert (companded(decoded) - companded(x)).abs().max() <= 1 / 255 + 1e-9


@pytest.mark.parametrize("conditioned", [False, True], ids=["plain", "local-conditioning"])
def test_wavenet_cached_generation_equals_full_recompute(conditioned):
    kwargs = dict(TINY["wavenet"], kernel_size=3)
    if conditioned:
        kwargs.update(cond_channels=3, cond_upsample=4)
    model = models.create("wavenet", **kwargs).double().eval()
    steps, start = 45, torch.tensor([128, 7])
    cond = torch.randn(2, 3, 12, dtype=torch.float64) if conditioned else None  # 12·4 ≥ 46 samples
    draws = {}
    for cached in (True, False):
        generator = torch.Generator().manual_seed(3)
        draws[cached] = model.generate(steps, start, cond=cond, generator=generator, cached=cached)
    (codes, logits), (slow_codes, slow_logits) = draws[True], draws[False]
    assert codes.shape == (2, steps + 1) and torch.equal(codes[:, 0], start)
    assert torch.equal(codes, slow_codes)
    torch.testing.assert_close(logits, slow_logits, rtol=1e-10, atol=1e-10)
    # And both equal one teacher-forced pass over the generated sequence.
    full = model(codes[:, :-1], cond) if not conditioned else model._logits(codes[:, :-1], model.upsample_cond(cond))
    torch.testing.assert_close(logits, full, rtol=1e-10, atol=1e-10)
    assert len(set(codes[0].tolist())) > 5  # sampling, not a constant


def test_wavenet_primed_generation_equals_full_recompute():
    """A (B, P) primer: the cached path runs it through the queues first; the samples and logits
    equal a full recompute's, and the primer is returned unchanged at the front."""
    model = models.create("wavenet", **TINY["wavenet"]).double().eval()
    primer = torch.randint(0, 256, (2, 9))
    draws = {}
    for cached in (True, False):
        draws[cached] = model.generate(12, primer, generator=torch.Generator().manual_seed(5), cached=cached)
    (codes, logits), (slow_codes, slow_logits) = draws[True], draws[False]
    assert codes.shape == (2, 21) and torch.equal(codes[:, :9], primer)
    assert torch.equal(codes, slow_codes)
    torch.testing.assert_close(logits, slow_logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits, model(codes[:, :-1])[:, :, 8:], rtol=1e-10, atol=1e-10)


def test_wavenet_local_conditioning_changes_the_output_and_is_required():
    model = models.create("wavenet", **TINY["wavenet"], cond_channels=2)
    codes = torch.randint(0, 256, (1, 20))
    h = torch.randn(1, 2, 20)
    assert not torch.allclose(model(codes, h), model(codes, h + 1))
    with pytest.raises(ValueError, match="needs local conditioning"):
        model(codes)


# ------------------------------------------------------------------------------ ByteNet


def test_bytenet_decoder_is_causal_and_encoder_ignores_padding():
    torch.manual_seed(2)
    model = models.create("bytenet", **TINY["bytenet"], unfold_a=1.2, unfold_b=1.0).double().eval()
    source, lengths = encode_bytes(["hello", "hi"])
    # Dynamic unfolding: the representation spans ⌈1.2·|s| + 1⌉ = 7 positions, zero past each |t̂|.
    encoded = model.encode(source, lengths)
    assert encoded.shape[-1] == 7
    assert torch.all(encoded[1, :, math.ceil(1.2 * 2 + 1) :] == 0)
    alone = model.encode(source[1:, :2], lengths[1:])
    torch.testing.assert_close(encoded[1:, :, : alone.shape[-1]], alone)
    # Decoder: the logits at t (predicting token t) never see tokens ≥ t.
    target, _ = encode_bytes(["abcdefgh", "xyzxyzxy"])
    logits = model(source, target, lengths)
    changed = target.clone()
    changed[:, 4] = 50
    logits2 = model(source, changed, lengths)
    torch.testing.assert_close(logits[:, :, :5], logits2[:, :, :5])
    assert not torch.allclose(logits[:, :, 5:], logits2[:, :, 5:])
    assert model.decoder_receptive_field == 1 + 2 * (1 + 2 + 4) * 2


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_bytenet_cached_decoding_equals_full_recompute(kernel_size):
    """Fast WaveNet caches in the decoder: the same greedy tokens as recomputing the decoder over the
    whole prefix per token, and at every position logits equal to one teacher-forced pass (float64,
    1e-10), including positions past |t̂| (zero conditioning) and after a row's EOS (PAD inputs)."""
    torch.manual_seed(4)
    kwargs = dict(TINY["bytenet"], decoder_kernel_size=kernel_size, unfold_a=1.2, unfold_b=1.0)
    model = models.create("bytenet", **kwargs).double().eval()
    with torch.no_grad():  # untrained weights emit near-uniform logits: sharpen them so tokens vary
        model.output[1].weight.mul_(50)
    source, lengths = encode_bytes(["hello", "hi", "abcdefgh"])
    max_length = 25  # beyond T̂ = ⌈1.2·8 + 1⌉ = 11
    cached = model.generate(source, lengths, max_length=max_length, cached=True)
    recomputed = model.generate(source, lengths, max_length=max_length, cached=False)
    assert torch.equal(cached, recomputed)
    assert len(set(cached.flatten().tolist())) > 3  # not a constant output
    encoded = model.encode(source, lengths)
    previous = model.shift_right(cached)
    with torch.no_grad():
        full = model.decode(encoded, previous)  # (B, V, T)
        state = model.start_decoding(encoded)
        stepped = torch.stack([model.decode_step(state, previous[:, t]) for t in range(previous.shape[1])], dim=-1)
    assert state.position == previous.shape[1]
    torch.testing.assert_close(stepped, full, rtol=1e-10, atol=1e-10)
    # The same for arbitrary teacher-forced inputs, 17 positions: past T̂ = 11, where the conditioning is zero.
    random_previous = torch.randint(3, 259, (3, 17))
    with torch.no_grad():
        state = model.start_decoding(encoded)
        stepped = torch.stack([model.decode_step(state, random_previous[:, t]) for t in range(17)], dim=-1)
        torch.testing.assert_close(stepped, model.decode(encoded, random_previous), rtol=1e-10, atol=1e-10)


def test_byte_encoding_round_trip():
    ids, lengths = encode_bytes(["héllo", ""], append_eos=True)
    assert lengths.tolist() == [7, 1]
    assert decode_bytes(ids) == ["héllo", ""]


# ------------------------------------------------------------------------------ torch.compile


def test_compiled_forward_matches_eager():
    model = models.create("resnet18", layers=(1, 1, 1, 1), base_width=4, small_input=True, num_classes=5).eval()
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))


# ------------------------------------------------------------------------------ data


def test_periodic_signal_is_periodic():
    x = periodic_signal(200, period=25, dtype=torch.float64)
    torch.testing.assert_close(x[25:], x[:-25])
    assert x.abs().max() <= 1
