"""Entropy-driven dynamic patching of V-BLT: the quadtree, packing, causality, equivalence with
static patching, save/reload and quantization."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from framecast import model_io
from framecast.config import ConfigError
from framecast.models import create, model_config
from framecast.models.patching import MAX_BITS, Layout, pack, packed_mask, quadtree, unpack
from framecast.quant.apply import layer_roles, precision_counts, quantize_model
from framecast.quant.gemm_form import linearize
from framecast.quant.plan import PlanEntry, Precision, plan_records

REPO = Path(__file__).resolve().parents[1]


def moving_squares(batch: int = 2, frames: int = 8, size: int = 16, blank: int = 0
                   ) -> torch.Tensor:
    """Bright squares on a black background, each wandering one pixel a frame in a random
    direction (so their edges stay hard to predict), then `blank` clips of black: uint8 (B +
    blank, T, H, W, 1)."""
    gen = torch.Generator().manual_seed(1)
    video = torch.zeros(batch + blank, frames, size, size, 1, dtype=torch.uint8)
    for b in range(batch):
        y, x = 2 + 3 * b, 2
        for t in range(frames):
            video[b, t, y:y + 4, x:x + 4] = 200
            dy, dx = (torch.randint(-1, 2, (2,), generator=gen)).tolist()
            y, x = min(max(y + dy, 0), 5), min(max(x + dx, 0), 5)
    return video


def dynamic(threshold: float = 3.0, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create("vblt", "tiny", patch=(1, 4, 4), patching="entropy", patch_levels=3,
                  entropy_threshold=threshold, **overrides)


def trained_entropy(model: torch.nn.Module, video: torch.Tensor, steps: int = 150
                    ) -> torch.nn.Module:
    """Teach the model's entropy model that the background stays black (a few seconds)."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.entropy_model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model.entropy_model.loss(video)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def coverage(selected: list[torch.Tensor]) -> torch.Tensor:
    """How many selected patches cover each finest cell: (B, S, Hp, Wp)."""
    total = torch.zeros(selected[0].shape, dtype=torch.long)
    for level, sel in enumerate(selected):
        k = 1 << level
        total += sel.long().repeat_interleave(k, -2).repeat_interleave(k, -1)
    return total


@pytest.mark.parametrize("threshold", [0.0, 1.0, 3.0, 5.0, 7.9])
def test_the_patches_of_every_slice_tile_the_frame_exactly_once(threshold):
    torch.manual_seed(0)
    entropy = torch.rand(3, 4, 32, 32) * MAX_BITS * torch.rand(3, 4, 1, 1)
    selected = quadtree(entropy, (4, 4), 4, threshold)
    assert [s.shape[-1] for s in selected] == [8, 4, 2, 1]
    assert torch.equal(coverage(selected), torch.ones(3, 4, 8, 8, dtype=torch.long))


def test_a_region_splits_exactly_where_some_pixel_reaches_the_threshold():
    entropy = torch.zeros(1, 1, 16, 16)
    entropy[0, 0, 1, 13] = 5.0  # one hard pixel, top right
    fine, mid, top = quadtree(entropy, (4, 4), 3, threshold=5.0)
    assert not top.any()  # the whole frame splits
    assert mid.sum() == 3 and not mid[0, 0, 0, 1]  # the top-right quarter splits again
    assert fine.sum() == 4 and fine[0, 0, :2, 2:].all()
    assert quadtree(entropy, (4, 4), 3, threshold=5.01)[2].all()  # below: one patch


