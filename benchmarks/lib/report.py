"""Shared by the benchmarks: machine description, a Markdown table, appending to RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:  # the model name alone ("AMD EPYC") does not tell one CPU generation from the next
        info = dict(line.split(":", 1) for line in
                    Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        if "model name" in info:
            cpu = f"{info['model name']}, family {info.get('cpu family', '?')} model " \
                  f"{info.get('model', '?')}"
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = ""
    try:
        import torch

        from framecast.quant.kernels import cpu_summary

        cpu = f"{cpu}; int8/bf16 flags: {cpu_summary()}"
        if os.environ.get("FRAMECAST_EMULATED_ISA"):  # benchmarks/lib/emulate_isa.py
            cpu = (f"{cpu}; emulating {os.environ['FRAMECAST_EMULATED_ISA']}: oneDNN "
                   f"{os.environ.get('ONEDNN_MAX_CPU_ISA', '?')}, ATen "
                   f"{torch.backends.cpu.get_cpu_capability()}")

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB{gpu}, Python {platform.python_version()}"


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def key_values(values: dict[str, float | int | str]) -> str:
    """'k=v k=v ...' for a benchmark's closing RESULT line."""
    def fmt(v: float | int | str) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v) if isinstance(v, int) or " " not in v else "na"  # one token per value

    return " ".join(f"{k}={fmt(v)}" for k, v in values.items())


def report(name: str, title: str, table: str, notes: str, result: str) -> None:
    """Print the table and append it, with machine and date, to benchmarks/RESULTS.md; the RESULT
    line is printed last."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    section = (f"\n## {name}: {title}\n\n{stamp}, {machine()}\n\n{table}\n\n{notes}\n\n"
               f"`{result}`\n")
    print(table)
    print(notes)
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by `benchmarks/*.py`; newest last.\n")
    with RESULTS.open("a") as f:
        f.write(section)
    print(result)
