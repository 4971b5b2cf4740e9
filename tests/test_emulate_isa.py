"""benchmarks/lib/emulate_isa.py: a command run at a capped instruction set, seen as such by
framecast's CPU checks and by the benchmarks' machine line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.lib import emulate_isa
from framecast.quant import kernels

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "lib" / "emulate_isa.py"
ZEN4 = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"})


def test_the_environment_caps_every_library_and_hides_the_newer_flags():
    env = emulate_isa.environment("avx512_vnni", ZEN4, {"PATH": "/bin",
                                                        "FRAMECAST_CPU_FLAGS_OFF": "sse4a"})
    assert env["PATH"] == "/bin"
    assert (env["ATEN_CPU_CAPABILITY"], env["ONEDNN_MAX_CPU_ISA"],
            env["MKL_ENABLE_INSTRUCTIONS"]) == ("avx512", "AVX512_CORE_VNNI", "AVX512")
    hidden = set(env["FRAMECAST_CPU_FLAGS_OFF"].split(","))
    assert {"avx512_bf16", "amx_bf16", "sse4a"} <= hidden  # a flag hidden before stays hidden
    assert "avx512_vnni" not in hidden
    avx2 = emulate_isa.environment("avx2", ZEN4, {"TORCHINDUCTOR_CACHE_DIR": "/c/ind/"})
    assert {"avx512_vnni", "avx512f", "avx512_bf16"} <= set(
        avx2["FRAMECAST_CPU_FLAGS_OFF"].split(","))
    # compiled kernels cached apart per ISA: a native run's would compute garbage here
    assert avx2["TORCHINDUCTOR_CACHE_DIR"] == "/c/ind-avx2"
    assert env["TORCHINDUCTOR_CACHE_DIR"].endswith("-avx512_vnni")


def test_only_capping_down_is_accepted():
    with pytest.raises(ValueError, match="lacks avx512_vnni avx512bw avx512f"):
        emulate_isa.environment("avx512_vnni", frozenset({"avx2", "fma"}), {})
    with pytest.raises(ValueError, match="unknown ISA 'amx'"):
        emulate_isa.environment("amx", ZEN4, {})


def test_hidden_flags_are_absent_to_the_kernel_choices(monkeypatch):
    monkeypatch.delenv("FRAMECAST_CPU_FLAGS_OFF", raising=False)  # this CPU's own flags
    kernels.cpu_flags.cache_clear()
    try:
        flags = kernels.cpu_flags()
        if not flags:
            pytest.skip("no /proc/cpuinfo flags here")
        hide = sorted(flags)[:2]
        monkeypatch.setenv("FRAMECAST_CPU_FLAGS_OFF", f" {hide[0]}, {hide[1]},")
        kernels.cpu_flags.cache_clear()
        assert kernels.cpu_flags() == flags - set(hide)
        bf16 = flags & {"avx512_bf16", "amx_bf16"}
        monkeypatch.setenv("FRAMECAST_CPU_FLAGS_OFF", ",".join(bf16) or "none")
        kernels.cpu_flags.cache_clear()
        assert not kernels.native_16bit(torch.bfloat16)  # bf16 hidden where the CPU has it
    finally:
        monkeypatch.delenv("FRAMECAST_CPU_FLAGS_OFF", raising=False)
        kernels.cpu_flags.cache_clear()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.skipif(not {"avx2", "fma"} <= emulate_isa.host_flags(), reason="needs AVX2")
def test_a_command_runs_at_the_capped_isa_and_its_reports_say_so():
    probe = ("import sys, torch; sys.path.insert(0, '.');"
             "from framecast.quant import kernels; from benchmarks.lib.report import machine;"
             "print(torch.backends.cpu.get_cpu_capability(),"
             " kernels.native_16bit(torch.bfloat16), 'avx512_vnni' in kernels.cpu_flags());"
             "print(machine())")
    done = _run("--isa", "avx2", "--", sys.executable, "-c", probe)
    assert done.returncode == 0, done.stderr
    first, line = done.stdout.splitlines()[:2]
    assert first == "AVX2 False False"
    assert "emulating avx2: oneDNN AVX2, ATen AVX2" in line
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in done.stderr


def test_bad_calls_stop_with_a_one_line_error_and_list_tells_what_is_emulable():
    for args in ((), ("--isa", "avx2"), ("--isa", "sse2", "--", "true"),
                 ("--list", "--", "true")):
        done = _run(*args)
        assert done.returncode == 2 and "error:" in done.stderr.splitlines()[-1]
    listed = _run("--list")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(emulate_isa.ISAS)
    assert all("emulable here:" in line for line in listed.stdout.splitlines())
