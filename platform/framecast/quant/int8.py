"""int8 quantizers and a W8A8 linear layer that multiplies int8 on an integer kernel.

W8A8 as in VQ-ViT (adaptive quantization of Vision Transformers): weights int8 per output channel
(static), activations int8 per token (dynamic, computed at run time), int32 accumulation on an
integer kernel (`kernels`), then one rescale: y = (x_q @ W_q^T) * s_x * s_w + b. The layer stores
int8 weights, not floats: this is deployment, not fake quantization. Scales, zero points and codes
come from `maths`, the formulas the fake quantization of `learnable` uses too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from framecast.quant import kernels, maths
from framecast.quant.maths import QMAX, symmetric_qmax


def quantize_symmetric(x: torch.Tensor, dim: int = -1, clip: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and float scales with x ~= q * scale, one scale per slice along `dim`
    (per output channel for a weight (out, in) with dim=-1; per token for activations).
    `clip`: a learned beta, scale (max|x| + beta * std(x)) / 127 (`maths.clip_range`).
    Rounding error is at most scale / 2 per element inside the range."""
    x = x.detach().float()
    rng = maths.clip_range(x, None if clip is None else clip.detach(), dim)
    return maths.symmetric_codes(x, rng).to(torch.int8), rng / QMAX


def quantize_asymmetric(x: torch.Tensor, dim: int = -1, bits: int = 8
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int8 values, scales and integer zero points with x ~= (q - zero) * scale over the range
    [min, max] of each slice: for skewed distributions (VQ-ViT's 'int8 asymmetric' precision).
    Codes span [-2^(bits-1), 2^(bits-1) - 1] (bits=7 for a GEMM path that takes 7-bit codes).
    Also the per-token hot path of asymmetric layers (run fused, see `kernels.fused`)."""
    x = x.detach()
    scale, zero = maths.asymmetric_grid(x, dim, bits)
    q = maths.asymmetric_codes(x.float(), scale, zero, bits)
    return q.to(torch.int8), scale, zero


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None
               ) -> torch.Tensor:
    return ((q.float() - zero) if zero is not None else q.float()) * scale


def quantize_tokens(x: torch.Tensor, delta: torch.Tensor | None = None, qmax: int = QMAX
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric int8 of a 2-D activation (tokens, features): the hot path of every W8A8
    layer (run fused, see `kernels.fused`: one pass over the tokens). Codes span [-qmax, qmax]
    (63 for a GEMM path that takes 7-bit codes). With a delta the scale is
    (max|x| + delta * std(x)) / qmax (VQ-ViT's learned LayerNorm-output scale) and values beyond
    it are clipped."""
    rng = maths.clip_range(x, delta)
    return maths.symmetric_codes(x, rng, qmax).to(torch.int8), rng / qmax


def quantized_alike(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...],
                    scale_rtol: float = 0.05) -> bool:
    """Whether two quantizations of the same rows, (codes, scales[, zero points]), agree as
    quantizations: scales within `scale_rtol`, each dequantized value within two steps of the
    other's and no bias of a quarter step on average. Exact codes are not asked: a fused
    multiply-add rounds a tie the other way (1 code in 2M measured), a zero point at a tie
    shifts its row's codes with it, and a compiler that keeps a bf16 input's sums in float32
    gives slightly other scales. A garbage kernel (1e26, NaN) fails, and so does one whose codes
    are off by one in one direction. Rows whose eager scale is not finite (NaN or inf inputs)
    are not compared."""
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want, strict=True)):
        return False
    rows = torch.isfinite(want[1]).all(dim=-1)
    if not bool(rows.any()):
        return True

    def dequantized(out: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        codes, scale = out[0][rows].float(), out[1][rows].float()
        if len(out) == 3:
            codes = codes - out[2][rows].float()
        return codes * scale, scale

    values, scale = dequantized(got)
    values_want, scale_want = dequantized(want)
    if not bool(((scale - scale_want).abs() <= scale_rtol * scale_want.abs()).all()):
        return False
    apart = (values - values_want) / torch.maximum(scale, scale_want).clamp_min(1e-30)
    return bool((apart.abs() <= 2.0).all()) and abs(float(apart.mean())) <= 0.25


_quantize_tokens_fused = kernels.fused(quantize_tokens, quantized_alike)
_quantize_asymmetric_fused = kernels.fused(quantize_asymmetric, quantized_alike)


class KeepsWidened(nn.Module):
    """Low-precision storage with a widened copy made on first use and kept: converting on every
    call costs more than the work itself for small token counts. The copy is dropped whenever it
    could be stale: the module moves or changes dtype (`_apply`), loads a state dict, or is
    pickled (Ray ships models by pickling; the copy would double what travels)."""

    def __init__(self) -> None:
        super().__init__()
        self._wide: dict[object, torch.Tensor] = {}  # keyed by dtype (and role)
        self.register_load_state_dict_post_hook(_forget_wide)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._wide = {}
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_wide": {}}

    def widened(self, key: object, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The copy for `key` (a dtype), made by `make()` the first time."""
        if key not in self._wide:
            self._wide[key] = make()
        return self._wide[key]

    def widened_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The layer's `bias` buffer (or None) in `dtype`, cast once and kept."""
        bias = self.bias
        if bias is None or dtype == bias.dtype:
            return bias
        return self.widened((dtype, "bias"), lambda: bias.to(dtype))


def _forget_wide(module: KeepsWidened, _incompatible_keys: object) -> None:
    module._wide = {}


def _refresh_after_load(module: Int8Linear, _incompatible_keys: object) -> None:
    module.refresh()  # a module-level hook (not a lambda) keeps the layer picklable


class Int8Linear(KeepsWidened):
    """A linear layer holding int8 weights (per output channel) that quantizes its input per
    token at run time and multiplies int8 x int8 -> int32 on the integer kernel measured fastest
    for its shape (`kernels.gemm_path`).

    symmetric: y = (x_q @ W_q^T) * s_x * s_w + b.
    asymmetric (VQ-ViT's middle precision, for skewed weights and activations): weights and
    tokens carry integer zero points z; (x_q - z_x).(W_q - z_w) expands into the same int32
    product plus integer corrections, so the GEMM stays int8 x int8.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 asymmetric: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.asymmetric = asymmetric
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        # Learned activation clipping (symmetric only); a buffer so it travels with the state.
        self.register_buffer("act_delta", torch.zeros(()))
        if asymmetric:
            self.register_buffer("weight_zero", torch.zeros(out_features, dtype=torch.int32))
            self.register_buffer("weight_colsum", torch.zeros(out_features, dtype=torch.int32))
        self._delta: torch.Tensor | None = None
        self._packed: dict[str, object] = {}  # per GEMM path: its weight layout, built on use
        # The compute form chosen on this machine per token class and input dtype
        # (`compute_form`); not saved or pickled: another machine measures its own.
        self.forms: dict[tuple[int, torch.dtype], str] = {}
        self._forms_epoch = kernels.epoch()
        # (weight, bias) per form key, weight None for int8: the hot path's one dict lookup
        # (the full choice on every call costs as much as a small layer's GEMM).
        self._routes: dict[tuple[int, torch.dtype], tuple] = {}
        self._routes_at = kernels.routing()
        self._correction: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def refresh(self) -> None:
        """Derive what forward needs from the buffers (after loading or setting them)."""
        self._delta = self.act_delta if float(self.act_delta) else None
        self._packed, self._correction, self._wide, self._routes = {}, None, {}, {}
        if self.asymmetric:
            self.weight_colsum.copy_(self.weight_q.sum(dim=1, dtype=torch.int32))

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to(device) and friends: the cached tensors belong to the old buffers.
        out = super()._apply(fn, recurse)
        self._delta = None if self._delta is None else self.act_delta
        self._packed, self._correction, self.forms, self._routes = {}, None, {}, {}
        return out

    def __getstate__(self) -> dict:
        # opaque oneDNN tensors: rebuilt, never copied or pickled; forms: measured per machine
        return {**super().__getstate__(), "_packed": {}, "forms": {}, "_routes": {}}

    @classmethod
    def from_float(cls, linear: nn.Linear, *, asymmetric: bool = False) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    asymmetric=asymmetric)
        w = linear.weight.detach()
        if asymmetric:
            q, scale, zero = quantize_asymmetric(w, dim=1)
            layer.weight_zero.copy_(zero.squeeze(1).int())
        else:
            q, scale = quantize_symmetric(w, dim=1)  # (out, in), (out, 1)
        layer.weight_q.copy_(q)
        layer.weight_scale.copy_(scale.squeeze(1))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        layer.refresh()
        return layer.to(w.device)

    def float_weight(self, tokens: int, dtype: torch.dtype = torch.float32,
                     measure: kernels.Measure | None = None, kind: str = "linear"
                     ) -> torch.Tensor | None:
        """The weight this layer multiplies by for `tokens` tokens of `dtype`, in the dtype it
        computes in (float32 or bf16: the caller casts its input to it), or None where it
        computes in int8 (`compute_form`)."""
        form = self.compute_form(tokens, dtype, measure, kind)
        return None if form == "int8" else self.widened_weight(kernels.FORM_DTYPES[form])

    def compute_form(self, tokens: int, dtype: torch.dtype,
                     measure: kernels.Measure | None = None, kind: str = "linear") -> str:
        """'int8', `kernels.FLOAT` or `kernels.BF16` for `tokens` tokens of `dtype`: the form
        this layer chose for their token class, measured the first time it meets it
        (`kernels.layer_mode`) and kept in `forms` (shown by repr and in jobs.quantize's plan);
        int8 while `kernels.choose` or the environment force int8 compute. `measure` and
        `kind`: where the layer is a convolution's GEMM form, its owner times the whole
        convolution in each form (`gemm_form`), not the product alone."""
        if kernels.int8_forced():
            return "int8"
        if self._forms_epoch != kernels.epoch():  # the measurements were forgotten
            self.forms, self._forms_epoch = {}, kernels.epoch()
        key = kernels.form_key(tokens, dtype)
        if key not in self.forms:
            self.forms[key] = kernels.layer_mode(tokens, self.in_features, self.out_features,
                                                 self.asymmetric, self.weight_q.device,
                                                 measure or functools.partial(
                                                     _measure_layer, device=self.weight_q.device),
                                                 dtype, kind)
        return self.forms[key]

    def widened_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The dequantized weight in `dtype`, made once and kept."""
        return self.widened(dtype, lambda: self.dequantized_weight().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.numel() // self.in_features
        key = (kernels.token_class(tokens), x.dtype)
        if self._routes_at != kernels.routing():
            self._routes, self._routes_at = {}, kernels.routing()
        route = self._routes.get(key)
        if route is None:
            weight = self.float_weight(tokens, x.dtype)
            route = self._routes[key] = (
                weight, None if weight is None else self.widened_bias(weight.dtype))
        weight, bias = route
        if weight is None:
            return self._int8_forward(x)
        if weight.dtype == x.dtype:
            return F.linear(x, weight, bias)
        return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)

    def _int8_forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (tokens, in)
        path = kernels.gemm_path(x2.shape[0], self.in_features, self.out_features, x2.device)
        if self.asymmetric:
            xq, xs, xz = _quantize_asymmetric_fused(x2, 1, path.act_bits)
        else:
            xq, xs = _quantize_tokens_fused(x2, self._delta, symmetric_qmax(path.act_bits))
        if path.pack is not None and path.name not in self._packed:
            self._packed[path.name] = path.pack(self.weight_q)
        y = path.run(xq, self.weight_q, self.weight_scale, self._packed.get(path.name))
        if self.asymmetric:
            # (x_q - z_x).(W_q - z_w) = x_q.W_q - (rowsum(x_q) - K z_x) z_w - z_x colsum(W_q): the
            # correction is rank 2, one small GEMM into the (weight-scaled) product.
            if self._correction is None:
                self._correction = torch.stack([self.weight_zero.float(),
                                                self.weight_colsum.float()]) * self.weight_scale
            rowsum = xq.sum(dim=1, keepdim=True, dtype=torch.int32).float()
            left = torch.cat([rowsum - self.in_features * xz, xz], dim=1)  # (tokens, 2)
            y.addmm_(left, self._correction, alpha=-1.0)
        # Per-token scale and bias in one pass, in place: y = y * s_x + b.
        y = y.mul_(xs) if self.bias is None else torch.addcmul(self.bias, y, xs, out=y)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        q = self.weight_q.float()
        if self.asymmetric:
            q = q - self.weight_zero[:, None]
        return q * self.weight_scale[:, None]

    def chosen_forms(self) -> dict[str, str]:
        """{'<token class>@<input dtype>': form} chosen so far on this machine."""
        return {kernels.form_name(key): form for key, form in self.forms.items()}

    def extra_repr(self) -> str:
        kind = "asymmetric" if self.asymmetric else "symmetric"
        forms = ", ".join(f"{name}: {form}" for name, form in self.chosen_forms().items())
        return (f"in={self.in_features}, out={self.out_features}, W8A8 {kind}"
                f"{f', computes {forms}' if forms else ''}")


def time_forms(forms: tuple[str, ...], int8: Callable[[], torch.Tensor],
               floated: Callable[[torch.dtype], Callable[[], torch.Tensor]],
               device: torch.device | str = "cpu") -> dict[str, float]:
    """ms of each of `forms` (a `kernels.Measure` answer): `int8` for the int8 form,
    `floated(dtype)` for a float form computing in `dtype`. Each is warmed up (the quantizer
    compiles on its first call in the process), then they alternate, the fastest of five calls
    each (replicas warming up side by side add noise). On CUDA each call is timed to the end
    of its kernels, not of their launch."""
    runs = {form: int8 if form == "int8" else floated(kernels.FORM_DTYPES[form])
            for form in forms}
    if torch.device(device).type == "cuda":
        runs = {form: _synchronized(run) for form, run in runs.items()}
    with torch.no_grad():
        for run in runs.values():
            run()
        return kernels.time_side_by_side(runs, 5)[0]


def _synchronized(run: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def call() -> torch.Tensor:
        out = run()
        torch.cuda.synchronize()
        return out
    return call


def _measure_layer(rows: int, k: int, n: int, asymmetric: bool,
                   dtype: torch.dtype = torch.float32,
                   forms: tuple[str, ...] = ("int8", kernels.FLOAT), *,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    """ms of one (rows, k) -> n W8A8 layer on `dtype` inputs in each of `forms` (int8, or a
    float32 / bf16 product with its dequantized int8 weights, casts included), on random
    operands on `device` (`time_forms`)."""
    gen = torch.Generator().manual_seed(0)
    layer = Int8Linear.from_float(nn.Linear(k, n), asymmetric=asymmetric).to(device)
    x = torch.randn(rows, k, generator=gen).to(device, dtype)

    def floated(compute: torch.dtype) -> Callable[[], torch.Tensor]:
        weight, bias = layer.widened_weight(compute), layer.widened_bias(compute)
        return lambda: F.linear(x.to(compute), weight, bias).to(dtype)

    return time_forms(forms, lambda: layer._int8_forward(x), floated, device)


class HalfLinear(KeepsWidened):
    """VQ-ViT's 16-bit precision for the most sensitive layers: weights stored in float16,
    multiplied in the input's dtype (float32 on a CPU, which has no fast fp16 GEMM), the widened
    weight kept after first use."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_h", torch.zeros(out_features, in_features,
                                                     dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> HalfLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        layer.weight_h.copy_(linear.weight.detach().half())
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def float_weight(self, tokens: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as multiplied for inputs of `dtype` (the same for any token count)."""
        if dtype == torch.float16:
            return self.weight_h
        return self.widened(dtype, lambda: self.weight_h.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the bias in x's dtype kept too: a cast per call was a copy per layer and pass
        return F.linear(x, self.float_weight(0, x.dtype), self.widened_bias(x.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fp16 weights"


class Int8Embedding(KeepsWidened):
    """An embedding table stored as int8 codes with one float scale per row (weight-only, as W8A8
    stores linear weights): 4x smaller than float32 on disk and in the registry; the rounding
    error is at most half a row's scale (max|row| / 254)."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("codes", torch.zeros(num_embeddings, embedding_dim,
                                                  dtype=torch.int8))
        self.register_buffer("row_scale", torch.ones(num_embeddings, 1))

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> Int8Embedding:
        table = cls(embedding.num_embeddings, embedding.embedding_dim)
        q, scale = quantize_symmetric(embedding.weight, dim=1)  # per row
        table.codes.copy_(q)
        table.row_scale.copy_(scale)
        return table.to(embedding.weight.device)

    # The dtype lookups return: float32, or bf16 in a model whose float compute is bf16
    # (`apply.to_bf16`); set at deployment, not stored.
    compute_dtype: torch.dtype = torch.float32

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table in `compute_dtype`, widened once and kept: a lookup then costs
        what a float table's does (the stored model stays int8)."""
        dtype = self.compute_dtype
        return self.widened(dtype, lambda: dequantize(self.codes, self.row_scale).to(dtype))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return F.embedding(index, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


def reference_w8a8(linear: nn.Linear, x: torch.Tensor, act_bits: int = 8) -> torch.Tensor:
    """The same arithmetic in float (dequantize then multiply): what Int8Linear must equal on a
    GEMM path taking `act_bits`-bit activation codes."""
    wq, ws = quantize_symmetric(linear.weight.detach(), dim=1)
    xq, xs = quantize_tokens(x.reshape(-1, linear.in_features), qmax=symmetric_qmax(act_bits))
    y = F.linear(dequantize(xq, xs), dequantize(wq, ws), linear.bias)
    return y.reshape(*x.shape[:-1], linear.out_features)
