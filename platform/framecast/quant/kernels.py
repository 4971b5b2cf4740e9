"""The integer hot path of a W8A8 layer on the fastest exact kernel this machine has, chosen by
measurement.

CPU flags do not tell which int8 kernel is fast: oneDNN's int8 GEMM beats `torch._int_mm` on a
CPU with AMX, falls back to its reference implementation (orders of magnitude slower) on some
VNNI-only CPUs, and on AVX2-only CPUs (no VNNI) it pairs u8 x s8 products in saturating int16,
so full-range 8-bit codes come out wrong, while `torch._int_mm` there is far slower than a
float GEMM (measured: benchmarks/RESULTS.md, "int8 kernels chosen by measurement").
So each GEMM shape is measured once per process (`gemm_path`): every available path is timed on
full-range operands of that shape and checked exact against a float64 product; the fastest exact
one is kept, and the choice is logged once. Paths:

- `int_mm`: `torch._int_mm`, the reference (CUDA too).
- `onednn`: oneDNN's int8 linear, s8 activations, weight scale applied in the kernel.
- `onednn_u7`: the same kernel on 7-bit activations shifted to u8 [0, 127]: exact on AVX2 CPUs
  without VNNI, where it is the only fast exact int8 GEMM (PyTorch's fbgemm default,
  `reduce_range`, makes the same trade). Chosen only when the fastest 8-bit path is more than
  1.25x slower than it; the layer then quantizes its activations to 7 bits.
- `fp32_gemm`: the same int8 codes multiplied on the float32 GEMM. Exact while every integer sum
  stays below 2^24 (K <= 1024), so it gives the int8 paths' outputs bit for bit; it wins where
  the integer kernels lose to the float one (on AVX2, oneDNN's u8 kernel for the byte-level
  layers of small K over many tokens). It keeps a float copy of the
  codes in memory at run time; the saved model stays int8.

`FRAMECAST_INT8_KERNEL=<path>` forces a path, `FRAMECAST_FUSED_QUANT=0` the eager quantizer,
`FRAMECAST_FLOAT_LAYERS=0` int8 compute in every W8A8 layer (`layer_mode`); `choose` does the
same for a block of code (the benchmarks time the paths side by side).
`fused` compiles the per-token quantizer into one pass with the eager function as fall-back.
Measured effects: benchmarks/RESULTS.md (quantize).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable)
T = TypeVar("T")
_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
_16BIT_FLAGS = ("amx_bf16", "avx512_bf16", "avx512_fp16", "amx_fp16")
SLOWER_8BIT_LIMIT = 1.25  # a 7-bit path wins only when the best 8-bit one is this much slower
# A W8A8 layer computes in int8 only where that measured this much faster than its float form:
# inside a model its extra passes over the tokens (quantize, rescale, the compiled quantizer's
# guards) cost more than in the hot loop that measures them, so a measured tie is a loss
# (benchmarks/RESULTS.md, the note on the 2026-12-02 evening runs).
INT8_MARGIN = 1.10
# Rows a shape class is timed on: per-row cost is not flat (cache sizes, page faults of the
# output), so a small timing would misjudge the large token counts of the byte-level layers.
MEASURE_ROWS = 16384
# A path whose faster of two timed calls is this much slower than the best one's is screened
# out before the five-call timing: a reference kernel (oneDNN on a CPU it has no kernel for,
# 100-1000x slower) costs 5 calls of ~0.1 s per (K, N) there, most of a replica's warm-up. Far
# above the screen's 4x, so that a good path descheduled on a busy machine is not dropped.
PRESCREEN = 20.0


@dataclass
class KernelChoice:
    """Process-wide switches (environment variables set the defaults)."""
    fused_quant: bool = os.environ.get("FRAMECAST_FUSED_QUANT", "1") != "0"
    path: str = os.environ.get("FRAMECAST_INT8_KERNEL", "auto")  # auto or a PATHS name
    # Whether a W8A8 layer may compute in float32 or bf16 from its int8 weights where faster.
    float_layers: bool = os.environ.get("FRAMECAST_FLOAT_LAYERS", "1") != "0"


CHOICE = KernelChoice()


@contextlib.contextmanager
def choose(*, fused_quant: bool, path: str = "auto", float_layers: bool = True
           ) -> Iterator[None]:
    """Run W8A8 layers with the given quantizer and GEMM path ('auto': measured) in the block;
    `float_layers=False` keeps every W8A8 layer in int8 even where float32 would be faster."""
    if path != "auto" and path not in PATHS:
        raise ValueError(f"unknown int8 kernel path {path!r}; accepted: auto, {', '.join(PATHS)}")
    saved = KernelChoice(CHOICE.fused_quant, CHOICE.path, CHOICE.float_layers)
    _set_choice(KernelChoice(fused_quant, path, float_layers))
    try:
        yield
    finally:
        _set_choice(saved)


def _set_choice(choice: KernelChoice) -> None:
    if (choice.path, choice.float_layers) != (CHOICE.path, CHOICE.float_layers):
        _ROUTING[0] += 1  # layers forget the routes they cached under the old switches
    CHOICE.fused_quant, CHOICE.path, CHOICE.float_layers = (
        choice.fused_quant, choice.path, choice.float_layers)


def fused(fn: F, agrees: Callable[[Any, Any], bool]) -> F:
    """`fn` compiled on first use into a fused kernel (dynamic shapes: one compile serves every
    token count); `fn` itself where compiling is switched off or fails, or where the compiled
    kernel disagrees with `fn` (logged once, and listed by `choices`). The first call of each
    argument signature (dtypes, device, which arguments are tensors and the others' values, a
    single row, grad mode: what makes the compiler build another graph) is checked against
    `fn` with `agrees(compiled_out, eager_out)`: a kernel that compiles can still be wrong.
    Measured: Inductor's on-disk graph cache hands a process run with
    `ATEN_CPU_CAPABILITY=avx2` the kernel compiled for AVX-512 by an earlier process, which
    returns garbage codes (benchmarks/RESULTS.md, the note on emulated ISAs)."""
    state: dict = {"on": True, "compiled": None, "checked": set()}

    def off(why: str) -> None:
        state["on"] = False
        FUSED_DROPPED[fn.__name__] = why
        log.warning("fused %s unavailable (%s); using eager ops", fn.__name__, why)

    @functools.wraps(fn)
    def call(*args):  # type: ignore[no-untyped-def]
        if state["on"] and CHOICE.fused_quant:
            try:
                if state["compiled"] is None:  # lazily: importing dynamo costs a second
                    state["compiled"] = torch.compile(fn, dynamic=True)
                out = state["compiled"](*args)
            except Exception as err:  # no C++ compiler, unsupported backend: stay correct
                first = str(err).splitlines()[0] if str(err) else ""
                off(f"{type(err).__name__}: {first}")
                return fn(*args)
            key = _signature(args)
            if key in state["checked"]:
                return out
            want = fn(*args)
            with torch.no_grad():  # a learned delta may require grad
                alike = agrees(out, want)
            if not alike:
                off("its output disagrees with the eager ops'" + _cache_hint())
                return want
            state["checked"].add(key)
            return out
        return fn(*args)
    return call  # type: ignore[return-value]


FUSED_DROPPED: dict[str, str] = {}  # fused function -> why it runs eager in this process


def _signature(args: tuple) -> tuple:
    """What a compiled graph is specialized on, cheaply (every call of the hot path): about 1 us."""
    x = args[0]
    return (x.dtype, x.device, x.shape[0] == 1, torch.is_grad_enabled(),
            *[(a.dtype, a.device) if isinstance(a, torch.Tensor) else a for a in args[1:]])


def _cache_hint() -> str:
    capped = os.environ.get("ATEN_CPU_CAPABILITY")
    if capped:
        return (f"; ATEN_CPU_CAPABILITY={capped} is set and Inductor's cache may hold another "
                "ISA's kernels: give it its own TORCHINDUCTOR_CACHE_DIR")
    return "; a stale Inductor cache? (TORCHINDUCTOR_CACHE_DIR)"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's flags, less those named in `FRAMECAST_CPU_FLAGS_OFF` (comma-separated): with
    oneDNN's, MKL's and ATen's ISA caps, that runs this library as on an older CPU kind
    (`benchmarks/lib/emulate_isa.py` sets all of them)."""
    off = {f.strip() for f in os.environ.get("FRAMECAST_CPU_FLAGS_OFF", "").split(",")
           if f.strip()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split()) - off
    except OSError:
        pass
    return frozenset()


