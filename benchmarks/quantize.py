"""fp32 vs mixed-precision W8A8 side by side, V-BLT and the NBP generator: size, latency (batch
1 and 8), quality.

    python benchmarks/quantize.py --quick     # < 5 minutes on 2 cores
    python benchmarks/quantize.py             # the stated budget (see --steps)
    python benchmarks/quantize.py --model vblt-2d --data data/2d-demo-s0   # an existing model

The real path: a `small` V-BLT trained with `jobs.train` on 2D triangles (or the model given),
quantized by `jobs.quantize` (sensitivity, thresholds, progressive schedule with fine-tunes and
fall-back, real int8 modules), compared on the test split. A second table times the `small` and
`paper` presets (untrained, post-training plan) in five forms side by side: fp32,
bf16 (the paper's FP16 row), W8A8 on the default kernels, W8A8 on the eager fall-back kernels, and
fp32 with every linear layer free, the bound on what quantizing linear layers can gain (the
`paper` preset in the full run only: its eager pass alone takes minutes on 2 cores). A third
table does the same for an NBP generator's greedy generation (`small`; the full run adds
LLaMA-like widths).
Paper (VQ-ViT on ImageNet ViTs): 4x smaller, ~3x faster, -0.4 points of accuracy.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from framecast.quant import kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib import ort  # noqa: E402
from benchmarks.lib.cli import new_parser  # noqa: E402
from benchmarks.lib.nbp_forms import (  # noqa: E402
    NBP_WIDE,
    ROUNDS,
    SPAN_MS,
    FreeLinear,
    form_columns,
    nbp_rows,
)
from benchmarks.lib.report import key_values, markdown_table, report  # noqa: E402
from benchmarks.lib.trained import render_and_train  # noqa: E402


def trained_row(args: argparse.Namespace, root: Path) -> dict[str, float]:
    from jobs.quantize import QuantizeJobConfig, quantize

    if args.model:
        model, data = args.model, args.data
    else:
        data, trained, _ = render_and_train("2d", sequences=args.sequences, size=args.size,
                                            steps=args.steps, root=root)
        model = trained["run_id"]
    schedule = {"stage_steps": 3, "final_steps": 6} if args.quick else {}
    out = quantize(QuantizeJobConfig(model=model, data=str(data), register="none",
                                     latency_repeats=args.repeats, latency_span_ms=SPAN_MS,
                                     experiment="framecast-benchmarks", **schedule))
    if args.quick and not kernels.native_16bit(torch.bfloat16):
        skipped = "not run: bf16 not native on this CPU (--quick)"
        return {**out["metrics"], **dict.fromkeys(
            ("psnr_bf16", "ssim_bf16", "psnr_drop_bf16_db", "kl_fp32_bf16"), skipped)}
    return {**out["metrics"], **bf16_quality(model, str(data))}


def bf16_quality(model_ref: str, data: str) -> dict[str, float]:
    """PSNR/SSIM of a bf16 copy of the fp32 model on the same test split: what the fast 16-bit
    alternative costs in quality. (Where bf16 is emulated this forward pass is many times
    slower than fp32, so --quick skips it there.)"""
    from framecast import data as fdata
    from framecast.quant import compare, compute_form
    from jobs.common import load_logged_model

    fp32, _ = load_logged_model(model_ref)
    test, _ = fdata.load_numpy(data, "test")
    q = compare.quality(fp32.eval(), compute_form.in_form(fp32, "bf16"), test)
    return {"psnr_bf16": q["psnr_quant"], "ssim_bf16": q["ssim_quant"],
            "psnr_drop_bf16_db": q["psnr_drop_db"], "kl_fp32_bf16": q["kl_fp32_quant"]}


# Columns kept for reference, not the targets: timed in one round (after a warm-up pass) under
# --quick, where their four rounds of second-long passes would take the run past 5 minutes.
REFERENCE_FORMS = frozenset({"w8a8_int_mm", "ort_fp32", "ort_int8"})


def latency_rows(preset: str, size: int, repeats: int, with_ort: bool, quick: bool = False,
                 device: str = "cpu") -> list[dict[str, float | str]]:
    """One untrained `preset` on (12, size, size) videos, timed at batch 1 and 8 side by side:
    fp32; bf16 (every weight and activation 16-bit: the paper's FP16 row) only where the CPU
    computes bf16 natively; W8A8 with the plan rule of jobs.quantize on the measured kernels and
    on the fall-back (eager quantizer, torch._int_mm); fp32 with every linear layer free (the
    bound); ONNX Runtime fp32 and dynamic int8 (the `bench` extra). Forms alternate within each
    round so drift hits all alike; a form whose first pass is 5x fp32 is timed once, and so
    are the REFERENCE_FORMS under `quick`, warmed up first. On `device` (ONNX Runtime on the
    CPU only): `benchmarks/quantize_gpu.py` runs it on CUDA."""
    import copy

    from framecast.models import create
    from framecast.quant import compare, compute_form
    from framecast.quant.apply import layer_roles, quantize_model, replace_layers
    from framecast.quant.gemm_form import linearize
    from framecast.quant.plan import precision_plan
    from framecast.quant.schedule import QuantConfig, thresholds
    from framecast.quant.sensitivity import weight_sensitivity
    from framecast.train import batch_loss

    torch.manual_seed(0)
    fp32 = create("vblt", preset).eval().to(device)
    videos = torch.randint(0, 256, (8, 12, size, size, 1), dtype=torch.uint8).to(device)
    quant = copy.deepcopy(fp32)
    linearize(quant)
    sens = weight_sensitivity(quant, [videos[:1]], batch_loss)
    quantize_model(quant, precision_plan(sens, *thresholds(sens, QuantConfig())))
    free = copy.deepcopy(fp32)
    linearize(free)
    replace_layers(free, layer_roles(free), lambda _, linear: FreeLinear(linear))
    size_ratio = compare.compression(fp32, quant)["size_ratio"]

    def torch_form(model: nn.Module, fused: bool = True, path: str = "auto"):
        def run(video: torch.Tensor, n: int) -> float:
            with kernels.choose(fused_quant=fused, path=path):
                return compare.latency_ms(model, video, n, warmup=0)
        return run

    # Forms whose first pass does one-off work (compiling the quantizer, measuring kernels):
    # warmed up before timing. The others are timed from their first pass, so a slow eager
    # form costs one pass, not two.
    warm = {"fp32", "w8a8"}

    forms = {"fp32": torch_form(fp32), "w8a8": torch_form(quant),
             "w8a8_int_mm": torch_form(quant, False, "int_mm"), "bound": torch_form(free)}
    if kernels.native_16bit(torch.bfloat16, device):
        forms["bf16"] = torch_form(compute_form.in_form(fp32, "bf16"))
        forms["w8a8_bf16"] = torch_form(compute_form.in_form(quant, "bf16"))
        warm.add("w8a8_bf16")  # its layers measure their forms for bf16 inputs
    if with_ort and ort.available() and device == "cpu":
        pair = ort.OrtPair(fp32, videos[:1])
        for name in pair.sessions:
            forms[name] = functools.partial(pair.latency_ms, name)
    by_batch: dict[int, dict[str, list[float]]] = {}
    for b in (1, 8):
        video = videos[:b]
        for name in (warm | (REFERENCE_FORMS if quick else set())) & set(forms):
            forms[name](video, 1)
        first = {name: run(video, 1) for name, run in forms.items()}
        slow = {name for name, ms in first.items()
                if ms > 5 * first["fp32"] or (quick and name in REFERENCE_FORMS)}
        n = compare.timed_passes(first["fp32"], repeats, SPAN_MS)
        timed = compare.timed_rounds(
            {name: functools.partial(run, video, n) for name, run in forms.items()
             if name not in slow}, ROUNDS)
        by_batch[b] = {name: timed.get(name, [first[name]]) for name in forms}
    rows: list[dict[str, float | str]] = []
    for b, columns in form_columns(by_batch).items():
        ms = {name: statistics.median(t) for name, t in by_batch[b].items()}
        row: dict[str, float | str] = {"preset": preset, "batch": b, "size_ratio": size_ratio,
                                       **columns}
        for name in ("w8a8_int_mm", "ort_fp32", "ort_int8"):
            row[f"ms_{name}"] = ms.get(name, "not run")
            row[f"speedup_{name}"] = ms["fp32"] / ms[name] if name in ms else "not run"
        row["w8a8_vs_ort"] = (ms["ort_int8"] / ms["w8a8"]) if "ort_int8" in ms else "n/a"
        rows.append(row)
    return rows


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke-size budget: < 5 minutes")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default 1000; 24 with --quick)")
    parser.add_argument("--sequences", type=int, default=None,
                        help="sequences in the data set (default 2000; 192 with --quick)")
    parser.add_argument("--size", type=int, default=32, help="frame size (default 32)")
    parser.add_argument("--model", default="", help="quantize this logged model instead of "
                                                    "training one (with --data)")
    parser.add_argument("--data", default="", help="the data set of --model")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed passes per size (default 7; 3 with --quick)")
    args = parser.parse_args()
    if bool(args.model) != bool(args.data):
        parser.error("--model and --data go together")
    args.steps = args.steps or (24 if args.quick else 1000)
    args.sequences = args.sequences or (192 if args.quick else 2000)
    args.repeats = args.repeats or (3 if args.quick else 7)
    from framecast.heap import keep_freed_memory

    keep_freed_memory()  # as jobs.quantize, whose timing this repeats, runs (framecast.heap)
    args.paper_repeats = 1 if args.quick else 3

    with tempfile.TemporaryDirectory() as tmp:
        if not args.model:
            os.environ.setdefault("FRAMECAST_HOME", tmp)  # keep runs out of the user store
        small = trained_row(args, Path(tmp))
    latency = latency_rows("small", args.size, args.repeats, with_ort=True, quick=args.quick)
    if not args.quick:  # the paper preset's eager int_mm pass alone takes minutes on 2 cores
        latency += latency_rows("paper", 64, args.paper_repeats, with_ort=True)
    nbp = nbp_rows("small", args.size, args.repeats)
    if not args.quick:
        nbp += nbp_rows("small", args.size, args.repeats, NBP_WIDE)
    trained = markdown_table(
        ["model", "MB fp32", "MB quant", "size ratio", "b1 ms fp32", "b1 ms quant", "speed-up b1",
         "b8 ms fp32", "b8 ms quant", "speed-up b8", "best float b1 / b8",
         "W8A8 computes in b1 / b8",
         "vs best float b1", "vs best float b8", "PSNR fp32", "PSNR quant", "SSIM fp32",
         "SSIM quant", "KL nats/byte", "PSNR bf16", "SSIM bf16", "KL bf16"],
        [["small, trained 2D", small["bytes_fp32"] / 1e6, small["bytes_quant"] / 1e6,
          small["size_ratio"], small["latency_ms_fp32_b1"], small["latency_ms_quant_b1"],
          small["speedup_b1"], small["latency_ms_fp32_b8"], small["latency_ms_quant_b8"],
          small["speedup_b8"], f"{small['best_float_b1']} / {small['best_float_b8']}",
          f"{small['quant_compute_b1']} / {small['quant_compute_b8']}",
          small["speedup_vs_best_float_b1"], small["speedup_vs_best_float_b8"],
          small["psnr_fp32"], small["psnr_quant"], small["ssim_fp32"],
          small["ssim_quant"], small["kl_fp32_quant"], small["psnr_bf16"], small["ssim_bf16"],
          small["kl_fp32_bf16"]]])
    forms = markdown_table(
        ["preset, input", "batch", "ms fp32", "ms bf16", "ms W8A8 fp32 compute",
         "ms W8A8 bf16 compute", "best float", "W8A8 deployed", "W8A8 vs best float",
         "speed-up W8A8 (vs fp32)", "ms W8A8 int_mm eager", "ms linears free", "ms ORT fp32",
         "ms ORT int8", "speed-up bf16", "bound (linears free)", "speed-up ORT int8",
         "W8A8 vs ORT int8", "size ratio"],
        [[f"{r['preset']}, 12x{args.size if r['preset'] == 'small' else 64}^2", r["batch"],
          r["ms_fp32"], r["ms_bf16"], r["ms_w8a8"], r["ms_w8a8_bf16"], r["best_float"],
          r["w8a8_deployed"], r["w8a8_vs_best_float"], r["speedup_w8a8_deployed"],
          r["ms_w8a8_int_mm"], r["ms_bound"], r["ms_ort_fp32"], r["ms_ort_int8"],
          r["speedup_bf16"], r["speedup_bound"], r["speedup_ort_int8"], r["w8a8_vs_ort"],
          r["size_ratio"]] for r in latency])
    generators = markdown_table(
        ["NBP generator", "batch", "ms fp32", "ms bf16", "ms W8A8 fp32 compute",
         "ms W8A8 bf16 compute", "best float", "W8A8 deployed", "W8A8 vs best float",
         "speed-up W8A8 (vs fp32)", "ms linears free", "speed-up bf16", "bound (linears free)",
         "size ratio", "same argmax token", "logit rel. error"],
        [[r["model"], r["batch"], r["ms_fp32"], r["ms_bf16"], r["ms_w8a8"], r["ms_w8a8_bf16"],
          r["best_float"], r["w8a8_deployed"], r["w8a8_vs_best_float"],
          r["speedup_w8a8_deployed"], r["ms_bound"], r["speedup_bf16"], r["speedup_bound"],
          r["size_ratio"], r["argmax_agreement"], r["logit_error"]] for r in nbp])
    chosen = kernels.choices()
    source = (f"model {args.model} on {args.data}" if args.model else
              f"`small` preset trained {args.steps} steps (batch 8) on {args.sequences} 2D "
              f"sequences of 12x{args.size}x{args.size}")
    schedule = ("quick schedule: 3 steps per stage, 6 final" if args.quick else
                "default schedule: 20 steps per stage, 40 final")
    once_too = (", and with --quick so are int_mm eager and ORT, after a warm-up pass"
                if args.quick else "")
    notes = (f"First table: {source}; quantized by jobs.quantize ({schedule}); test split scored "
             "(bf16 columns: a bf16 copy of the same fp32 model); "
             "latency as in the second table (jobs.quantize's timing), the forms alternated, "
             f"{os.cpu_count()} CPU threads. Second table: untrained models (post-training "
             "plan, so no learned activation clipping), forms alternated, ms the median of "
             f"{ROUNDS} rounds of medians, ratios the median of the rounds' ratios "
             f"({args.repeats} passes small, {args.paper_repeats} paper, or as many "
             f"as make {SPAN_MS:.0f} ms of fp32 (40 at most); a form whose "
             f"first pass took 5x fp32 is timed once{once_too}): bf16 = every weight and "
             "activation 16-bit (the paper's FP16 row), timed only where the CPU computes bf16 "
             "natively; W8A8 = the job's plan rule on the kernels measured fastest here (per "
             "layer shape: int8 GEMM, or float32 from the int8 weights where that is faster); "
             "int_mm eager = the "
             "fall-back (eager quantizer, torch._int_mm); linears free = fp32 with every linear "
             "layer costing nothing, the bound on any speed-up from quantizing linear layers; "
             "ORT = ONNX Runtime on the exported fp32 model and its quantize_dynamic int8 copy "
             "; W8A8 vs ORT int8 = ORT int8 ms / W8A8 ms"
             f"{' (--quick: small preset only)' if args.quick else ''}. Third table: an "
             "untrained NBP generator (weights drawn larger than at init, so greedy choices are "
             "not near-ties) with an untrained `fsq small` tokenizer, 12x"
             f"{args.size}x{args.size} clips, block 1x8x8: greedy generation of 11 frames "
             "after one (11 forward steps, tokenizer encode and decode included), forms "
             "alternated, rounds and passes as in the second table; "
             "size ratio of the generator (the "
             "tokenizer stays float); agreement teacher-forced on the same 8 clips' tokens "
             "(W8A8 quality against the truth needs a trained generator: see the jobs.quantize "
             "run of a trained nbp-2d in RESULTS.md)"
             f"{'; --quick: small only' if args.quick else ''}. "
             f"CPU int8/bf16 flags: {chosen['cpu_flags']}; int8 GEMM paths chosen (shape "
             f"classes per path): {chosen['int8_gemm']}; W8A8 layer shapes computed in int8 "
             f"or in float32 / bf16 from their int8 weights: {chosen['layers']}. W8A8 deployed "
             "= the faster of its two compute forms at that batch size (the float work in "
             "fp32, or in bf16 where native: for a trained model only once jobs.quantize found "
             "that form within 0.3 dB), as Serve's `precision: auto` keeps a form per batch "
             "size; best float = the faster of fp32 and bf16 at that batch size (bf16 where "
             "native). Targets (issue 31): the deployed W8A8 model >= 0.95x "
             "the best float form at batch 1 and 8, >= 3.5x smaller than fp32, PSNR within "
             "0.3 dB of fp32.")
    by = {(r["preset"], r["batch"]): r for r in latency}
    values = {"size_ratio": small["size_ratio"], "speedup_b1": small["speedup_b1"],
              "speedup_b8": small["speedup_b8"], "psnr_drop_db": small["psnr_drop_db"],
              "bound_b8_small": by["small", 8]["speedup_bound"],
              "speedup_ort_int8_b8": by["small", 8]["speedup_ort_int8"],
              "w8a8_vs_ort_b8": by["small", 8]["w8a8_vs_ort"],
              "int8_paths": "+".join(chosen["int8_gemm"]) or "none",
              "layer_shapes_int8": chosen["layers"].get("int8", 0),
              "layer_shapes_fp32": chosen["layers"].get(kernels.FLOAT, 0),
              "psnr_drop_bf16_db": small["psnr_drop_bf16_db"],
              "speedup_vs_best_float_b1": small["speedup_vs_best_float_b1"],
              "speedup_vs_best_float_b8": small["speedup_vs_best_float_b8"],
              "best_float": small["best_float"], "quant_compute": small["quant_compute"],
              "w8a8_vs_best_float_b1_small": by["small", 1]["w8a8_vs_best_float"],
              "w8a8_vs_best_float_b8_small": by["small", 8]["w8a8_vs_best_float"]}
    if not args.quick:
        values.update({"size_ratio_paper": by["paper", 1]["size_ratio"],
                       "speedup_b1_paper": by["paper", 1]["speedup_w8a8_deployed"],
                       "speedup_b8_paper": by["paper", 8]["speedup_w8a8_deployed"],
                       "bound_b8_paper": by["paper", 8]["speedup_bound"],
                       "speedup_bf16_b8_paper": by["paper", 8]["speedup_bf16"]})
    gen = {(r["model"], r["batch"]): r for r in nbp}
    values.update({"size_ratio_nbp": gen["small", 1]["size_ratio"],
                   "speedup_b1_nbp": gen["small", 1]["speedup_w8a8_deployed"],
                   "speedup_b8_nbp": gen["small", 8]["speedup_w8a8_deployed"],
                   "bound_b8_nbp": gen["small", 8]["speedup_bound"],
                   "w8a8_vs_best_float_b1_nbp": gen["small", 1]["w8a8_vs_best_float"],
                   "w8a8_vs_best_float_b8_nbp": gen["small", 8]["w8a8_vs_best_float"],
                   "argmax_agreement_nbp": gen["small", 1]["argmax_agreement"],
                   "logit_error_nbp": gen["small", 1]["logit_error"]})
    report("quantize", "V-BLT and NBP, fp32 vs mixed-precision W8A8 (VQ-ViT)",
           f"{trained}\n\n{forms}\n\n{generators}",
           notes, f"RESULT quantize {key_values(values)}")


if __name__ == "__main__":
    main()
