"""Masks, 3D RoPE and entropy: the pure building blocks."""

import copy
import math

import pytest
import torch

from framecast.metrics import entropy_bits
from framecast.models.layers import (
    Block,
    BlockCausal,
    apply_rope,
    block_causal_mask,
    grid_positions,
    rope_3d_angles,
    rope_rotations,
)


def test_mask_for_three_frames_of_2x2_tokens_equals_the_papers_figure_4():
    # 12 tokens: full 4x4 blocks on the diagonal, past blocks allowed, future blocks masked.
    ones, zeros = torch.ones(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)
    expected = torch.cat([
        torch.cat([ones, zeros, zeros], dim=1),
        torch.cat([ones, ones, zeros], dim=1),
        torch.cat([ones, ones, ones], dim=1),
    ])
    assert torch.equal(block_causal_mask(3, 4), expected)


def test_block_size_one_is_the_ordinary_causal_mask():
    assert torch.equal(block_causal_mask(5, 1), torch.tril(torch.ones(5, 5, dtype=torch.bool)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_causal_attention_computes_what_the_dense_mask_computes(dtype):
    """Each query block against its key prefix (`BlockCausal`): the dense masked product's
    outputs, a future token changing nothing before its block, in training mode too."""
    torch.manual_seed(0)
    block = Block(24, 2).to(dtype)
    x = torch.randn(3, 4 * 5, 24, dtype=dtype)
    angles = rope_3d_angles(grid_positions(4, 1, 5), 12)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    for training in (False, True):
        block.train(training)
        with torch.no_grad():
            want = block(x, angles, block_causal_mask(4, 5))
            got = block(x, angles, BlockCausal(4, 5))
        torch.testing.assert_close(got, want, **tol)
    changed = x.clone()
    changed[:, 15:] = torch.randn(3, 5, 24, dtype=dtype)  # the last block only
    with torch.no_grad():
        torch.testing.assert_close(block(changed, angles, BlockCausal(4, 5))[:, :15], got[:, :15])


@pytest.mark.parametrize("rope_heads", [False, True])
def test_a_blocks_last_tokens_alone_are_its_full_outputs_there(rope_heads):
    """`Block.last_tokens`: the last block of a block-causal pass, its queries only."""
    torch.manual_seed(1)
    block = Block(24, 2).eval()
    x = torch.randn(2, 3 * 4, 24)
    angles = rope_3d_angles(grid_positions(3, 2, 2), 12)
    if rope_heads:  # one set of angles per head (V-BLT's rope_width="model")
        angles = torch.stack([angles, angles.flip(0)])
    with torch.no_grad():
        want = block(x, angles, block_causal_mask(3, 4))[:, -4:]
        torch.testing.assert_close(block.last_tokens(x, angles, 4), want, atol=1e-5, rtol=1e-5)


def test_grid_positions_are_slice_major():
    pos = grid_positions(2, 2, 3)
    assert pos.shape == (12, 3)
    assert pos[0].tolist() == [0, 0, 0] and pos[1].tolist() == [0, 0, 1]
    assert pos[3].tolist() == [0, 1, 0] and pos[6].tolist() == [1, 0, 0]


def test_rope_frequencies_follow_the_paper():
    # w_k = 10000^(-6k/d), k = 1..d/6, one group per axis (t | y | x).
    d = 12
    angles = rope_3d_angles(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]), d)
    w = [10000 ** (-6 * k / d) for k in (1, 2)]
    assert torch.allclose(angles[0], torch.tensor([w[0], w[1], 0, 0, 0, 0]))
    assert torch.allclose(angles[1], torch.tensor([0, 0, w[0], w[1], 0, 0]))
    assert torch.allclose(angles[2], torch.tensor([0, 0, 0, 0, 2 * w[0], 2 * w[1]]))