@pytest.mark.parametrize("budget", [1, 4, 7, 10, 16, 40])
def test_a_budget_caps_every_slice_and_still_tiles_it_exactly_once(budget):
    torch.manual_seed(1)
    entropy = torch.rand(3, 5, 16, 16) * MAX_BITS * (torch.rand(3, 5, 16, 16) > 0.9)
    selected = quadtree(entropy, (4, 4), 3, threshold=0.0, budget=budget)
    assert torch.equal(coverage(selected), torch.ones(3, 5, 4, 4, dtype=torch.long))
    tokens = sum(s.flatten(2).sum(-1) for s in selected)  # (B, S)
    assert tokens.max() <= max(budget, 1)
    assert tokens.min() == min(1 + 3 * ((budget - 1) // 3), 16)  # every split it can afford


def test_a_budget_splits_the_regions_holding_the_most_entropy_first():
    entropy = torch.zeros(1, 1, 16, 16)
    entropy[0, 0, :8, 8:] = 1.0  # top right: 64 bits in all
    entropy[0, 0, 8:, :8] = 0.5  # bottom left: 32 bits
    entropy[0, 0, 0, 0] = 3.0  # top left: one pixel, the highest peak, 3 bits in all
    fine, mid, top = quadtree(entropy, (4, 4), 3, threshold=0.0, budget=7)  # 2 splits
    assert not top.any() and mid.sum() == 3 and not mid[0, 0, 0, 1]
    assert fine[0, 0, :2, 2:].all() and fine.sum() == 4
    fine, mid, _ = quadtree(entropy, (4, 4), 3, threshold=2.0, budget=7)  # only peaks >= 2
    assert not mid[0, 0, 0, 0] and fine[0, 0, :2, :2].all()


def test_packing_keeps_each_clips_tokens_in_order_and_unpacks_them():
    selected = torch.tensor([[[1, 0, 1], [0, 1, 0]], [[1, 1, 1], [1, 1, 0]]], dtype=torch.bool)
    index, valid = pack(selected)
    assert index.shape == (2, 5)
    assert index[0, :3].tolist() == [0, 2, 4] and valid[0].tolist() == [1, 1, 1, 0, 0]
    assert index[1].tolist() == [0, 1, 2, 3, 4] and valid[1].all()
    x = torch.arange(10.0).view(2, 5, 1)
    back = unpack(x, index, valid, 6)
    assert back[0, :, 0].tolist() == [0, 0, 1, 0, 2, 0] and back[1, :, 0].tolist() == [5, 6, 7,
                                                                                          8, 9, 0]
    mask = packed_mask(index // 3, valid)[:, 0]  # slices of 3 candidates
    assert mask[0].tolist()[0] == [True, True, False, False, False]  # slice 0 sees slice 0
    assert mask[0, 2].tolist() == [True, True, True, False, False]  # slice 1 sees both, no pad


def test_layout_centres_and_covering_match_the_quadtree():
    layout = Layout(4, 4, 3, torch.device("cpu"))
    assert layout.size == 16 + 4 + 1
    assert layout.centres[16].tolist() == [0.5, 0.5] and layout.centres[20].tolist() == [1.5, 1.5]
    selected = [torch.zeros(1, 1, 4, 4, dtype=torch.bool), torch.ones(1, 1, 2, 2,
                                                                      dtype=torch.bool),
                torch.zeros(1, 1, 1, 1, dtype=torch.bool)]
    cover = layout.covering(selected).view(4, 4)
    assert cover[0, 0] == cover[1, 1] == 16 and cover[3, 3] == 19


def test_a_threshold_that_splits_everything_is_static_1x4x4_patching():
    torch.manual_seed(0)
    model = dynamic(threshold=0.0).eval()
    torch.manual_seed(0)  # the same seed gives the same weights: paired runs
    static = create("vblt", "tiny", patch=(1, 4, 4)).eval()
    shared = static.state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in shared.items())
    video = torch.randint(0, 256, (2, 6, 16, 16, 1), dtype=torch.uint8)
    selected, _ = model.patch_selection(video)
    assert [int(s.sum()) for s in selected] == [2 * 6 * 16, 0, 0]  # 16 tokens a slice, as 4x4
    with torch.no_grad():
        torch.testing.assert_close(model(video), static(video), rtol=0, atol=1e-5)


def test_predictable_background_merges_into_coarse_patches():
    video = moving_squares()
    model = trained_entropy(dynamic(threshold=0.0), video)
    _, entropy = model.patch_selection(video)
    corner, edge = entropy[0, 1:, 12:, 12:].amax(), entropy[0, 1:, :8, :8].amax()
    assert edge > 3 * corner  # the square's moving edges are where the news is
    model.cfg = dataclasses.replace(model.cfg, entropy_threshold=float(corner + edge) / 2)
    selected, _ = model.patch_selection(video)
    fine = selected[0][0, 1:]  # slice 0 has no history: all fine
    assert sum(int(s[0, 1:].sum()) for s in selected) < 0.6 * 7 * 16
    assert fine[:, :2, :2].any(dim=(1, 2)).all()  # the square's quarter, in every slice
    assert not fine[:, 2:, 2:].any()  # the black quarter, never


def test_patching_and_predictions_of_a_slice_ignore_every_later_frame():
    video = moving_squares(frames=8)
    model = trained_entropy(dynamic(threshold=0.5), video)
    changed = video.clone()
    cut = 5  # frames 5.. change; slices (one frame each) 0..4 keep their patching
    changed[:, cut:] = torch.randint(0, 256, changed[:, cut:].shape, dtype=torch.uint8)
    with torch.no_grad():
        (sel_a, ent_a), (sel_b, ent_b) = model.patch_selection(video), \
            model.patch_selection(changed)
        a, b = model(video), model(changed)
    assert sum(bool(x[:, 1:cut].any()) for x in sel_a) >= 2  # slices mix patch sizes
    assert torch.equal(ent_a[:, :cut], ent_b[:, :cut])
    assert all(torch.equal(x[:, :cut], y[:, :cut]) for x, y in zip(sel_a, sel_b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(sel_a, sel_b, strict=True))
    # Output j is frame 1 + j: frames 1..cut come from slices before the cut.
    torch.testing.assert_close(a[:, :cut], b[:, :cut], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, cut:], b[:, cut:])


def test_a_clip_scores_the_same_alone_and_padded_in_a_batch():
    video = moving_squares(batch=1, blank=1)  # the blank clip needs fewer tokens
    model = trained_entropy(dynamic(threshold=0.5), video)
    counts = [sum(int(s.sum()) for s in model.patch_selection(video[i:i + 1])[0])
              for i in range(2)]
    assert counts[0] != counts[1]
    with torch.no_grad():
        together = model(video)
        alone = torch.cat([model(video[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-4)


def test_every_parameter_learns_and_the_entropy_model_has_its_own_loss():
    video = moving_squares(blank=1)  # the blank clip uses the largest patch
    model = trained_entropy(dynamic(threshold=1.0), video).train()
    assert all(s.any() for s in model.patch_selection(video)[0])  # every menu size is used
    model.zero_grad()
    loss, extra = model.loss(video)
    loss.backward()
    assert extra["entropy_model_nll"] > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_save_reload_gives_identical_outputs(tmp_path):
    video = moving_squares()
    model = trained_entropy(dynamic(threshold=0.5), video)
    model_io.save_model(tmp_path, model, "vblt")
    again = model_io.load_model(tmp_path)
    assert again.cfg == model.cfg
    with torch.no_grad():
        assert torch.equal(again(video), model(video))


@pytest.mark.usefixtures("int8_compute")
def test_w8a8_quantization_runs_on_a_dynamic_model_and_stays_close(tmp_path):
    video = moving_squares()
    model = trained_entropy(dynamic(threshold=0.5), video)
    with torch.no_grad():
        reference = model(video)
    linearize(model)
    plan = [PlanEntry(name, 0.0, Precision.INT8) for name in sorted(layer_roles(model))]
    quantize_model(model, plan)
    assert precision_counts(model)["int8"] == len(plan)
    model_io.save_model(tmp_path, model, "vblt", extra={"quant_plan": plan_records(plan)})
    with torch.no_grad():
        quant = model_io.load_model(tmp_path)(video)
    assert quant.shape == reference.shape
    agree = (quant.argmax(-1) == reference.argmax(-1)).float().mean()
    assert agree > 0.9


@pytest.mark.parametrize("overrides, message", [
    ({"entropy_threshold": -0.5}, "entropy_threshold"),
    ({"entropy_threshold": 8.0}, "entropy_threshold"),
    ({"patch_levels": 1}, "patch_levels"),
    ({"patch_levels": 7}, "patch_levels"),
    ({"entropy_width": 0}, "entropy_width"),
    ({"patch_budget": 1.5}, "patch_budget"),
    ({"patch_budget": -0.1}, "patch_budget"),
])
def test_bad_dynamic_patching_settings_are_refused(overrides, message):
    settings = {"patch": (1, 4, 4), "patching": "entropy", **overrides}
    with pytest.raises(ConfigError, match=message):
        model_config("vblt", "tiny", **settings)


def test_a_menu_that_does_not_tile_the_frames_is_refused():
    settings = {"patch": (1, 4, 4), "patching": "entropy", "patch_levels": 3}
    model_config("vblt", "tiny", frame_shape=(8, 32, 32, 1), **settings)  # 16x16 tiles 32
    with pytest.raises(ConfigError, match="menu 1x4x4, 1x8x8, 1x16x16.*24x24"):
        model_config("vblt", "tiny", frame_shape=(8, 24, 24, 1), **settings)


@pytest.mark.parametrize("flags, message", [
    (["--thresholds", "9"], "entropy_threshold=9.0"),
    (["--thresholds=-1,2"], "entropy_threshold=-1.0"),
    (["--size", "24"], "1x16x16 (patch_levels=3) does not tile the data's 24x24"),
    (["--thresholds", "two"], "take numbers"),
    (["--budgets", "0"], "must be in (0, 1]"),
    (["--budgets", "1.5"], "patch_budget=1.5"),
])
def test_the_benchmark_refuses_bad_settings_in_one_line_before_any_work(flags, message):
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "dynamic_patching.py"),
                          *flags], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].count("error:") == 1 and not run.stdout


def test_the_benchmark_reports_the_best_dynamic_point_at_half_the_flops():
    from benchmarks.dynamic_patching import choose_dynamic, dominated

    def row(flops, psnr):
        return {"gflops_global": flops, "psnr": psnr}

    results = {"2d": {"static 1x4x4": row(1.0, 12.0), "static 1x8x8": row(0.25, 10.0),
                      "dynamic 1 bits": row(0.8, 12.5), "dynamic budget 0.5": row(0.5, 11.9),
                      "dynamic 3 bits": row(0.3, 11.0)}}
    dynamics = ["dynamic 1 bits", "dynamic budget 0.5", "dynamic 3 bits"]
    assert choose_dynamic(results, ["2d"], dynamics) == "dynamic budget 0.5"  # best at <= half
    assert dominated(results, "2d", ["static 1x4x4", "static 1x8x8"], dynamics) == [
        "static 1x4x4"]
    results["2d"]["dynamic budget 0.5"] = row(0.6, 11.9)  # none at half: the cheapest is reported
    assert choose_dynamic(results, ["2d"], dynamics) == "dynamic 3 bits"
