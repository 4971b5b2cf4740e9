"""NBP: the block mask, causality across blocks, cached generation equal to uncached, refusal of
blocks that do not tile, training, and save/load as one unit with its tokenizer."""

from __future__ import annotations

import itertools

import pytest
import torch
import toy_models  # noqa: F401  (registers the test tokenizer `toy-patches`)

from framecast import model_io
from framecast.config import ConfigError
from framecast.models import registry
from framecast.models.contract import categorical_nll
from framecast.models.nbp import NBP, block_mask, block_order


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small gain nothing from a second thread; on a loaded machine its spinning
    made them 10-20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_nbp(levels: str = "tiny", seed: int = 0, **overrides) -> NBP:
    torch.manual_seed(seed)
    tokenizer = registry.create("toy-patches", levels)
    return registry.build("nbp", registry.model_config("nbp", "tiny", **overrides),
                          tokenizer=tokenizer)


def sharpen(model: NBP, scale: float = 0.3) -> NBP:
    """Larger random weights, so greedy choices are not near-ties of an untrained model."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() > 1:
                p.normal_(0.0, scale)
    return model.eval()


def blockwise_reference(grid, block, cond):
    """The mask by its definition, token pair by token pair, in block order."""
    cells = list(itertools.product(*(range(g) for g in grid)))  # raster (t, y, x)
    cells = [cells[i] for i in block_order(grid, block).tolist()]
    index = [tuple(c // b for c, b in zip(cell, block, strict=True)) for cell in cells]
    n = cond + len(cells)
    expected = torch.zeros(n, n, dtype=torch.bool)
    expected[:, :cond] = True
    for q, k in itertools.product(range(len(cells)), repeat=2):
        expected[cond + q, cond + k] = index[k] <= index[q]  # time, then rows, then columns
    return expected


def test_block_1x1x1_is_causal_over_the_video_and_the_condition_is_visible_to_all():
    mask = block_mask((2, 2, 2), (1, 1, 1), cond_tokens=3)
    assert mask.shape == (11, 11) and mask.dtype == torch.bool
    assert torch.equal(mask[3:, 3:], torch.ones(8, 8, dtype=torch.bool).tril())
    assert mask[:, :3].all()
    assert not mask[:3, 3:].any()  # the condition never sees the video


def test_blocks_are_ordered_by_time_then_rows_then_columns():
    assert block_order((1, 2, 4), (1, 2, 2)).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    assert block_order((2, 1, 2), (2, 1, 1)).tolist() == [0, 2, 1, 3]
    rows = block_mask((1, 2, 2), (1, 1, 2), cond_tokens=0)  # a block is a row
    assert rows.int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


@pytest.mark.parametrize("grid, block", [
    ((2, 2, 4), (1, 1, 1)), ((2, 2, 4), (1, 2, 2)), ((2, 2, 4), (2, 1, 4)),
    ((2, 2, 4), (1, 1, 4)), ((2, 2, 4), (2, 2, 4)), ((4, 2, 2), (2, 2, 1)),
])
def test_block_mask_matches_its_definition(grid, block):
    assert torch.equal(block_mask(grid, block, cond_tokens=3),
                       blockwise_reference(grid, block, 3))


def test_a_block_that_does_not_tile_the_grid_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^block 1x4x4 does not tile the token grid 4x6x6"):
        block_mask((4, 6, 6), (1, 4, 4), cond_tokens=0)
    model = make_nbp(block=(2, 2, 2))
    model.check_data((5, 8, 8, 1))  # grid 5x4x4: 4 slices after the condition
    with pytest.raises(ConfigError, match=r"block 2x2x2 does not tile the token grid 5x4x4 "
                                          r"after the 1 condition slice\(s\) of 6x4x4"):
        model.check_data((6, 8, 8, 1))
    with pytest.raises(ConfigError, match="block 2x2x2 does not tile the token grid 5x4x4"):
        model.loss(torch.zeros(1, 6, 8, 8, 1, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="multiple of 6"):
        registry.model_config("nbp", "tiny", heads=3)


@pytest.mark.parametrize("block", [(1, 1, 1), (1, 2, 2), (2, 2, 4)])
def test_changing_a_block_leaves_the_predictions_of_it_and_earlier_blocks_bit_identical(block):
    model = make_nbp(block=block, cond_frames=1).eval()
    tokens = torch.randint(0, 4, (2, 5, 4, 4))
    grid, size = (4, 4, 4), block[0] * block[1] * block[2]
    order = block_order(grid, block)
    logits = model(tokens)[:, order]  # (B, N, V) in block order
    blocks = len(order) // size
    for i in sorted({0, (blocks - 3) // 2, blocks - 3}):
        changed = tokens.clone()
        video = changed[:, 1:].reshape(2, -1)  # a view: writes reach `changed`
        video[:, order[(i + 1) * size:(i + 2) * size]] = (
            video[:, order[(i + 1) * size:(i + 2) * size]] + 1) % 4
        again = model(changed)[:, order]
        # Slots of blocks <= i + 1 read blocks <= i: untouched, to the bit.
        assert torch.equal(again[:, :(i + 2) * size], logits[:, :(i + 2) * size])
        assert not torch.allclose(again[:, (i + 2) * size:(i + 3) * size],
                                  logits[:, (i + 2) * size:(i + 3) * size])
    last = tokens.clone()
    last[:, 1:].reshape(2, -1)[:, order[-size:]] += 1
    assert torch.equal(model(last)[:, order], logits)  # the last block is never an input
    other = tokens.clone()
    other[:, 0] = (other[:, 0] + 1) % 4
    assert not torch.allclose(model(other)[:, order[:size]], logits[:, :size])  # the condition


def test_the_loss_is_the_cross_entropy_of_forward_in_raster_order_and_spares_the_tokenizer():
    model = make_nbp(block=(1, 2, 2), cond_frames=2)
    video = torch.randint(0, 256, (2, 4, 8, 8, 1), dtype=torch.uint8)
    tokens = model.tokenizer.encode(video)
    loss, extra = model.loss(video)
    logits = model(tokens)
    assert logits.shape == (2, 2 * 4 * 4, 4)
    assert torch.equal(loss, categorical_nll(logits, tokens[:, 2:].flatten(1)))
    assert 0.0 <= extra["accuracy"] <= 1.0
    loss.backward()
    assert model.tokenizer.offset.grad is None
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.train()
    assert not model.tokenizer.training


@pytest.mark.parametrize("block", [(1, 1, 1), (1, 2, 2), (2, 2, 4)])
def test_cached_generation_equals_uncached_generation_token_for_token(block):
    model = sharpen(make_nbp(block=block, cond_frames=1))
    context = torch.randint(0, 4, (2, 1, 4, 4))
    cached, steps = model.generate_tokens(context, 4, temperature=0.0)
    uncached, steps_uncached = model.generate_tokens(context, 4, temperature=0.0,
                                                     use_cache=False)
    assert cached.shape == (2, 4, 4, 4)
    assert torch.equal(cached, uncached)
    assert steps == steps_uncached == 4 * 16 // (block[0] * block[1] * block[2])
    # Greedy generation is what the model's own forward picks for every block.
    full = torch.cat([context, cached], dim=1)
    assert torch.equal(model(full).argmax(-1), cached.flatten(1))


def test_context_after_the_condition_is_given_not_generated():
    model = sharpen(make_nbp(block=(1, 2, 2), cond_frames=1))
    context = torch.randint(0, 4, (2, 1, 4, 4))
    whole, _ = model.generate_tokens(context, 3, temperature=0.0)
    rest, steps = model.generate_tokens(torch.cat([context, whole[:, :1]], dim=1), 2,
                                        temperature=0.0)
    assert torch.equal(rest, whole[:, 1:]) and steps == 2 * 4
    with pytest.raises(ConfigError, match="the context has 1 token slice"):
        make_nbp(cond_frames=2).generate_tokens(context, 1)


def test_sampling_is_seeded_and_top_1_is_greedy():
    model = sharpen(make_nbp(levels="fine", block=(1, 2, 2)), scale=0.1)
    context = torch.randint(0, 16, (2, 1, 4, 4))
    a, _ = model.generate_tokens(context, 2, temperature=1.0, seed=3)
    b, _ = model.generate_tokens(context, 2, temperature=1.0, seed=3)
    c, _ = model.generate_tokens(context, 2, temperature=1.0, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy, _ = model.generate_tokens(context, 2, temperature=0.0)
    top1, _ = model.generate_tokens(context, 2, temperature=0.7, top_k=1, seed=5)
    assert torch.equal(top1, greedy)


def test_generate_continues_a_video_through_the_tokenizer():
    model = sharpen(make_nbp(block=(1, 2, 2)))
    context = torch.randint(0, 256, (2, 2, 8, 8, 1), dtype=torch.uint8)
    frames = model.generate(context, 3, temperature=0.0)
    assert frames.shape == (2, 3, 8, 8, 1) and frames.dtype == torch.uint8
    tokens, _ = model.generate_tokens(model.tokenizer.encode(context), 3, temperature=0.0)
    assert torch.equal(frames, model.tokenizer.decode(tokens))
    assert model.forward_steps((5, 8, 8, 1), 2) == 3 * 4  # 3 slices of 4 blocks of 2x2


def test_a_frame_independent_tokenizer_decodes_only_the_new_frames_to_the_same_pixels():
    torch.manual_seed(0)
    fsq = registry.build("fsq", registry.model_config("fsq", "tiny", frame_shape=(5, 8, 8, 1)))
    assert fsq.frame_independent and not registry.create("toy-patches", "tiny").frame_independent
    model = sharpen(registry.build("nbp", registry.model_config("nbp", "tiny", block=(1, 2, 2)),
                                   tokenizer=fsq))
    context = torch.randint(0, 256, (2, 2, 8, 8, 1), dtype=torch.uint8)
    frames = model.generate(context, 3, temperature=0.0)
    tokens = model.tokenizer.encode(context)
    new, _ = model.generate_tokens(tokens, 3, temperature=0.0)
    whole = model.tokenizer.decode(torch.cat([tokens, new], dim=1))[:, -3:]  # with the context
    assert frames.shape == (2, 3, 8, 8, 1)
    assert (frames.int() - whole.int()).abs().max() <= 1  # float rounding of other batch sizes


def test_the_generator_overfits_one_batch():
    model = make_nbp("coarse", block=(1, 1, 2))  # grid 4x2x2: 12 tokens to predict per clip
    # Video made of tokens, so all four codes occur and the clips' conditions differ.
    video = model.tokenizer.decode(torch.tensor([[[[2, 3], [1, 0]]], [[[2, 0], [3, 0]]]]))
    video = torch.cat([video, model.tokenizer.decode(torch.randint(0, 4, (2, 3, 2, 2)))], 1)
    before = model.evaluate(video.numpy())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):  # ~150 steps needed; stop once memorised
        loss, _ = model.loss(video)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.02:
            break
    after = model.evaluate(video.numpy())
    assert before["loss"] > 1.0 and after["loss"] < 0.05
    assert after["accuracy"] == 1.0


def test_a_saved_generator_reloads_with_its_tokenizer_to_identical_outputs(tmp_path):
    model = sharpen(make_nbp(block=(1, 2, 2)))
    with torch.no_grad():
        model.tokenizer.offset.fill_(5.0)
    video = torch.randint(0, 256, (2, 3, 8, 8, 1), dtype=torch.uint8)
    tokens = model.tokenizer.encode(video)
    folder = model_io.save_model(tmp_path / "nbp", model)
    meta = model_io.read_meta(folder)
    assert meta["name"] == "nbp"
    assert meta["components"] == {"tokenizer": {"name": "toy-patches",
                                                "config": {"levels": 4, "patch": 2}}}
    loaded = model_io.load_model(folder)
    assert isinstance(loaded, NBP) and loaded.tokenizer.offset.item() == 5.0
    assert torch.equal(loaded(tokens), model(tokens))
    assert torch.equal(loaded.generate(video, 2, temperature=0.8, top_k=3, seed=2),
                       model.generate(video, 2, temperature=0.8, top_k=3, seed=2))


def test_the_speed_benchmark_takes_block_shapes_and_refuses_ones_it_cannot_compare(capsys):
    import argparse

    from benchmarks.nbp_speed import parse_blocks

    parser = argparse.ArgumentParser(prog="nbp_speed.py")
    assert parse_blocks("1x1x1, 1x8x8,2x4x4,1x1x1", parser) == [(1, 1, 1), (1, 8, 8), (2, 4, 4)]
    for text, message in [("1x8x8,1x1x8", "must include 1x1x1 and 1x8x8"),
                          ("1x1x1,1x8x8,axb", "block='axb'"),
                          ("1x1x1,1x8x8,0x8x8", "0x8x8 has a side < 1")]:
        with pytest.raises(SystemExit) as stop:
            parse_blocks(text, parser)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 2  # usage line + the reason


def test_benchmark_options_take_comma_lists_and_refuse_bad_ones(capsys):
    import argparse

    from benchmarks.lib.cli import parse_kinds, parse_sizes

    parser = argparse.ArgumentParser(prog="bench.py")
    assert parse_sizes("1, 8,1,4", parser, "--batches") == [1, 8, 4]
    assert parse_kinds("3d, 2d,3d", parser) == ["3d", "2d"]
    for call, text in [(lambda t: parse_sizes(t, parser, "--batches"), t) for t in
                       ("1,x", "0,8", "")] + [(lambda t: parse_kinds(t, parser), t) for t in
                                              ("2d,4d", " ")]:
        with pytest.raises(SystemExit) as stop:
            call(text)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert repr(text) in err and len(err.strip().splitlines()) == 2  # usage + the reason


def test_benchmark_help_shows_each_default_once_and_only_where_there_is_one():
    from benchmarks.lib.cli import new_parser

    parser = new_parser("doc\n    indented as written")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per row")
    parser.add_argument("--steps", type=int, default=None, help="steps (default 300)")
    parser.add_argument("--size", type=int, default=16, help="frame size (default 32 on GPU)")
    parser.add_argument("--out", default="", help="folder")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    text = " ".join(parser.format_help().split())
    assert "    indented as written" in parser.format_help()
    assert "rounds per row (default: 3)" in text and "steps (default 300) --size" in text
    assert "(default 32 on GPU) --out" in text and "folder --quick" in text
    assert text.endswith("smoke run")


def test_top_k_sampling_draws_from_the_tempered_softmax_of_the_k_likeliest_only():
    """Per row: argmax at temperature 0; with top_k, only the k likeliest tokens, at the
    frequencies of their tempered softmax renormalised; a row's draws do not depend on its
    batch (each row its own generator)."""
    from framecast.models.nbp import sample_tokens

    torch.manual_seed(0)
    vocab, n = 50, 4000
    row = torch.randn(vocab) * 2
    logits = torch.stack([row.expand(n, vocab), row.expand(n, vocab), torch.randn(n, vocab)])
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    tokens = sample_tokens(logits, [0.7, 0.0, 1.0], [5, 0, 0], gens)
    top5 = row.topk(5).indices
    assert set(tokens[0].tolist()) <= set(top5.tolist())
    want = (row[top5] / 0.7).softmax(-1)
    got = torch.stack([(tokens[0] == t).float().mean() for t in top5])
    assert torch.allclose(got, want, atol=0.03), (got, want)
    assert torch.equal(tokens[1], logits[1].argmax(-1))
    alone = sample_tokens(logits[:1], [0.7], [5], [torch.Generator().manual_seed(1)])
    assert torch.equal(alone[0], tokens[0])


@pytest.mark.parametrize("temperature", [1e-300, 1e-40, 1e-30, 1e-8])
def test_a_tiny_temperature_draws_the_argmax_not_nan(temperature):
    """Before, logits / 1e-300 overflowed to inf and softmax gave nan: torch.multinomial
    raised, failing every request of the served batch. A tiny temperature is the greedy
    limit: each draw is the argmax, whatever the logits' scale."""
    from framecast.models.nbp import sample_tokens

    torch.manual_seed(0)
    logits = torch.randn(2, 64, 30) * 50
    for k in (0, 5):
        tokens = sample_tokens(logits, [temperature] * 2, [k] * 2,
                               [torch.Generator().manual_seed(s) for s in (0, 1)])
        assert torch.equal(tokens, logits.argmax(-1))


@pytest.mark.parametrize(("settings", "words"), [
    ((float("inf"), 0, 0), "temperature=inf"), ((float("nan"), 0, 0), "temperature=nan"),
    ((-0.5, 0, 0), "temperature=-0.5"), ((1.0, -1, 0), "top_k=-1"),
    ((1.0, 0, 2**64), f"seed={2**64}"), ((1.0, 0, -1), "seed=-1")])
def test_sampling_settings_the_generator_cannot_use_are_refused_in_one_line(settings, words):
    from framecast.models.nbp import MAX_SEED, check_sampling

    with pytest.raises(ValueError, match=words.replace("+", r"\+")):
        check_sampling(*settings)
    check_sampling(1e-300, 0, MAX_SEED)  # the bounds themselves are fine
    torch.Generator().manual_seed(MAX_SEED)
