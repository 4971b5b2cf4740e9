"""Parameters, MB and GFLOPs per sequence for every preset of every model that reads frames
(frame predictors and tokenizers; torch's FLOP counter). Token generators read tokens from a
tokenizer: their speed is measured by nbp_speed.py and quantize.py.

    python benchmarks/model_cost.py [--quick]

Also times one forward pass on this machine. The V-BLT paper's table 1 gives 6.5 MB and
51.2 GFLOPs per sequence for its V-BLT (12 frames of 64x64).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from benchmarks.lib.cli import new_parser  # noqa: E402
from benchmarks.lib.report import key_values, markdown_table, report  # noqa: E402
from framecast.models import available_models, create  # noqa: E402
from framecast.models.profile import model_cost  # noqa: E402
from framecast.models.registry import entry, presets  # noqa: E402

FAMILIES = ("frame_predictor", "tokenizer")  # models whose input is a uint8 video


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="same measurements (they are fast)")
    parser.parse_args()
    torch.manual_seed(0)
    rows, values = [], {}
    names = [n for n in available_models() if entry(n).model_class.family in FAMILIES]
    skipped = sorted(set(available_models()) - set(names))
    for name in names:
        for preset in presets(name):
            for size in (32, 64):
                model = create(name, preset)
                cost = model_cost(model, 12, size)
                video = torch.zeros(1, 12, size, size, 1, dtype=torch.uint8)
                with torch.no_grad():
                    model(video)
                    start = time.perf_counter()
                    model(video)
                    ms = (time.perf_counter() - start) * 1000
                rows.append([name, preset, f"12x{size}x{size}", cost["params"],
                             round(cost["mb"], 2), round(cost["gflops"], 2), round(ms)])
                if size == 64:
                    values[f"{name}_{preset}_mb"] = round(cost["mb"], 2)
                    values[f"{name}_{preset}_gflops"] = round(cost["gflops"], 2)
    table = markdown_table(["model", "preset", "sequence", "parameters", "MB (fp32)",
                            "GFLOPs / sequence", "CPU forward ms"], rows)
    notes = ("GFLOPs of one forward pass over one sequence (FlopCounterMode: matmuls, "
             "convolutions, attention; a multiply-add counts 2). Paper table 1, V-BLT: 6.5 MB, "
             "51.2 GFLOPs per sequence."
             + (f" Not listed (token generators, whose input is tokens): {', '.join(skipped)}."
                if skipped else ""))
    report("model_cost", "size and compute per preset", table, notes,
           f"RESULT model_cost {key_values(values)}")


if __name__ == "__main__":
    main()
