"""Every registered model: interface, gradients, causality, learning (tiny presets)."""

import dataclasses

import pytest
import torch

from framecast.config import ConfigError, to_dict
from framecast.models import available_models, create, create_from_config, model_config

MODELS = available_models(family="frame_predictor")


def moving_square(batch: int = 2, frames: int = 8, size: int = 16) -> torch.Tensor:
    """A bright square moving one pixel right per frame: uint8 (B, T, H, W, 1)."""
    video = torch.zeros(batch, frames, size, size, 1, dtype=torch.uint8)
    for b in range(batch):
        for t in range(frames):
            y, x = 3 + 2 * b, 2 + t
            video[b, t, y:y + 4, x:x + 4] = 200
    return video


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape_dtype_and_finite(name):
    torch.manual_seed(0)
    model = create(name, "tiny")
    video = torch.randint(0, 256, (2, 8, 16, 16, 1), dtype=torch.uint8)
    logits = model(video)
    k = model.context_frames
    assert logits.shape == (2, 8 - k, 16, 16, 1, 256)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = create(name, "tiny")
    video = torch.randint(0, 256, (1, 8, 16, 16, 1), dtype=torch.uint8)
    model(video).float().logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


@pytest.mark.parametrize("name", MODELS)
def test_changing_future_frames_leaves_past_predictions(name):
    torch.manual_seed(0)
    model = create(name, "tiny").eval()
    k = model.context_frames
    video = torch.randint(0, 256, (1, 4 * k, 16, 16, 1), dtype=torch.uint8)
    changed = video.clone()
    cut = 2 * k  # frames from here on are replaced
    changed[:, cut:] = torch.randint(0, 256, changed[:, cut:].shape, dtype=torch.uint8)
    with torch.no_grad():
        a, b = model(video), model(changed)
    # Output j is frame k + j; frames before cut + k are predicted from frames before cut.
    unchanged = cut  # = (cut + k) - k outputs
    assert torch.equal(a[:, :unchanged], b[:, :unchanged])
    assert not torch.allclose(a[:, unchanged:], b[:, unchanged:])


@pytest.mark.parametrize("name", MODELS)
def test_a_model_accepts_other_frame_sizes(name):
    model = create(name, "tiny")
    video = torch.randint(0, 256, (1, 4, 8, 12, 1), dtype=torch.uint8)
    assert model(video).shape[2:4] == (8, 12)


@pytest.mark.parametrize("name", MODELS)
def test_a_tiny_model_overfits_one_batch(name):
    torch.manual_seed(0)
    model = create(name, "tiny")
    video = moving_square()
    target = video[:, model.context_frames:].long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        logits = model(video)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("name", MODELS)
def test_a_model_rebuilds_from_its_saved_config(name):
    config = model_config(name, "tiny")
    model = create_from_config(name, to_dict(config))
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in create(name, "tiny").parameters())


def test_bad_names_presets_and_overrides_are_refused():
    with pytest.raises(ConfigError, match="unknown; available"):
        create("gpt5")
    with pytest.raises(ConfigError, match="preset 'huge'"):
        create("vblt", "huge")
    with pytest.raises(ConfigError, match="unknown config key"):
        create("vblt", "tiny", dimm=12)
    with pytest.raises(ValueError, match="multiple of 6"):
        create("vblt", "tiny", dim=32, heads=2)


def test_frames_not_divisible_by_the_patch_are_refused():
    model = create("vblt", "tiny")  # patch (2, 4, 4)
    with pytest.raises(ValueError, match="divisible by the patch"):
        model(torch.zeros(1, 5, 16, 16, 1, dtype=torch.uint8))


@pytest.mark.parametrize("patch", [(1, 4, 4), (2, 4, 4)])
def test_vblt_with_the_byte_skip_is_causal_for_every_time_patch(patch):
    """The skip hands each pixel query its encoder states of the last frames of slice s
    (two frames when a slice has one): never a frame of slice s + 1."""
    torch.manual_seed(0)
    model = create("vblt", "tiny", patch=patch, byte_skip=True, copy_prior=12.0).eval()
    video = torch.randint(0, 256, (1, 8, 16, 16, 1), dtype=torch.uint8)
    for cut in range(patch[0], 8 - patch[0], patch[0]):
        changed = video.clone()
        changed[:, cut:] = 255 - changed[:, cut:]
        with torch.no_grad():
            a, b = model(video), model(changed)
        kept = cut  # output j is frame pt + j: frames up to cut + pt - 1 see only frames < cut
        assert torch.equal(a[:, :kept], b[:, :kept]), cut
        assert not torch.allclose(a[:, kept:], b[:, kept:]), cut