def test_rope_preserves_norms():
    x = torch.randn(5, 24)
    rotated = apply_rope(x, rope_3d_angles(torch.randn(5, 3) * 10, 24))
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_rope_makes_q_dot_k_depend_only_on_the_txy_offset():
    torch.manual_seed(0)
    q, k = torch.randn(48), torch.randn(48)

    def score(pq, pk):
        a = rope_3d_angles(torch.tensor([pq, pk], dtype=torch.float32), 48)
        rq, rk = apply_rope(torch.stack([q, k]), a)
        return float(rq @ rk)

    base = score([1, 2, 3], [0, 5, 1])
    for shift in ([4, 0, 0], [0, -3, 7], [2.5, 1, -1]):
        moved = score([1 + shift[0], 2 + shift[1], 3 + shift[2]],
                      [0 + shift[0], 5 + shift[1], 1 + shift[2]])
        assert math.isclose(moved, base, rel_tol=1e-4, abs_tol=1e-4)
    # ...and it does depend on the offset along each axis.
    assert not math.isclose(score([2, 2, 3], [0, 5, 1]), base, abs_tol=1e-3)
    assert not math.isclose(score([1, 3, 3], [0, 5, 1]), base, abs_tol=1e-3)
    assert not math.isclose(score([1, 2, 4], [0, 5, 1]), base, abs_tol=1e-3)


def test_entropy_of_uniform_is_8_bits_and_of_one_hot_is_zero():
    assert torch.allclose(entropy_bits(torch.zeros(3, 256)), torch.full((3,), 8.0))
    one_hot = torch.full((256,), -1e9)
    one_hot[17] = 0.0
    assert torch.allclose(entropy_bits(one_hot), torch.tensor(0.0), atol=1e-6)
    two = torch.full((256,), -1e9)
    two[[3, 9]] = 0.0
    assert torch.allclose(entropy_bits(two), torch.tensor(1.0))


def test_rope_as_one_complex_product_equals_eq5_in_real_arithmetic_in_every_form():
    """apply_rope multiplies complex pairs; eq. (5) written out: x0 cos - x1 sin, x0 sin + x1
    cos. Same result for real angles, precomputed rotations, a strided view (q of a fused qkv
    projection), a view with odd strides, and the ONNX-export branch; gradients too."""
    torch.manual_seed(0)
    angles = torch.rand(5, 6) * 20

    def eq5(x: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = torch.stack([x0 * angles.cos() - x1 * angles.sin(),
                           x0 * angles.sin() + x1 * angles.cos()], dim=-1)
        return out.flatten(-2)

    q = torch.randn(2, 5, 3, 4, 12).permute(2, 0, 3, 1, 4)[0]  # (B, heads, L, hd), strided
    odd = torch.randn(2, 5, 13)[..., :12]  # odd strides: view_as_complex cannot view it
    for x in (torch.randn(2, 5, 12), q, odd):
        want = eq5(x)
        assert torch.allclose(apply_rope(x, angles), want, atol=1e-5)
        assert torch.allclose(apply_rope(x, rope_rotations(angles)), want, atol=1e-5)
    x = torch.randn(3, 5, 12, requires_grad=True)
    apply_rope(x, angles).square().sum().backward()
    got = x.grad.clone()
    x.grad = None
    eq5(x).square().sum().backward()
    assert torch.allclose(got, x.grad, atol=1e-4)
    assert apply_rope(torch.randn(5, 12).bfloat16(), angles).dtype == torch.bfloat16
    from unittest import mock
    with mock.patch("torch.onnx.is_in_onnx_export", return_value=True):  # no complex in ONNX
        assert torch.allclose(apply_rope(q, rope_rotations(angles)), eq5(q), atol=1e-5)



@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_frame_conv_is_the_per_frame_conv3d(batch, layout):
    """`FrameConv` (oneDNN's kernel for a float32 batch of one, outside autograd) computes what
    nn.Conv3d with a (1, 3, 3) kernel computes, with the same state dict both ways, with and
    without gradients."""
    from torch import nn

    from framecast.models.layers import FrameConv

    torch.manual_seed(2)
    conv3d = nn.Conv3d(5, 7, (1, 3, 3), padding=(0, 1, 1))
    conv = FrameConv(5, 7)
    conv.load_state_dict(conv3d.state_dict())
    assert conv3d.load_state_dict(conv.state_dict()) is not None
    x = torch.randn(batch, 4, 6, 9, 5).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
    if layout == "contiguous":
        x = x.contiguous()
    with torch.no_grad():
        want = conv3d(x)
        torch.testing.assert_close(conv(x), want, atol=1e-5, rtol=1e-5)
        half = copy.deepcopy(conv).to(torch.bfloat16)
        torch.testing.assert_close(half(x.to(torch.bfloat16)).float(), want, atol=0.1,
                                   rtol=0.05)
    out = conv(x)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), want, atol=1e-5, rtol=1e-5)
    assert conv.weight.grad is not None
    with pytest.raises(ValueError, match="odd"):
        FrameConv(5, 7, (2, 3))
