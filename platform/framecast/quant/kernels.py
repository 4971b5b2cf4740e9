"""The integer hot path of a W8A8 layer on the fastest kernels this machine has.

Measured on the 2-core x86 machines (benchmarks/RESULTS.md, quantize): in eager PyTorch the
per-token activation quantizer reads and writes the activation five times and cost as much as
the int8 GEMM saved, so W8A8 ran slower than fp32 (0.6-0.9x). Two changes (to ~1.2-1.3x on the
`paper` preset at batch 1, 0.8-0.95x on `small`):

- `fused`: the quantizer compiled by inductor into one C++ loop (one read of the activation, one
  int8 write; about 4x faster than the eager ops), with the eager function as the fall-back where
  no compiler works or `FRAMECAST_FUSED_QUANT=0`;
- `int8_matmul_scaled`: oneDNN's int8 GEMM (AMX or VNNI instructions, about 2x `torch._int_mm` on
  these CPUs) writing float32 with the per-channel weight scale already applied, where the CPU has
  VNNI (without it, x86 int8 kernels pair products in saturating int16); `torch._int_mm`
  elsewhere (CUDA, other CPUs) or with `FRAMECAST_INT8_KERNEL=int_mm`.

`choose` switches both for a block of code (the quantize benchmark times the paths side by side).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable)
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


@dataclass
class KernelChoice:
    """Which kernels W8A8 layers use; both on by default (environment variables turn them off)."""
    fused_quant: bool = os.environ.get("FRAMECAST_FUSED_QUANT", "1") != "0"
    onednn: bool = os.environ.get("FRAMECAST_INT8_KERNEL", "auto") != "int_mm"


CHOICE = KernelChoice()


@contextlib.contextmanager
def choose(*, fused_quant: bool, onednn: bool) -> Iterator[None]:
    """Run W8A8 layers on the given kernels inside the block (benchmarks compare both paths)."""
    saved = KernelChoice(CHOICE.fused_quant, CHOICE.onednn)
    CHOICE.fused_quant, CHOICE.onednn = fused_quant, onednn
    try:
        yield
    finally:
        CHOICE.fused_quant, CHOICE.onednn = saved.fused_quant, saved.onednn


def fused(fn: F) -> F:
    """`fn` compiled on first use into a fused kernel (dynamic shapes: one compile serves every
    token count); `fn` itself where compiling is switched off or fails (logged once)."""
    state: dict = {"on": True, "compiled": None}

    @functools.wraps(fn)
    def call(*args):  # type: ignore[no-untyped-def]
        if state["on"] and CHOICE.fused_quant:
            try:
                if state["compiled"] is None:  # lazily: importing dynamo costs a second
                    state["compiled"] = torch.compile(fn, dynamic=True)
                return state["compiled"](*args)
            except Exception as err:  # no C++ compiler, unsupported backend: stay correct
                state["on"] = False
                log.warning("fused %s unavailable (%s: %s); using eager ops", fn.__name__,
                            type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return fn(*args)
    return call  # type: ignore[return-value]


@functools.cache
def onednn_int8_available() -> bool:
    """oneDNN's int8 linear is built in and the CPU multiplies int8 without int16 saturation."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_prepack")):
        return False
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & _VNNI_FLAGS)


class PackedInt8(NamedTuple):
    """An int8 weight in oneDNN's blocked layout (an opaque tensor: never saved or copied)."""
    weight: torch.Tensor
    zero_points: torch.Tensor  # int32 zeros: the weights are symmetric in the kernel's view


_ONE = torch.tensor(1.0)
_ZERO = torch.tensor(0, dtype=torch.int32)


def use_onednn(device: torch.device) -> bool:
    return device.type == "cpu" and CHOICE.onednn and onednn_int8_available()


def pack_int8(weight_q: torch.Tensor) -> PackedInt8:
    """The weight (out, in) int8 prepacked for oneDNN (where `use_onednn`)."""
    return PackedInt8(torch.ops.onednn.qlinear_prepack(weight_q, None),
                      torch.zeros(weight_q.shape[0], dtype=torch.int32))


def int8_matmul_scaled(xq: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
                       packed: PackedInt8 | None) -> torch.Tensor:
    """float32 (x_q @ W_q^T) * s_w for int8 x_q (tokens, in) and W_q (out, in), accumulated in
    int32: the caller applies the per-token scale and the bias."""
    if packed is not None:
        return torch.ops.onednn.qlinear_pointwise.tensor(
            xq, _ONE, _ZERO, packed.weight, weight_scale, packed.zero_points, None, 1.0, 0,
            torch.float32, "none", [], "")
    m, k = xq.shape
    n = weight_q.shape[0]
    if xq.device.type == "cuda" and (m <= 16 or k % 8 or n % 8):
        # The CUDA int8 kernel needs M > 16 and K, N multiples of 8: exact int32 fallback.
        acc = xq.int() @ weight_q.t().int()
    else:
        acc = torch._int_mm(xq, weight_q.t())  # (tokens, out) int32
    # int32 -> float32 in the accumulator's own memory (same width): allocating a fresh
    # (tokens, out) tensor costs more than the arithmetic on a CPU (page faults).
    y = acc.view(torch.float32)
    y.copy_(acc)
    return y.mul_(weight_scale)