def cpu_summary() -> str:
    """The CPU's int8/bf16 flags, for reports ('none' where it has none of them)."""
    shown = [f for f in (*_INT8_FLAGS, *_16BIT_FLAGS) if f in cpu_flags()]
    return " ".join(shown) or "none"


def native_16bit(dtype: torch.dtype, device: torch.device | str = "cpu",
                 flags: frozenset[str] | None = None) -> bool:
    """Whether `device` computes `dtype` (bf16/fp16) natively; elsewhere 16-bit math is an
    emulation slower than float32, so 16-bit weights should be multiplied in float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    flags = cpu_flags() if flags is None else flags
    if dtype == torch.bfloat16:
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    if dtype == torch.float16:
        return bool(flags & {"amx_fp16", "avx512_fp16"})
    return True


def compute_dtype(dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """`dtype` where the device computes it natively, float32 elsewhere."""
    return dtype if native_16bit(dtype, device) else torch.float32


# -- the int8 GEMM paths --------------------------------------------------------------------

_ONE = torch.tensor(1.0)
_ZERO = torch.tensor(0, dtype=torch.int32)
_U7_ZERO = torch.tensor(64, dtype=torch.int32)


def _onednn_available(device: torch.device) -> bool:
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.onednn, "qlinear_prepack"))


def _onednn_pack(weight_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # An opaque blocked-layout tensor: rebuilt per process, never saved or copied.
    return (torch.ops.onednn.qlinear_prepack(weight_q, None),
            torch.zeros(weight_q.shape[0], dtype=torch.int32))


def _onednn_run(x: torch.Tensor, zero: torch.Tensor, scale: torch.Tensor, packed: Any
                ) -> torch.Tensor:
    weight, weight_zero = packed
    return torch.ops.onednn.qlinear_pointwise.tensor(
        x, _ONE, zero, weight, scale, weight_zero, None, 1.0, 0, torch.float32, "none", [], "")


def _int_mm_run(xq: torch.Tensor, weight_q: torch.Tensor, scale: torch.Tensor, _: Any
                ) -> torch.Tensor:
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
    return y.mul_(scale)


def _fp32_run(xq: torch.Tensor, _w: torch.Tensor, scale: torch.Tensor, packed: torch.Tensor
              ) -> torch.Tensor:
    return torch.mm(xq.float(), packed.t()).mul_(scale)


# |code products| <= 128 * 128 = 2^14: sums of up to 2^10 of them stay exact in float32's
# 24-bit mantissa, whatever order the GEMM adds them in.
FP32_EXACT_K = 2 ** 24 // 2 ** 14


@dataclass(frozen=True)
class GemmPath:
    """One way to compute float32 (x_q @ W_q^T) * s_w exactly from int8 codes."""
    name: str
    act_bits: int  # activation codes the path computes exactly: 8 -> [-128, 127], 7 -> [-64, 63]
    available: Callable[[torch.device], bool]
    run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]
    pack: Callable[[torch.Tensor], Any] | None = None  # weight_q -> the kernel's layout
    max_k: int | None = None  # exact only up to this inner dimension

    def usable(self, k: int, device: torch.device) -> bool:
        return (self.max_k is None or k <= self.max_k) and self.available(device)

    def matmul(self, xq: torch.Tensor, weight_q: torch.Tensor, scale: torch.Tensor,
               packed: Any = None) -> torch.Tensor:
        if self.pack is not None and packed is None:
            packed = self.pack(weight_q)
        return self.run(xq, weight_q, scale, packed)


PATHS: dict[str, GemmPath] = {p.name: p for p in (
    GemmPath("int_mm", 8, lambda _: True, _int_mm_run),
    GemmPath("onednn", 8, _onednn_available,
             lambda xq, _w, s, packed: _onednn_run(xq, _ZERO, s, packed), _onednn_pack),
    # 7-bit codes + 64 as u8 with zero point 64: (u - 64) . W exactly, without int16 saturation.
    GemmPath("onednn_u7", 7, _onednn_available,
             lambda xq, _w, s, packed: _onednn_run((xq + 64).view(torch.uint8), _U7_ZERO, s,
                                                   packed), _onednn_pack),
    GemmPath("fp32_gemm", 8, lambda _: True, _fp32_run, lambda w: w.float(), FP32_EXACT_K),
)}


@dataclass
class Measured:
    """One shape class's measurement: ms per path (inf: not exact), the paths the screen
    dropped (exact, but over 4x the best: a reference kernel, say) and the path kept."""
    shape: tuple[int, int, int]
    ms: dict[str, float] = field(default_factory=dict)
    screened: set[str] = field(default_factory=set)
    chosen: str = "int_mm"


_CHOSEN: dict[tuple, Measured] = {}
_SCREENS: dict[tuple, tuple[dict[str, float], dict[str, Any]]] = {}  # (K, N, device): `_screen`


def token_class(tokens: int) -> int:
    """The power of two (16 at least) at or above `tokens`: token counts of one class share a
    choice. Integer arithmetic: W8A8 layers ask on every call."""
    return 1 << max(4, (max(tokens, 1) - 1).bit_length())


def shape_class(tokens: int, k: int, n: int) -> tuple[int, int, int]:
    """GEMMs of the same (K, N) and token count within a power of two share a choice."""
    return token_class(tokens), k, n


def time_side_by_side(runs: dict[str, Callable[[], T]], calls: int
                      ) -> tuple[dict[str, float], dict[str, T]]:
    """ms of each of `runs` and its last output: the runs alternated `calls` times (drift on a
    busy machine hits all alike), the fastest call of each kept: noise only ever adds time, and
    one descheduled call must not knock the fast one out. The caller warms up."""
    ms = {name: math.inf for name in runs}
    outs: dict[str, T] = {}
    for _ in range(calls):
        for name, run in runs.items():
            start = time.perf_counter()
            outs[name] = run()
            ms[name] = min(ms[name], (time.perf_counter() - start) * 1e3)
    return ms, outs


def _operands(rows: int, k: int, n: int, bits: int, device: torch.device) -> tuple:
    """Full-range int8 codes (the activation clipped to `bits`) with the extreme products in
    the first rows, where saturating int16 pairs would show; a positive per-channel scale."""
    gen = torch.Generator().manual_seed(0)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    xq = torch.randint(low, high + 1, (rows, k), dtype=torch.int8, generator=gen)
    wq = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    xq[0], wq[0] = high, 127
    xq[1], wq[1] = low, -128
    scale = torch.rand(n, generator=gen) + 0.5
    return xq.to(device), wq.to(device), scale.to(device)


def _screen(k: int, n: int, device: torch.device) -> tuple[dict[str, float], dict[str, Any]]:
    """Every available path on 64 rows of (K, N): its first call (which builds the kernel)
    checked against a float64 product (inf where inexact, never timed); the exact ones timed
    twice, dropping paths over PRESCREEN x the best at once, then the rest in a five-call
    timing.
    Returns ms per path and each path's packed weights. The same 64 rows serve every token
    class of (K, N), so the screen runs once per (K, N) and device."""
    key = (k, n, str(device))
    if key in _SCREENS:
        return _SCREENS[key]
    ms, packed, runs = {}, {}, {}
    for name, path in PATHS.items():
        if not path.usable(k, device):
            continue
        xq, wq, scale = _operands(64, k, n, path.act_bits, device)
        try:
            packed[name] = path.pack(wq) if path.pack else None
            out = path.run(xq, wq, scale, packed[name])  # first call: builds the kernel
        except (RuntimeError, NotImplementedError) as err:
            log.info("int8 path %s unavailable here: %s", name, str(err).splitlines()[0])
            continue
        exact = (xq.double() @ wq.double().t()) * scale.double()
        if not torch.allclose(out.double(), exact, rtol=1e-6, atol=0):
            ms[name] = math.inf
            continue
        runs[name] = functools.partial(path.run, xq, wq, scale, packed[name])
    twice = time_side_by_side(runs, 2)[0]
    far = {name for name, t in twice.items() if t > PRESCREEN * min(twice.values())}
    ms.update({name: twice[name] for name in far})  # screened out by `_measure` (over 4x)
    ms.update(time_side_by_side({name: run for name, run in runs.items() if name not in far},
                                5)[0])
    _SCREENS[key] = ms, packed
    return _SCREENS[key]


def _measure(tokens: int, k: int, n: int, device: torch.device) -> Measured:
    """The 64-row screen of (K, N) (`_screen`), which drops paths over 4x the best, such as a
    reference kernel; then the survivors timed on up to MEASURE_ROWS rows of the shape class
    (`time_side_by_side`)."""
    rows, _, _ = shape_class(tokens, k, n)
    m = Measured(shape_class(tokens, k, n))
    screen, packed = _screen(k, n, device)
    m.ms.update(screen)
    best, full = min(m.ms.values()), min(rows, MEASURE_ROWS)
    survivors = {}
    for name, t in m.ms.items():
        if math.isinf(t):
            continue
        if t > 4 * best:
            m.screened.add(name)
            m.ms[name] = t * max(full, 64) / 64  # screened out: an estimate, never the fastest
        elif full > 64:
            path = PATHS[name]
            big = _operands(full, k, n, path.act_bits, device)
            path.run(*big, packed[name])
            survivors[name] = functools.partial(path.run, *big, packed[name])
    m.ms.update(time_side_by_side(survivors, 3)[0])
    fastest = min(m.ms, key=m.ms.__getitem__)
    eight = [p for p in m.ms if PATHS[p].act_bits == 8]
    fastest8 = min(eight, key=m.ms.__getitem__)
    m.chosen = fastest8 if m.ms[fastest8] <= SLOWER_8BIT_LIMIT * m.ms[fastest] else fastest
    return m


def gemm_path(tokens: int, k: int, n: int, device: torch.device) -> GemmPath:
    """The int8 GEMM path for a (tokens, K) x (K, N) product on `device`: forced by
    `FRAMECAST_INT8_KERNEL`/`choose`, else measured once per shape class and process."""
    if CHOICE.path != "auto":
        path = PATHS.get(CHOICE.path)
        if path is None:
            raise ValueError(f"FRAMECAST_INT8_KERNEL={CHOICE.path!r}: expected auto or one of "
                             f"{', '.join(PATHS)}")
        return path if path.usable(k, device) else PATHS["int_mm"]
    if device.type != "cpu":
        return PATHS["int_mm"]
    key = shape_class(tokens, k, n)
    if key not in _CHOSEN:
        m = _measure(tokens, k, n, device)
        _CHOSEN[key] = m
        times = ", ".join(f"{p} {'inexact' if math.isinf(t) else f'{t:.2f} ms'}"
                          for p, t in m.ms.items())
        log.info("int8 GEMM %dx%dx%d: %s (%s)", *key, m.chosen, times)
    return PATHS[_CHOSEN[key].chosen]


# -- the whole layer: int8 or float compute ---------------------------------------------------

FLOAT = "fp32_from_int8"  # a layer's compute forms where the integer path loses:
BF16 = "bf16_from_int8"  # float32 or bf16 products with the dequantized int8 weights
FORM_DTYPES = {FLOAT: torch.float32, BF16: torch.bfloat16}


def layer_forms(dtype: torch.dtype, device: torch.device) -> tuple[str, ...]:
    """The forms a W8A8 layer may compute in for inputs of `dtype`: int8 always; float32 from
    its int8 weights for float32 inputs; bf16 from them for bf16 inputs (a model deployed in
    bf16 compute, whose quality jobs.quantize checked) where the device computes bf16 natively
    (never an emulation, which is slower than float32). Never bf16 for float32 inputs: that
    would round a float32 deployment to bf16 where no quality check allowed it."""
    forms = ["int8"]
    if dtype == torch.float32:
        forms.append(FLOAT)
    if dtype == torch.bfloat16 and native_16bit(torch.bfloat16, device):
        forms.append(BF16)
    return tuple(forms)


@dataclass
class LayerMeasured:
    """One W8A8 layer shape's measurement: ms of each form for inputs of one dtype: the whole
    int8 layer (quantizer, GEMM on its chosen path, rescale), and a float32 or bf16 product with
    the dequantized int8 weights (casts of the input and output included)."""
    shape: tuple[int, int, int]
    asymmetric: bool
    dtype: str
    ms: dict[str, float]
    # What was timed: "linear", or the layer inside a convolution's GEMM form ("FrameConv3d",
    # ...), whose int8 form pays layout copies (an im2col) that its float form, a direct
    # convolution, does not (quant/gemm_form.py).
    kind: str = "linear"
    device: str = "cpu"  # a CPU's forms and a GPU's are measured apart

    @property
    def chosen(self) -> str:
        """The fastest float form, unless int8 beats it by INT8_MARGIN."""
        floats = {form: ms for form, ms in self.ms.items() if form != "int8"}
        if not floats:
            return "int8"
        fastest = min(floats, key=floats.__getitem__)
        return "int8" if self.ms["int8"] * INT8_MARGIN < floats[fastest] else fastest


_LAYERS: dict[tuple, LayerMeasured] = {}
_EPOCH = [0]  # bumped by reset_choices: layers then forget the forms they chose
# Bumped by reset_choices and whenever `choose` changes the path or float_layers switch: a
# layer's cached route (form and weight per token class and dtype) is valid while it stands.
_ROUTING = [0]


def int8_forced() -> bool:
    """Whether W8A8 layers compute in int8 whatever is faster: a forced GEMM path (`choose`,
    FRAMECAST_INT8_KERNEL) or FRAMECAST_FLOAT_LAYERS=0. On CUDA too the forms are measured
    (synchronized), not assumed: there the quantizer's and rescale's launches cost more than
    a small GEMM saves (benchmarks/RESULTS.md, quantize_gpu)."""
    return CHOICE.path != "auto" or not CHOICE.float_layers


def form_key(tokens: int, dtype: torch.dtype) -> tuple[int, torch.dtype]:
    """How a layer files the form it chose: (token class, input dtype); `form_name` spells it."""
    return token_class(tokens), dtype


def form_name(key: tuple[int, torch.dtype]) -> str:
    """'512@float32' for (512, torch.float32)."""
    return f"{key[0]}@{str(key[1]).removeprefix('torch.')}"


def epoch() -> int:
    """Changes whenever the measurements are forgotten (`reset_choices`)."""
    return _EPOCH[0]


def routing() -> int:
    """Changes whenever a layer's chosen form could change: measurements forgotten, or the
    switches of `choose` changed."""
    return _ROUTING[0]
Measure = Callable[[int, int, int, bool, torch.dtype, tuple[str, ...]], dict[str, float]]


def layer_mode(tokens: int, k: int, n: int, asymmetric: bool, device: torch.device,
               measure: Measure, dtype: torch.dtype = torch.float32, kind: str = "linear"
               ) -> str:
    """'int8', FLOAT or BF16: the fastest measured form (`layer_forms`) for the layer's shape
    and input dtype. Activation quantization and the rescale are passes over the tokens that a
    small GEMM does not pay back (on AVX2, V-BLT's byte-level layers of K=48 and a 384-token
    global transformer at batch 1), and on a CPU with native bf16 its bf16 GEMM can beat the
    int8 one. The weights stay int8 in the model; the float forms only skip activation
    quantization. Measured once per shape class, input dtype and process by `measure(rows, k,
    n, asymmetric, dtype, forms) -> {form: ms}`; a forced GEMM path (`choose`,
    FRAMECAST_INT8_KERNEL) always computes in int8, and so does FRAMECAST_FLOAT_LAYERS=0.
    `kind` names what `measure` times besides the product (a convolution's GEMM form): layers of
    one shape and different kinds are measured apart."""
    if int8_forced():
        return "int8"
    key = (shape_class(tokens, k, n), asymmetric, dtype, kind, str(device))
    if key not in _LAYERS:
        rows = min(key[0][0], MEASURE_ROWS)
        forms = layer_forms(dtype, device)
        m = LayerMeasured(key[0], asymmetric, str(dtype).removeprefix("torch."),
                          measure(rows, k, n, asymmetric, dtype, forms), kind, str(device))
        _LAYERS[key] = m
        log.info("W8A8 %s %dx%dx%d%s, %s in: %s (%s)", kind, *m.shape,
                 " asymmetric" if asymmetric else "", m.dtype, m.chosen,
                 ", ".join(f"{f} {ms:.2f} ms" for f, ms in m.ms.items()))
    return _LAYERS[key].chosen


def choices() -> dict[str, Any]:
    """What this process measured and chose, for logs, reports and /v1/models."""
    counts: dict[str, int] = {}
    for m in _CHOSEN.values():
        counts[m.chosen] = counts.get(m.chosen, 0) + 1
    layers: dict[str, int] = {}
    for lm in _LAYERS.values():
        layers[lm.chosen] = layers.get(lm.chosen, 0) + 1
    return {"cpu_flags": cpu_summary(), "fused_quant": CHOICE.fused_quant,
            "fused_dropped": dict(FUSED_DROPPED),
            "forced": None if CHOICE.path == "auto" else CHOICE.path,
            "float_layers": CHOICE.float_layers,
            "int8_gemm": counts, "layers": layers,
            "shapes": {"x".join(map(str, m.shape)): m.chosen for m in _CHOSEN.values()},
            "layer_shapes": {_layer_key(lm): lm.chosen for lm in _LAYERS.values()},
            "layer_ms": {_layer_key(lm): {f: round(ms, 3) for f, ms in lm.ms.items()}
                         for lm in _LAYERS.values()}}


def _layer_key(lm: LayerMeasured) -> str:
    """'512x32x16' (+ 'a' when asymmetric, + '@bfloat16' for inputs other than float32, +
    '@cuda:0' off the CPU; 'FrameConv3d:' first for a convolution's GEMM form)."""
    return (("" if lm.kind == "linear" else f"{lm.kind}:") + "x".join(map(str, lm.shape))
            + ("a" if lm.asymmetric else "") + ("" if lm.dtype == "float32" else f"@{lm.dtype}")
            + ("" if lm.device == "cpu" else f"@{lm.device}"))


def reset_choices() -> None:
    """Forget every measurement (tests; a benchmark that changes threads)."""
    _CHOSEN.clear()
    _SCREENS.clear()
    _LAYERS.clear()
    _EPOCH[0] += 1
    _ROUTING[0] += 1
