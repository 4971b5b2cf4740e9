"""V-BLT and the NBP generator in their precision forms on one GPU, side by side: fp32, bf16,
W8A8 as deployed (each W8A8 layer in the form measured fastest there: int8 on `torch._int_mm`,
or fp32 / bf16 from its int8 weights), W8A8 with every layer forced to int8 (`torch._int_mm`,
eager quantizer: what CUDA ran before its forms were measured; V-BLT) and fp32 with every linear
layer free (the bound on what quantizing linears can gain). V-BLT: the second table of
`benchmarks/quantize.py` (a forward pass of the untrained `small` preset, batch 1 and 8); NBP:
its third table (greedy block generation with tokenizer encode/decode, per batch size). Issue
31's question on CUDA: is the deployed W8A8 model as fast as the best float form? Needs PyTorch,
numpy and vector-quantize-pytorch only (no Ray, MLflow or PyVista), so it runs on the lent GPU
machine; the tables and a JSON go to --out, to be copied into RESULTS.md.

    python benchmarks/quantize_gpu.py --out quantize-gpu        # on the GPU machine
    python benchmarks/quantize_gpu.py --quick                   # CPU, seconds: the same code
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # no install needed

import torch  # noqa: E402

from benchmarks.lib.cli import comma_items, new_parser, parse_sizes  # noqa: E402
from benchmarks.lib.nbp_forms import NBP_WIDE, nbp_rows  # noqa: E402
from benchmarks.lib.report import markdown_table  # noqa: E402

# Both tables: the forms, then the two a user gets (best float, W8A8 deployed) and their ratio.
FORMS = ("batch", "ms_fp32", "ms_bf16", "ms_w8a8", "ms_w8a8_bf16", "best_float", "w8a8_deployed",
         "w8a8_vs_best_float", "speedup_w8a8_deployed")
VBLT_COLUMNS = ("preset", *FORMS, "ms_w8a8_int_mm", "speedup_w8a8_int_mm", "ms_bound",
                "speedup_bf16", "speedup_bound", "size_ratio")
NBP_COLUMNS = ("model", *FORMS, "ms_bound", "speedup_bf16", "speedup_bound", "size_ratio",
               "argmax_agreement", "logit_error")


def table(rows: list[dict], columns: tuple[str, ...]) -> str:
    return markdown_table(list(columns), [[r.get(c, "") for c in columns] for r in rows])


def result_keys(vblt: list[dict], nbp: list[dict]) -> dict[str, float | str]:
    """The RESULT line's keys: per batch size, W8A8 as deployed over fp32 (`speedup_b*`, the
    keys of earlier runs), over the best float form, and which that was; the bound."""
    keys: dict[str, float | str] = {}
    for rows, tag, model in ((nbp, "nbp", "small"), (vblt, "vblt", "small")):
        for r in rows:
            if r.get("model", r.get("preset")) != model:
                continue
            b = r["batch"]
            keys[f"speedup_b{b}_{tag}"] = r["speedup_w8a8_deployed"]
            keys[f"bound_b{b}_{tag}"] = r["speedup_bound"]
            keys[f"speedup_bf16_b{b}_{tag}"] = r["speedup_bf16"]
            keys[f"w8a8_vs_best_float_b{b}_{tag}"] = r["w8a8_vs_best_float"]
            keys[f"best_float_b{b}_{tag}"] = r["best_float"]
            keys[f"size_ratio_{tag}"] = r["size_ratio"]
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke run: small models only (V-BLT on 16x16 frames), NBP "
                             "batch 1 and 2 (V-BLT 1 and 8), one round of 1 pass")
    parser.add_argument("--size", type=int, default=32, help="frame size (default 32)")
    parser.add_argument("--batches", default="1,8,32",
                        help="NBP batch sizes (default 1,8,32; V-BLT: 1 and 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per form and round")
    parser.add_argument("--models", default="vblt,nbp", help="vblt, nbp or both (default)")
    parser.add_argument("--out", default="quantize-gpu", help="folder for tables and JSON")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    batches = (1, 2) if args.quick else tuple(parse_sizes(args.batches, parser, "--batches"))
    models = set(comma_items(args.models))
    if not models or models - {"vblt", "nbp"}:
        parser.error(f"--models: vblt, nbp or both, not {args.models!r}")
    if args.repeats < 1 or args.size < 1:
        parser.error("--repeats and --size must be at least 1")
    repeats = 1 if args.quick else args.repeats
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here: bf16 has its row
        name = torch.cuda.get_device_name()
    else:
        name = "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vblt: list[dict] = []
    nbp: list[dict] = []
    start = time.perf_counter()

    def save() -> None:
        (out / "rows.json").write_text(json.dumps({"vblt": vblt, "nbp": nbp}, indent=1))

    if "vblt" in models:
        from benchmarks.quantize import latency_rows
        try:
            vblt += latency_rows("small", 16 if args.quick else args.size, repeats,
                                 with_ort=False, quick=args.quick, device=device)
        except Exception as err:  # noqa: BLE001 - the generator's rows still come
            print(f"V-BLT small: failed: {err!r}", flush=True)
        save()
        print(table(vblt, VBLT_COLUMNS), flush=True)
    for overrides in (() if "nbp" not in models else ({},) if args.quick else ({}, NBP_WIDE)):
        try:
            nbp += nbp_rows("small", args.size, repeats, overrides, device, batches,
                            **({"span_ms": 0.0, "rounds": 1} if args.quick else {}))
        except Exception as err:  # noqa: BLE001 - one generator's failure spares the other
            print(f"NBP small {overrides}: failed: {err!r}", flush=True)
        save()
        print(table(nbp, NBP_COLUMNS), flush=True)
    (out / "tables.md").write_text(table(vblt, VBLT_COLUMNS) + "\n\n" + table(nbp, NBP_COLUMNS))
    from framecast.quant import kernels
    chosen = kernels.choices()
    print(f"device {name}, torch {torch.__version__}, wall {time.perf_counter() - start:.0f} s; "
          f"int8 paths chosen: {chosen['int8_gemm']}; W8A8 layer shapes computed in: "
          f"{chosen['layers']}", flush=True)
    (out / "layer_ms.json").write_text(json.dumps(chosen["layer_ms"], indent=1))
    keys = result_keys(vblt, nbp)
    print("RESULT quantize_gpu " + " ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={str(v).replace(' ', '_')}"
        for k, v in keys.items()) + f" device={name.replace(' ', '_')}")
    return 0 if vblt or nbp else 1


if __name__ == "__main__":
    sys.exit(main())
