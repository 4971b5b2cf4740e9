"""The NBP generator's precision forms timed on one GPU: fp32, bf16, W8A8 (`torch._int_mm`, the
int8 path the library takes on CUDA) and fp32 with every linear layer free (the bound on what
quantizing linears can gain), greedy block generation with tokenizer encode/decode, per batch
size, alternated in one run: issue 15's latency rows where int8 GEMMs are native. Needs PyTorch,
numpy and vector-quantize-pytorch only (no Ray, MLflow or PyVista), so it runs on the lent GPU
machine; the table and a JSON go to --out, to be copied into RESULTS.md.

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

from benchmarks.lib.cli import new_parser, parse_sizes  # noqa: E402
from benchmarks.lib.nbp_forms import NBP_WIDE, nbp_rows  # noqa: E402
from benchmarks.lib.report import markdown_table  # noqa: E402

COLUMNS = ("model", "batch", "ms_fp32", "ms_bf16", "ms_w8a8", "ms_bound", "speedup_bf16",
           "speedup_w8a8", "speedup_bound", "size_ratio", "argmax_agreement", "logit_error")


def table(rows: list[dict]) -> str:
    return markdown_table(list(COLUMNS), [[r.get(c, "") for c in COLUMNS] for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke run: small generator only, batch 1 and 2, one round of "
                             "1 pass")
    parser.add_argument("--size", type=int, default=32, help="frame size (default 32)")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes (default 1,8,32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per form and round")
    parser.add_argument("--out", default="quantize-gpu", help="folder for table and JSON")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    batches = (1, 2) if args.quick else tuple(parse_sizes(args.batches, parser, "--batches"))
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
    rows: list[dict] = []
    start = time.perf_counter()
    for overrides in ({},) if args.quick else ({}, NBP_WIDE):
        try:
            rows += nbp_rows("small", args.size, repeats, overrides, device, batches,
                             **({"span_ms": 0.0, "rounds": 1} if args.quick else {}))
        except Exception as err:  # noqa: BLE001 - one generator's failure spares the other
            print(f"small {overrides}: failed: {err!r}", flush=True)
        (out / "rows.json").write_text(json.dumps(rows, indent=1))
        print(table(rows), flush=True)
    from framecast.quant import kernels
    print(f"device {name}, torch {torch.__version__}, wall {time.perf_counter() - start:.0f} s; "
          f"int8 paths chosen: {kernels.choices()['int8_gemm']}")
    by = {(r["model"], r["batch"]): r for r in rows}
    keys = {}
    for b in batches:
        if ("small", b) in by:
            keys[f"speedup_b{b}_nbp"] = by["small", b]["speedup_w8a8"]
            keys[f"bound_b{b}_nbp"] = by["small", b]["speedup_bound"]
            keys[f"speedup_bf16_b{b}_nbp"] = by["small", b]["speedup_bf16"]
    if rows:
        keys["size_ratio_nbp"] = rows[0]["size_ratio"]
    print("RESULT quantize_gpu " + " ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={str(v).replace(' ', '_')}"
        for k, v in keys.items()) + f" device={name.replace(' ', '_')}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
