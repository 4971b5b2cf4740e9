"""Patch convolutions rewritten as the linear layers they are, so int8 GEMMs can run them.

A Conv3d whose stride equals its kernel (a patch embedding: V-BLT's local encoder, ViViT's tubelet
embedding) maps each non-overlapping patch, flattened, through one matrix; a ConvTranspose3d with
stride equal to kernel (a patch un-embedding: V-BLT's local decoder) maps each input vector to one
output patch. Both hold a large share of a video model's weights, so quantizing only nn.Linear
would leave them in float32 and cap the compression ratio. `linearize` swaps them for exact
equivalents built on nn.Linear; the float model's outputs do not change. A per-frame
convolution with "same" padding (kernel 1 x k x k, stride 1: V-BLT's pixel convolutions) is a
linear map of each pixel's k x k neighbourhood, run in int8 as one over the unfolded
neighbourhoods (im2col).

Where the linear computes in float (not yet quantized, fp16 weights, or an int8 layer that the
kernel chooser runs in float because int8 is slower), the forward pass runs the convolution
itself on that float weight: the GEMM form's layout copies cost more than the product at
V-BLT's byte level. So an int8 per-frame convolution chooses its form by timing the whole
convolution in each form (`FrameConv3d.measure`), im2col included: timed as a bare linear,
V-BLT `small`'s pixel convolutions chose int8 in float32 compute and ran 3-4x slower than the
float model (benchmarks/RESULTS.md, issue 31).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from framecast.models.layers import FrameConv, conv3d
from framecast.quant.int8 import Int8Linear, time_forms


def _float_weight(proj: nn.Module, tokens: int, dtype: torch.dtype) -> torch.Tensor | None:
    """The float weight `proj` multiplies by for `tokens` tokens; None where it computes in int8
    (or is being fine-tuned with fake quantization, which has its own forward)."""
    if type(proj) is nn.Linear:
        return proj.weight
    get = getattr(proj, "float_weight", None)
    return None if get is None else get(tokens, dtype)


def _bias(proj: nn.Module, dtype: torch.dtype) -> torch.Tensor | None:
    """`proj`'s bias in `dtype` (an int8 layer keeps its cast copy)."""
    widened = getattr(proj, "widened_bias", None)
    if widened is not None:
        return widened(dtype)
    return None if proj.bias is None else proj.bias.to(dtype)


def _channel_bias(proj: nn.Module, bias: torch.Tensor, k: int) -> torch.Tensor | None:
    """The transposed convolution's own bias (one per output channel) where every position of
    a patch has the same one, as after `from_conv`: the convolution adds it in its output pass
    for free. None where they differ (`_bias_tile`). Kept by layers that keep widened copies."""
    def make() -> torch.Tensor | None:
        rows = bias.view(-1, k)
        return rows[:, 0].contiguous() if bool((rows == rows[:, :1]).all()) else None
    widened = getattr(proj, "widened", None)
    return make() if widened is None else widened((bias.dtype, "channel_bias"), make)


def _bias_tile(proj: nn.Module, bias: torch.Tensor, channels: int, patch: tuple[int, ...],
               grid: tuple[int, int, int], contiguous: bool) -> torch.Tensor:
    """A per-position bias (channels, pt, ph, pw) tiled over a (s, hp, wp) patch grid as
    (1, channels, s*pt, H, W), in the output's memory layout (channels-last where the
    convolution wrote it so): a strided 8-D broadcast add, or one across layouts, costs over an
    order of magnitude more, a tenth of a fine-tuned `small` pass (benchmarks/RESULTS.md, issue
    31 note). Kept by layers that keep widened copies."""
    pt, ph, pw = patch
    s, hp, wp = grid

    def make() -> torch.Tensor:
        tile = bias.view(channels, pt, 1, ph, 1, pw).expand(channels, pt, hp, ph, wp, pw)
        tile = tile.reshape(channels, pt, hp * ph, wp * pw).repeat(1, s, 1, 1)[None]
        return tile.contiguous(memory_format=torch.contiguous_format if contiguous
                               else torch.channels_last_3d)
    widened = getattr(proj, "widened", None)
    key = (bias.dtype, "bias_tile", grid, contiguous)
    return make() if widened is None else widened(key, make)