def test_the_copy_prior_starts_the_demo_model_at_copy_last_frame():
    """With one frame per slice and the copy prior, the untrained model predicts each frame as
    the frame before it: training starts from the baseline instead of from noise."""
    from framecast.distribution import decode_bytes

    torch.manual_seed(0)
    model = create("vblt", "demo").eval()
    assert model.context_frames == model.frames_per_step == 1
    video = torch.randint(0, 256, (2, 4, 16, 16, 1), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(decode_bytes(model(video)), video[:, :-1])


@pytest.mark.parametrize("name", ["vblt", "vivit", "unet3d"])
def test_the_decoding_is_the_models_own_and_the_one_best_on_val_is_chosen(name):
    import numpy as np

    from framecast import metrics
    from framecast.predict import DECODES, choose_decode, predict

    torch.manual_seed(0)
    videos = np.random.default_rng(0).integers(0, 256, (3, 4, 16, 16, 1), dtype=np.uint8)
    model = create(name, "tiny").eval()
    best, psnr = choose_decode(model, videos, batch_size=2)
    truth = videos[:, model.context_frames:]
    for d in DECODES:  # each PSNR is what predicting with that decoding scores
        pred, _, _ = predict(model, videos, batch_size=2, decode=d)
        assert psnr[d] == pytest.approx(float(metrics.psnr_per_frame(pred, truth).mean()))
    assert psnr[best] == max(psnr.values())
    chosen = create_from_config(name, {**to_dict(model.cfg), "decode": best})
    chosen.load_state_dict(model.state_dict())
    own, _, _ = predict(chosen.eval(), videos, batch_size=2)  # no decode named: the model's
    named, _, _ = predict(model, videos, batch_size=2, decode=best)
    assert np.array_equal(own, named)
    with pytest.raises(ConfigError, match="decode='median' is unknown; accepted: trimmed"):
        create_from_config(name, {**to_dict(model.cfg), "decode": "median"})


def _tokens_entering_the_first_block(model, video):
    seen = {}
    model.encoder.patch_conv.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    with torch.no_grad():
        model(video)
    return seen["x"]


def test_the_scaled_init_starts_vblt_tokens_at_unit_scale_where_gpt_init_starts_them_tiny():
    video = torch.randint(0, 256, (2, 8, 16, 16, 1), dtype=torch.uint8)
    torch.manual_seed(0)
    gpt = _tokens_entering_the_first_block(create("vblt", "small_v1"), video).std().item()
    torch.manual_seed(0)
    scaled = _tokens_entering_the_first_block(create("vblt", "small_v1", init="scaled"),
                                              video).std().item()
    assert gpt < 0.01  # variance below LayerNorm's epsilon (1e-5)
    assert 0.3 < scaled < 3.0


def test_vblt_paper_starts_from_the_ordinal_init_and_paper_gpt_is_it_before():
    paper, before = model_config("vblt", "paper"), model_config("vblt", "paper_gpt")
    assert paper.init == "ordinal" and before.init == "gpt"
    assert dataclasses.replace(before, init="ordinal") == paper  # the init alone differs
    # a `paper` model saved before the change (its config says gpt) rebuilds as it was
    assert create_from_config("vblt", to_dict(before)).cfg.init == "gpt"


@pytest.mark.parametrize("options", [{"rope_width": "model"}, {"init": "scaled"},
                                     {"rope_width": "model", "rope_base": 100.0},
                                     {"init": "ordinal"},
                                     {"encoder_convs": 2, "decoder_convs": 1},
                                     {"decoder_convs": 1, "patch": (1, 4, 4)}])
def test_vblt_options_keep_it_causal_and_rebuild_from_the_saved_config(options):
    torch.manual_seed(0)
    model = create("vblt", "tiny", **options).eval()
    video = torch.randint(0, 256, (1, 8, 16, 16, 1), dtype=torch.uint8)
    changed = video.clone()
    changed[:, 4:] = 255 - changed[:, 4:]
    with torch.no_grad():
        a, b = model(video), model(changed)
    assert torch.equal(a[:, :4], b[:, :4]) and not torch.allclose(a[:, 4:], b[:, 4:])
    copy = create_from_config("vblt", to_dict(model.cfg))
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(copy.eval()(video), a)


def test_the_ordinal_init_starts_near_bytes_alike_and_far_bytes_apart():
    from framecast.models.vblt import ordinal_bytes

    torch.manual_seed(0)
    model = create("vblt", "tiny", init="ordinal", byte_dim=8)
    table = model.encoder.byte_embed.weight.detach()
    assert torch.equal(table, ordinal_bytes(8))
    assert torch.allclose(table[:, 0], torch.linspace(-1, 1, 256), atol=1e-6)  # the value
    near = (table[151] - table[150]).norm()
    far = (table[255] - table[0]).norm()
    assert near < 0.3 < 1.0 < far  # random rows of unit scale: about 4 apart
    assert 0.5 < table.std().item() < 1.5  # unit scale, not gpt's 0.02
    gpt = create("vblt", "tiny", byte_dim=8).encoder.byte_embed.weight.detach()
    assert gpt.std().item() < 0.05


def test_pixel_convolutions_mix_neighbours_and_never_frames():
    """A local decoder with pixel convolutions lets a pixel's logits follow its neighbours'
    states in the predicted slice; without them each pixel reads only its own."""
    from framecast.models.vblt import PixelConvBlock

    torch.manual_seed(0)
    block = PixelConvBlock(6).eval()
    x = torch.randn(1, 6, 3, 8, 8)
    y = x.clone()
    y[:, :, 1, 4, 4] += torch.randn(6)  # one pixel of frame 1
    with torch.no_grad():
        diff = (block(y) - block(x)).abs().sum(1)[0]  # (T, H, W)
    assert diff[0].max() == 0 and diff[2].max() == 0  # other frames untouched
    window = torch.zeros(8, 8, dtype=torch.bool)
    window[2:7, 2:7] = True  # two 3x3 convolutions reach 2 pixels away
    assert diff[1][window].min() > 1e-4 and diff[1][~window].max() < 1e-6


def test_rope_over_the_model_width_gives_each_head_its_slice_of_the_papers_frequencies():
    from framecast.models.layers import grid_positions, rope_3d_angles

    model = create("vblt", "tiny", rope_width="model")  # dim 24, 2 heads
    per_head = model.latent_angles(2, 2, 2, torch.device("cpu"))
    full = rope_3d_angles(grid_positions(2, 2, 2), 24)  # (8, 12): t | y | x, 4 pairs each
    assert per_head.shape == (2, 8, 6)
    assert torch.equal(per_head[0], full[:, :6]) and torch.equal(per_head[1], full[:, 6:])
    # the paper's top frequency over d (1e4^(-6/24)) is above the per-head one (1e4^(-6/12)):
    # token 4 sits at t = 1
    head = create("vblt", "tiny").latent_angles(2, 2, 2, torch.device("cpu"))
    assert full[4, 0] == pytest.approx(1e4 ** (-6 / 24)) and head[4, 0] == pytest.approx(
        1e4 ** (-6 / 12))


def test_unknown_vblt_options_are_refused():
    with pytest.raises(ConfigError, match="init='unit'"):
        model_config("vblt", "tiny", init="unit")


@pytest.mark.parametrize("name", MODELS)
def test_own_inputs_replace_predicted_frames_by_the_models_own_and_keep_the_targets(name):
    torch.manual_seed(0)
    model = create(name, "tiny")
    video = moving_square(frames=8)
    k = model.context_frames
    assert torch.equal(model.with_own_predictions(video, 0.0), video)
    mixed = model.with_own_predictions(video, 1.0)
    with torch.no_grad():
        own = model.decode(model(video))
    assert torch.equal(mixed[:, :k], video[:, :k]) and torch.equal(mixed[:, k:], own)
    loss, _ = model.loss(video, own_inputs=0.999)
    with torch.no_grad():
        from framecast.models.contract import categorical_nll

        assert loss.item() == pytest.approx(
            categorical_nll(model(mixed), video[:, k:].long()).item(), rel=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"patch": (1, 4, 4)}, {"byte_skip": True,
                                                                   "copy_prior": 8.0},
                                       {"global_layers": 2, "rope_width": "model",
                                        "encoder_convs": 1, "decoder_convs": 1}])
