import numpy as np
import pytest

from framecast import metrics


def video(value, shape=(2, 3, 16, 16, 1)):
    return np.full(shape, value, np.uint8)


def test_mse_and_psnr_against_known_values():
    zeros, white = video(0), video(255)
    assert np.allclose(metrics.mse_per_frame(zeros, white), 1.0)
    assert np.allclose(metrics.psnr_per_frame(zeros, white), 0.0)
    # 51/255 = 0.2 everywhere: MSE 0.04, PSNR 10 log10(25) = 13.98 dB
    assert np.allclose(metrics.mse_per_frame(zeros, video(51)), 0.04)
    assert np.allclose(metrics.psnr_per_frame(zeros, video(51)), 10 * np.log10(25))


def test_identical_frames_give_perfect_scores():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    assert np.allclose(metrics.mse_per_frame(v, v), 0.0)
    assert np.allclose(metrics.psnr_per_frame(v, v), 100.0)
    assert np.allclose(metrics.ssim_per_frame(v, v), 1.0)


def test_ssim_drops_with_noise():
    rng = np.random.default_rng(1)
    ramp = np.linspace(40, 200, 32)
    v = np.broadcast_to((ramp[:, None] + ramp[None, :])[None, None, :, :, None] / 2,
                        (1, 2, 32, 32, 1)).astype(np.uint8)
    noisy = np.clip(v.astype(int) + rng.integers(-60, 60, v.shape), 0, 255).astype(np.uint8)
    assert (metrics.ssim_per_frame(noisy, v) < 0.5).all()
    assert (metrics.ssim_per_frame(v, v) > 0.999).all()


def test_copy_last_frame_predicts_each_frame_by_its_predecessor():
    v = np.arange(6, dtype=np.uint8).reshape(1, 6, 1, 1, 1) * 10
    pred = metrics.copy_last_frame(v, context_frames=2)
    assert pred[0, :, 0, 0, 0].tolist() == [10, 20, 30, 40]
    with pytest.raises(ValueError, match="context_frames=6 must be in 1..5"):
        metrics.copy_last_frame(v, context_frames=6)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="must both be"):
        metrics.mse_per_frame(video(0), video(0, (2, 2, 16, 16, 1)))
    with pytest.raises(TypeError, match="expected uint8 video, got float64"):
        metrics.mse_per_frame(np.zeros((1, 1, 4, 4, 1)), np.zeros((1, 1, 4, 4, 1)))


def test_trimmed_decoding_ignores_a_thin_tail_but_blends_real_modes():
    import torch

    from framecast.distribution import decode_bytes

    p = torch.full((256,), 0.03 / 255)
    p[0] = 0.97  # black, with 3% of mass spread over every other byte
    two = torch.zeros(256)
    two[0], two[200] = 0.5, 0.5  # a moving edge: black or grey, equally likely
    flat = torch.full((256,), 1 / 256)  # nothing is likely: the plain mean
    logits = torch.stack([p, two, flat]).log()
    assert decode_bytes(logits, "mean").tolist()[:2] == [4, 100]  # the tail drags black to 4
    assert decode_bytes(logits).tolist() == [0, 100, 128]
    assert decode_bytes(logits, "argmax").tolist()[:2] == [0, 0]


@pytest.mark.parametrize("decode", ["trimmed", "mean", "argmax"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_with_entropy_is_decode_bytes_and_entropy_bits_from_one_softmax(decode, dtype):
    """The serving and rollout path's fused, chunked form: the bytes `decode_bytes` gives and
    the bits `entropy_bits` gives, across chunk boundaries, the caller's logits untouched."""
    import torch

    from framecast.distribution import CHUNK_PIXELS, decode_bytes, decode_with_entropy

    torch.manual_seed(0)
    pixels = 2 * CHUNK_PIXELS + 37  # a partial last chunk
    logits = (torch.randn(pixels, 256) * 4).to(getattr(torch, dtype)).view(-1, 3, 1, 256)
    logits[0, 0, 0] = -30.0
    logits[0, 0, 0, 200] = 30.0  # all mass on 200: exactly 0 bits, byte 200
    logits[0, 1, 0] = 0.0  # uniform: exactly 8 bits
    kept = logits.clone()
    got, bits = decode_with_entropy(logits, decode)
    assert torch.equal(logits, kept)
    assert got.shape == bits.shape == logits.shape[:-1] and got.dtype == torch.uint8
    assert bits.dtype == torch.float32
    assert torch.equal(got, decode_bytes(logits.float(), decode))
    torch.testing.assert_close(bits, metrics.entropy_bits(logits), atol=2e-5, rtol=1e-5)
    assert got[0, 0, 0] == 200 and bits[0, 0, 0] == pytest.approx(0.0, abs=1e-5)
    assert bits[0, 1, 0] == pytest.approx(8.0, abs=1e-5)
    with pytest.raises(ValueError, match="unknown"):
        decode_with_entropy(logits, "median")