def _is_patch_conv(conv: nn.Module) -> bool:
    return (isinstance(conv, (nn.Conv3d, nn.ConvTranspose3d)) and conv.stride == conv.kernel_size
            and conv.padding == (0, 0, 0) and conv.dilation == (1, 1, 1) and conv.groups == 1
            and getattr(conv, "output_padding", (0, 0, 0)) == (0, 0, 0))


def _rows_from_conv(layer: nn.Module, conv: nn.Conv3d) -> nn.Module:
    """`layer.proj` takes the convolution's kernel, one flattened row per output channel, and
    its bias; the layer moves to the convolution's device."""
    with torch.no_grad():
        layer.proj.weight.copy_(conv.weight.reshape(conv.out_channels, -1))
        if conv.bias is not None:
            layer.proj.bias.copy_(conv.bias)
    return layer.to(conv.weight.device)


def _is_frame_conv(conv: nn.Module) -> bool:
    """A plain Conv3d (no subclass with its own padding) of kernel (1, k, k'), odd k and k',
    stride 1 and "same" padding: each output pixel maps its input neighbourhood in one frame."""
    if type(conv) not in (nn.Conv3d, FrameConv):
        return False
    kt, kh, kw = conv.kernel_size
    return (kt == 1 and kh % 2 == 1 and kw % 2 == 1 and conv.stride == (1, 1, 1)
            and conv.padding == (0, kh // 2, kw // 2) and conv.dilation == (1, 1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros")


class _ConvAsLinear(nn.Module):
    """A convolution as `self.proj` (a linear) over a layout of its input: `_float(x, weight)`
    runs the convolution on a float weight, `_gemm(x)` the layout and `proj` (int8 where it
    computes so); `forward` takes the form `proj` chose for the input's token count."""

    proj: nn.Module

    def _tokens(self, x: torch.Tensor) -> int:
        """Rows of `proj` the input makes."""
        raise NotImplementedError

    def _float(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The float weight to convolve x with, None for the GEMM form: what `proj` chose for
        x's token count, timed as a bare linear of its shape. That suits the patch layers:
        timed whole, V-BLT `small`'s transposed patch convolution chose int8 in bf16 compute,
        1.6x faster alone and 1.3x slower inside the model (benchmarks/RESULTS.md, issue 31)."""
        return _float_weight(self.proj, self._tokens(x), x.dtype)

    def _linear(self, rows: torch.Tensor) -> torch.Tensor:
        """proj over rows (..., in) on the GEMM path: an int8 layer's int8 product (its float
        forms run as `_float`), or the layer itself (fake quantization while fine-tuning)."""
        proj = self.proj
        return proj._int8_forward(rows) if isinstance(proj, Int8Linear) else proj(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._weight(x)
        if weight is not None:  # computed in the weight's dtype (bf16 where that won)
            return self._float(x.to(weight.dtype), weight).to(x.dtype)
        return self._gemm(x)


def _grid(tokens: int, plane: tuple[int, int]) -> tuple[int, int, int]:
    """(t, h, w) with t * h * w = tokens: whole planes of (h, w) where they divide."""
    h, w = plane
    if tokens >= h * w and tokens % (h * w) == 0:
        return tokens // (h * w), h, w
    return 1, 1, tokens


class FrameConv3d(_ConvAsLinear):
    """Conv3d(cin, cout, (1, kh, kw), padding "same") as Linear(cin * kh * kw, cout) over each
    pixel's unfolded neighbourhood."""

    # The (h, w) frame last seen by an int8 `proj`: `measure` times inputs of it.
    _plane: tuple[int, int] = (16, 16)

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int],
                 bias: bool = True) -> None:
        super().__init__()
        self.kernel = tuple(kernel)
        self.proj = nn.Linear(in_channels * math.prod(kernel), out_channels, bias=bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv3d) -> FrameConv3d:
        # weight (cout, cin, 1, kh, kw): rows in unfold's (cin, kh, kw) order
        return _rows_from_conv(cls(conv.in_channels, conv.out_channels, conv.kernel_size[1:],
                                   conv.bias is not None), conv)

    # (B, cin, T, H, W) -> (B, cout, T, H, W), as the convolution.
    def _tokens(self, x: torch.Tensor) -> int:
        return math.prod(x.shape[:1] + x.shape[2:])

    def _weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """An int8 `proj` chooses by timing the whole convolution in each form (`measure`):
        its int8 form pays an im2col of kh * kw times its input."""
        if not isinstance(self.proj, Int8Linear):
            return super()._weight(x)
        self._plane = tuple(x.shape[3:])
        return self.proj.float_weight(self._tokens(x), x.dtype, self.measure,
                                      type(self).__name__)

    def measure(self, rows: int, k: int, n: int, asymmetric: bool, dtype: torch.dtype,
                forms: tuple[str, ...]) -> dict[str, float]:
        """`kernels.Measure` for this convolution: ms of the whole convolution over `rows`
        pixels of `dtype` in each form (int8: im2col, quantizer, GEMM; float: the convolution
        on the dequantized weight, casts included), on a random W8A8 copy of its geometry."""
        probe = copy.copy(self)  # the geometry; a layer of its own below
        probe._modules = dict(self._modules)
        gen = torch.Generator().manual_seed(0)
        linear = nn.Linear(k, n, bias=self.proj.bias is not None)
        if linear.bias is not None:
            linear.bias.data.copy_(self.proj.bias.float())
        device = self.proj.weight_q.device
        probe.proj = Int8Linear.from_float(linear, asymmetric=asymmetric).to(device)
        cin = k // math.prod(self.kernel)
        x = torch.empty(1, cin, *_grid(rows, self._plane)).normal_(generator=gen).to(device,
                                                                                      dtype)

        def floated(compute: torch.dtype) -> Callable[[], torch.Tensor]:
            weight = probe.proj.widened_weight(compute)
            return lambda: probe._float(x.to(compute), weight).to(dtype)
        return time_forms(forms, lambda: probe._gemm(x), floated, device)

    def _float(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel
        return conv3d(x, weight.view(-1, x.shape[1], 1, kh, kw), _bias(self.proj, weight.dtype),
                      (0, kh // 2, kw // 2))

    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        kh, kw = self.kernel
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        cols = F.unfold(frames, (kh, kw), padding=(kh // 2, kw // 2))  # (B*T, c*kh*kw, H*W)
        y = self._linear(cols.transpose(1, 2))  # (B*T, H*W, cout)
        return y.view(b, t, h, w, -1).permute(0, 4, 1, 2, 3)


class PatchEmbed3d(_ConvAsLinear):
    """Conv3d(cin, cout, kernel=stride=p) as Linear(cin * prod(p), cout) over flattened patches."""

    def __init__(self, in_channels: int, out_channels: int, patch: tuple[int, int, int],
                 bias: bool = True) -> None:
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Linear(in_channels * math.prod(patch), out_channels, bias=bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv3d) -> PatchEmbed3d:
        # weight (cout, cin, pt, ph, pw): rows flattened in the patch's order
        return _rows_from_conv(cls(conv.in_channels, conv.out_channels, conv.kernel_size,
                                   conv.bias is not None), conv)

    # (B, cin, T, H, W) -> (B, cout, T/pt, H/ph, W/pw), as the convolution.
    def _tokens(self, x: torch.Tensor) -> int:
        b, _, t, h, w = x.shape
        pt, ph, pw = self.patch
        return b * (t // pt) * (h // ph) * (w // pw)

    def _float(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, weight.view(-1, x.shape[1], *self.patch),
                        _bias(self.proj, weight.dtype), stride=self.patch)

    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        pt, ph, pw = self.patch
        x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t // pt, h // ph, w // pw, -1)
        return self._linear(x).permute(0, 4, 1, 2, 3)


class PatchUnembed3d(_ConvAsLinear):
    """ConvTranspose3d(cin, cout, kernel=stride=p) as Linear(cin, cout * prod(p)): each input
    vector paints its own output patch."""

    def __init__(self, in_channels: int, out_channels: int, patch: tuple[int, int, int],
                 bias: bool = True) -> None:
        super().__init__()
        self.patch, self.out_channels = tuple(patch), out_channels
        self.proj = nn.Linear(in_channels, out_channels * math.prod(patch), bias=bias)

    @classmethod
    def from_conv(cls, conv: nn.ConvTranspose3d) -> PatchUnembed3d:
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias is not None)
        k = math.prod(conv.kernel_size)
        with torch.no_grad():  # weight (cin, cout, pt, ph, pw) -> rows (cout, pt, ph, pw)
            layer.proj.weight.copy_(conv.weight.reshape(conv.in_channels, -1).t())
            if conv.bias is not None:
                layer.proj.bias.copy_(conv.bias.repeat_interleave(k))
        return layer.to(conv.weight.device)

    # (B, cin, S, Hp, Wp) -> (B, cout, S*pt, Hp*ph, Wp*pw), as the transposed convolution.
    def _tokens(self, x: torch.Tensor) -> int:
        b, _, s, hp, wp = x.shape
        return b * s * hp * wp

    def _float(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        _, cin, s, hp, wp = x.shape
        pt, ph, pw = self.patch
        # rows (cout, pt, ph, pw) of the linear = the transposed convolution's kernel.
        bias = _bias(self.proj, weight.dtype)
        per_channel = None if bias is None else _channel_bias(self.proj, bias, pt * ph * pw)
        y = F.conv_transpose3d(x, weight.t().reshape(cin, self.out_channels, pt, ph, pw),
                               per_channel, stride=self.patch)
        if bias is not None and per_channel is None:  # a bias per position of a patch
            y.add_(_bias_tile(self.proj, bias, self.out_channels, self.patch, (s, hp, wp),
                              y.is_contiguous()))
        return y

    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        b, _, s, hp, wp = x.shape
        pt, ph, pw = self.patch
        y = self._linear(x.permute(0, 2, 3, 4, 1))  # (B, S, Hp, Wp, cout * k)
        y = y.reshape(b, s, hp, wp, self.out_channels, pt, ph, pw)
        # channels-last, as the transposed convolution writes it: the decoder reads each
        # pixel's channels together, and a channels-first result cost V-BLT `small` 17% of
        # its bf16 pass in copies downstream (benchmarks/RESULTS.md, issue 31)
        y = y.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, s * pt, hp * ph, wp * pw,
                                                      self.out_channels)
        return y.permute(0, 4, 1, 2, 3)


def linearize(model: nn.Module, frame_convs: Callable[[str], bool] | None = None) -> list[str]:
    """Replace every patch convolution and per-frame "same" convolution of `model` (in place) by
    its nn.Linear equivalent; returns the names of the replaced modules. Other convolutions
    (UNet-3D's causal ones, grouped ones) are left alone. `frame_convs(name)`: whether to
    replace the per-frame convolution `name` (default all; a model quantized before they were
    replaced keeps them as convolutions, as its saved weights name them)."""
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}" if name else child_name
            if _is_frame_conv(child) and (frame_convs is None or frame_convs(path)):
                kind = FrameConv3d
            elif _is_patch_conv(child):
                kind = PatchEmbed3d if isinstance(child, nn.Conv3d) else PatchUnembed3d
            else:
                continue
            setattr(module, child_name, kind.from_conv(child))
            replaced.append(path)
    return replaced
