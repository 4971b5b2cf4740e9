"""Shared fixtures: every test session gets its own MLflow store and, when asked, a local Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Workers must not see a cluster from the environment: tests start their own.
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private MLflow home per test session, so tests never write into the project folder."""
    home = tmp_path_factory.mktemp("framecast-home")
    os.environ["FRAMECAST_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return home


@pytest.fixture
def job_env():
    """The environment of a job started as a process with its own project home (and so its own
    MLflow store): `job_env(home, **more)`. MLFLOW_TRACKING_URI is dropped: an earlier test's
    `mlflow.set_tracking_uri` exports it, and the job would write into that store instead."""
    def make(home: Path, **more: str) -> dict[str, str]:
        env = {**os.environ, "FRAMECAST_HOME": str(home), **more}
        env.pop("MLFLOW_TRACKING_URI", None)
        return env

    return make


@pytest.fixture(scope="session")
def ray_local():
    """A fresh local Ray with 2 CPUs for the whole session (started once: ~5 s)."""
    import ray

    ray.init(address="local", num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def int8_compute():
    """W8A8 layers compute in int8 in the test: tests of the int8 arithmetic must not see the
    float32 shortcut the layer chooser takes where int8 is slower (tested on its own)."""
    from framecast.quant import kernels

    with kernels.choose(fused_quant=kernels.CHOICE.fused_quant, float_layers=False):
        yield


# What the lent GPU machine lacks (it has torch, numpy, scikit-image, matplotlib).
NOT_ON_THE_GPU_MACHINE = ("ray", "mlflow", "pyvista", "vtk")


@pytest.fixture
def run_gpu_script():
    """Run benchmarks/<script> with argv as a fresh process in which importing any of
    NOT_ON_THE_GPU_MACHINE (plus `also`) fails, as on the GPU machine."""
    repo = Path(__file__).resolve().parents[1]

    def run(script: str, argv: list[str], also: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess:
        code = (f"import sys, runpy\n"
                f"for m in {NOT_ON_THE_GPU_MACHINE + also!r}: sys.modules[m] = None\n"
                f"sys.argv = {[script, *argv]!r}\n"
                f"runpy.run_path('benchmarks/{script}', run_name='__main__')\n")
        return subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True,
                              text=True)

    return run
