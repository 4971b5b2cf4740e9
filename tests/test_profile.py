"""models/profile.py: FLOP counts that include attention, equal to counts by hand; the `paper`
presets against the V-BLT paper's table 1; old `paper` models still load."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from framecast.models import create, model_config
from framecast.models.layers import Attention, block_causal_mask
from framecast.models.profile import ATTENTION_FLOP_FORMULAS, count_flops, model_cost
from framecast.models.vblt import VBLTConfig

aten = torch.ops.aten


def linear(rows: int, cin: int, cout: int) -> int:
    return 2 * rows * cin * cout


def attention(batch: int, queries: int, keys: int, dim: int) -> int:
    """Q K^T and P V over all heads (heads * head_dim = dim), dense: a mask skips nothing."""
    return 2 * batch * queries * keys * dim * 2


def attention_layer(batch: int, queries: int, keys: int, dim: int) -> tuple[int, int]:
    """(linears, attention) of framecast.models.layers.Attention: q, kv, out projections."""
    linears = (linear(batch * queries, dim, dim) + linear(batch * keys, dim, 2 * dim)
               + linear(batch * queries, dim, dim))
    return linears, attention(batch, queries, keys, dim)


def mlp(rows: int, dim: int, ratio: float) -> int:
    hidden = int(dim * ratio)
    return linear(rows, dim, hidden) + linear(rows, hidden, dim)


def vblt_flops(cfg: VBLTConfig, t: int, h: int, w: int) -> tuple[int, int]:
    """(all FLOPs, attention's) of one V-BLT forward over a (1, t, h, w, C) clip, by hand."""
    pt, ph, pw = cfg.patch
    s, p = t // pt, (h // ph) * (w // pw)
    tokens, c, d, dd = s * p, cfg.channels, cfg.dim, cfg.decoder_dim
    total = attn = 0
    # Local encoder: a (1, 3, 3) conv on every pixel, the patch conv, shallow blocks.
    total += 2 * t * h * w * cfg.conv_dim * (c * cfg.byte_dim * 9)
    total += cfg.encoder_convs * 2 * 2 * t * h * w * cfg.conv_dim * cfg.conv_dim * 9
    total += 2 * tokens * d * cfg.conv_dim * pt * ph * pw
    for _ in range(cfg.encoder_layers + cfg.global_layers):  # same blocks, same tokens
        lin, att = attention_layer(1, tokens, tokens, d)
        total, attn = total + lin + att + mlp(tokens, d, cfg.mlp_ratio), attn + att
    # Local decoder: per source slice (s - 1 of them), pt*h*w pixel queries, p latent keys.
    src, queries = s - 1, pt * h * w
    total += 2 * src * p * d * dd * pt * ph * pw  # transposed conv: each latent paints a patch
    if cfg.byte_skip:
        frames = max(pt, 2)
        total += linear(src * h * w, frames * cfg.conv_dim, pt * dd)
    total += linear(src * p, d, dd)  # the latents as context
    for _ in range(cfg.decoder_layers):
        lin, att = attention_layer(src, queries, p, dd)
        total, attn = total + lin + att + mlp(src * queries, dd, cfg.mlp_ratio), attn + att
    total += cfg.decoder_convs * 2 * 2 * src * queries * dd * dd * 9  # pixel convolutions
    total += linear(src * queries, dd, c * 256)
    return total, attn


def vivit_flops(cfg, t: int, h: int, w: int) -> tuple[int, int]:
    """(all FLOPs, attention's) of one ViViT forward over a (1, t, h, w, C) clip, by hand."""
    pt, ph, pw = cfg.tubelet
    s, p, d, c = t // pt, (h // ph) * (w // pw), cfg.dim, cfg.channels
    total = 2 * s * p * d * c * pt * ph * pw  # tubelet embedding
    attn = 0
    for _ in range(cfg.layers):
        space_lin, space = attention_layer(s, p, p, d)  # one sequence per time slice
        time_lin, time = attention_layer(p, s, s, d)  # one per (y, x), causal
        total += space_lin + space + time_lin + time + mlp(s * p, d, cfg.mlp_ratio)
        attn += space + time
    total += 2 * (s - 1) * p * d * cfg.pixel_dim * pt * ph * pw  # un-embedding
    total += linear((t - pt) * h * w, cfg.pixel_dim, c * 256)
    return total, attn


def test_attention_kernels_that_torch_misses_are_counted_locally_not_globally():
    """The CPU kernel that F.scaled_dot_product_attention runs has no formula in torch 2.13's
    counter; ours ride on each count_flops call and never enter torch's global registry."""
    assert aten._scaled_dot_product_flash_attention_for_cpu in ATTENTION_FLOP_FORMULAS
    assert aten._scaled_dot_product_flash_attention_for_cpu_backward in ATTENTION_FLOP_FORMULAS
    assert not any(op in flop_registry for op in ATTENTION_FLOP_FORMULAS)
    q = torch.randn(1, 2, 5, 6)
    plain = FlopCounterMode(display=False)
    with plain:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert plain.get_total_flops() == 0  # what count_flops saw before the formulas


@pytest.mark.parametrize("kind", ["self, block-causal mask", "cross, 7 keys"])
def test_one_attention_layer_counts_its_linears_and_its_attention(kind):
    torch.manual_seed(0)
    batch, queries, dim, heads = 2, 12, 24, 2
    layer = Attention(dim, heads).eval()
    x = torch.randn(batch, queries, dim)
    angles = torch.zeros(queries, dim // heads // 2)
    if kind.startswith("self"):
        keys, kwargs = queries, {"mask": block_causal_mask(3, 4)}
    else:
        keys = 7
        kwargs = {"context": torch.randn(batch, keys, dim),
                  "kv_angles": torch.zeros(keys, dim // heads // 2)}
    linears, att = attention_layer(batch, queries, keys, dim)
    assert att > 0
    assert count_flops(layer, x, angles, **kwargs) == linears + att
    with sdpa_kernel(SDPBackend.MATH):  # torch counts the math kernel by its matmuls: the same
        assert count_flops(layer, x, angles, **kwargs) == linears + att


def test_backward_attention_is_counted_as_torch_counts_its_cuda_kernels():
    """Q K^T recomputed, dO V^T, P^T dO, dS K, Q^T dS: five products of B*h*Lq*Lk*d."""
    b, h, lq, lk, d = 2, 3, 5, 7, 6
    q = torch.randn(b, h, lq, d, requires_grad=True)
    k, v = torch.randn(b, h, lk, d, requires_grad=True), torch.randn(b, h, lk, d,
                                                                   requires_grad=True)
    counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOP_FORMULAS)
    with counter:
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    assert counts[aten._scaled_dot_product_flash_attention_for_cpu] == 2 * b * h * lq * lk * 2 * d
    assert (counts[aten._scaled_dot_product_flash_attention_for_cpu_backward]
            == 2 * b * h * lq * lk * 5 * d)


# On the CPU attention runs the flash kernel that needs our formula; on the meta device (no
# weights, no compute: the paper sizes in milliseconds) the math kernel's matmuls, which torch
# counts itself: both must give the count by hand.
SHAPES = [("tiny", (8, 16, 16), "cpu"), ("small", (12, 16, 16), "cpu"),
          ("paper", (12, 64, 64), "meta")]


# By hand from the config, and the least share of the count that is attention.
HAND = {"vblt": (vblt_flops, 0.02), "vivit": (vivit_flops, 0.0)}


@pytest.mark.parametrize("name", sorted(HAND))
@pytest.mark.parametrize("preset, shape, device", SHAPES)
def test_a_whole_model_counts_what_its_config_says_attention_included(name, preset, shape,
                                                                      device):
    """Linears, convolutions and every attention (V-BLT: block-causal encoder and global
    layers, the decoder's cross-attention; ViViT: space and time attention)."""
    hand, share = HAND[name]
    t, h, w = shape
    with torch.device(device):
        model = create(name, preset).eval()
    video = torch.zeros(1, t, h, w, 1, dtype=torch.uint8, device=device)
    total, att = hand(model_config(name, preset), t, h, w)
    assert att > share * total and att > 0
    assert count_flops(model, video) == total


def test_counting_on_the_meta_device_gives_the_cpu_count():
    model = create("vblt", "tiny").eval()
    with torch.device("meta"):
        meta = create("vblt", "tiny").eval()
    video = torch.zeros(1, 8, 16, 16, 1, dtype=torch.uint8)
    assert count_flops(meta, video.to("meta")) == count_flops(model, video)
    assert model_cost(meta, 8, 16) == model_cost(model, 8, 16)


# The V-BLT paper's table 1, per 12x64x64 one-channel sequence: MB of fp32 weights (MiB), GFLOPs.
TABLE_1 = {"vblt": (6.5, 51.2), "vivit": (6.5, 59.3), "unet3d": (24.0, 70.4)}


@pytest.fixture(scope="module")
def paper_costs() -> dict[str, dict[str, float]]:
    """model_cost of each `paper` preset, built on the meta device: the CPU's counts (tested
    above) in under a second instead of ~5 s."""
    with torch.device("meta"):
        models = {name: create(name, "paper") for name in TABLE_1}
    return {name: model_cost(model, 12, 64) for name, model in models.items()}


@pytest.mark.parametrize("name", sorted(TABLE_1))
def test_paper_presets_have_table_1s_size(name, paper_costs):
    assert abs(paper_costs[name]["mb"] / TABLE_1[name][0] - 1) <= 0.10, paper_costs[name]


@pytest.mark.parametrize("name", sorted(TABLE_1))
def test_paper_presets_have_table_1s_compute(name, paper_costs):
    """A multiply-add = 2 FLOPs, attention counted, within 25% of table 1."""
    assert abs(paper_costs[name]["gflops"] / TABLE_1[name][1] - 1) <= 0.25, paper_costs[name]


def test_a_model_saved_with_the_old_paper_preset_loads_and_is_the_wide_preset(tmp_path):
    """The old `paper` preset was the config defaults (d = 384); a saved model keeps its whole
    config, so it loads whatever `paper` now means, and `wide` builds it again."""
    from framecast import model_io
    from framecast.models.registry import build

    old = VBLTConfig()  # what the old `paper` ({}) built
    assert model_config("vblt", "wide") == old
    torch.manual_seed(0)
    model = build("vblt", old).eval()
    model_io.save_model(tmp_path, model)
    loaded = model_io.load_model(tmp_path)
    assert loaded.cfg == old and model_io.read_meta(tmp_path)["config"]["dim"] == 384
    video = torch.randint(0, 256, (1, 8, 8, 8, 1), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(loaded(video), model(video))


def test_a_unet_saved_before_the_width_cap_loads_with_every_level_doubling():
    from framecast.config import to_dict
    from framecast.models import create_from_config

    saved = to_dict(create("unet3d", "tiny").cfg)
    del saved["max_width"]  # a config saved before the field existed
    model = create_from_config("unet3d", saved)
    assert model.cfg.widths == [12, 24, 48] and model.cfg.max_width == 0
    assert create("unet3d", "tiny", max_width=24).cfg.widths == [12, 24, 24]