def test_next_step_logits_are_the_last_step_of_the_full_forward_pass(overrides):
    """V-BLT computes only the last step for serving and rollouts (the decoder on one source
    slice, the last slice's placeholders never encoded): the same logits as the full pass."""
    torch.manual_seed(0)
    model = create("vblt", "tiny", **overrides).eval()
    step = model.frames_per_step
    video = torch.randint(0, 256, (2, 4 * step, 16, 16, 1), dtype=torch.uint8)
    with torch.no_grad():
        want = model(video)[:, -step:]
        got = model.next_step_logits(video)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    video[:, -step:] = 255 - video[:, -step:]  # the placeholders' values never matter
    with torch.no_grad():
        torch.testing.assert_close(model.next_step_logits(video), got, atol=1e-4, rtol=1e-4)


def test_vblt_exports_to_onnx_that_onnx_runtime_loads_and_agrees_with():
    """`make bench` (benchmarks/quantize.py, the ORT columns) exports V-BLT with the TorchScript
    exporter. movedim(1, -1) in the pixel convolutions' norm was written as a Transpose with a
    negative perm, which ONNX Runtime refused to load. Needs the `bench` extra."""
    pytest.importorskip("onnxruntime")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.lib.ort import OrtPair

    torch.manual_seed(0)
    model = create("vblt", "tiny", encoder_convs=1, decoder_convs=1).eval()
    video = torch.randint(0, 256, (2, 4, 8, 8, 1), dtype=torch.uint8)
    pair = OrtPair(model, video[:1])
    got = pair.sessions["ort_fp32"].run(None, {"video": video.numpy()})[0]
    with torch.no_grad():
        want = model(video)
    want = want[0] if isinstance(want, tuple) else want
    assert got.shape == tuple(want.shape)
    # ORT's fused kernels differ from torch's by ~3e-3 on logits of ~0.3 here (an untrained
    # model: near-ties can flip a few argmaxes).
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-2)
    assert (torch.from_numpy(got).argmax(-1) == want.argmax(-1)).float().mean() > 0.95
