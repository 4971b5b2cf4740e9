"""Run a command as on an older x86 CPU kind: the instruction sets of PyTorch's kernels (ATen),
oneDNN and MKL capped, and framecast's view of the CPU flags cut to match.

    python benchmarks/lib/emulate_isa.py --isa avx512_vnni -- python benchmarks/quantize.py --quick
    python benchmarks/lib/emulate_isa.py --isa avx2 -- python benchmarks/serve_load.py --quick
    python benchmarks/lib/emulate_isa.py --list

Issue 31's goals name CPU kinds this project's machines may not be: an Intel CPU with AVX-512
VNNI and no bf16 (Cascade Lake, Ice Lake), an AVX2-only one. On a newer CPU this runs the same
code paths those kinds would run: the layer chooser sees no native bf16, oneDNN picks its
VNNI (or AVX2) kernels, ATen its AVX-512 (or AVX2) ones. It is an emulation of the instruction
set, not of the machine: caches, clocks and the core's own execution units stay this CPU's, so
its timings are evidence on the code paths and their choices, not a measurement of that CPU.
The benchmarks' machine line says so ("emulating ..."), and only capping down is accepted: an
ISA this CPU lacks is refused. AMX is not offered: no cap turns another CPU into one with
AMX. The environment is inherited by the processes the command starts, Ray's local workers
and Serve replicas included.
"""

from __future__ import annotations

import getpass
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from benchmarks.lib.cli import new_parser  # noqa: E402


@dataclass(frozen=True)
class Isa:
    """One emulated instruction-set level."""
    what: str
    needs: frozenset[str]  # CPU flags the host must have to run it natively
    aten: str  # ATEN_CPU_CAPABILITY
    onednn: str  # ONEDNN_MAX_CPU_ISA
    mkl: str  # MKL_ENABLE_INSTRUCTIONS
    flags_off: tuple[str, ...]  # hidden from framecast.quant.kernels.cpu_flags


_NEWER_16BIT = ("avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_int8", "amx_tile")
ISAS = {
    "avx512_vnni": Isa("AVX-512 with VNNI, no bf16 (the Intel Cascade Lake / Ice Lake kind)",
                       frozenset({"avx512f", "avx512bw", "avx512_vnni"}), "avx512",
                       "AVX512_CORE_VNNI", "AVX512", _NEWER_16BIT),
    "avx2": Isa("AVX2 and FMA only: no AVX-512, VNNI or bf16", frozenset({"avx2", "fma"}),
                "avx2", "AVX2", "AVX2",
                (*_NEWER_16BIT, "avx512_vnni", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
                 "avx512dq", "avx512cd")),
}


def host_flags() -> frozenset[str]:
    """This CPU's flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def environment(name: str, flags: frozenset[str], base: dict[str, str]) -> dict[str, str]:
    """`base` with the caps of ISA `name`; ValueError (one line) for an unknown ISA or one this
    CPU cannot run natively."""
    if name not in ISAS:
        raise ValueError(f"unknown ISA {name!r}; accepted: {', '.join(ISAS)}")
    isa = ISAS[name]
    missing = sorted(isa.needs - flags)
    if missing:
        raise ValueError(f"this CPU cannot emulate {name}: it lacks {' '.join(missing)} (an "
                         "emulation only caps the instruction set down)")
    env = dict(base)
    off = {f for f in env.get("FRAMECAST_CPU_FLAGS_OFF", "").split(",") if f}
    # Inductor's on-disk cache does not key its graphs by ATEN_CPU_CAPABILITY: a kernel cached
    # by a native run is handed to a capped one, and computes garbage there (measured,
    # benchmarks/RESULTS.md). Each ISA gets its own cache.
    cache = env.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), f"torchinductor_{_user()}")
    env.update(ATEN_CPU_CAPABILITY=isa.aten, ONEDNN_MAX_CPU_ISA=isa.onednn,
               MKL_ENABLE_INSTRUCTIONS=isa.mkl, FRAMECAST_EMULATED_ISA=name,
               FRAMECAST_CPU_FLAGS_OFF=",".join(sorted(off | set(isa.flags_off))),
               TORCHINDUCTOR_CACHE_DIR=f"{cache.rstrip('/')}-{name}")
    return env


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry and no $USER
        return str(os.getuid())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    parser = new_parser(__doc__)
    parser.add_argument("--isa", choices=sorted(ISAS), help="the instruction-set level to run "
                        "the command at")
    parser.add_argument("--list", action="store_true", help="list the ISAs and whether this "
                        "CPU can emulate each, then exit")
    args = parser.parse_args(argv)
    flags = host_flags()
    if args.list:
        if command:
            parser.error("--list runs no command; give --isa NAME to run one")
        for name, isa in ISAS.items():
            ok = "yes" if isa.needs <= flags else "no (lacks " + " ".join(
                sorted(isa.needs - flags)) + ")"
            print(f"{name:12s} {isa.what}; emulable here: {ok}")
        return
    if args.isa is None or not command:
        parser.error("give --isa NAME and a command after --, e.g. --isa avx2 -- python "
                     "benchmarks/quantize.py --quick")
    try:
        env = environment(args.isa, flags, dict(os.environ))
    except ValueError as err:
        parser.error(str(err))
    print(f"emulate_isa: {args.isa} ({ISAS[args.isa].what}): ATEN_CPU_CAPABILITY="
          f"{env['ATEN_CPU_CAPABILITY']} ONEDNN_MAX_CPU_ISA={env['ONEDNN_MAX_CPU_ISA']} "
          f"MKL_ENABLE_INSTRUCTIONS={env['MKL_ENABLE_INSTRUCTIONS']}; flags hidden: "
          f"{env['FRAMECAST_CPU_FLAGS_OFF']}", file=sys.stderr, flush=True)
    try:
        os.execvpe(command[0], command, env)
    except OSError as err:
        parser.error(f"cannot run {command[0]!r}: {err}")


if __name__ == "__main__":
    main()
