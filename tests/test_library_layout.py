"""Ray stays at the edges: the library imports without it, and never shadows stdlib `platform`."""

import ast
import platform
import subprocess
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "platform" / "framecast"


def _module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:  # top level only: imports inside functions are the allowed edge
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_library_module_imports_ray_or_mlflow_at_module_level():
    offenders = {str(p.relative_to(LIB)): sorted(_module_level_imports(p) & {"ray", "mlflow"})
                 for p in LIB.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_library_loads_no_ray():
    code = ("import sys, framecast.data, framecast.render.scene, framecast.config, "
            "framecast.tracking, framecast.viz, framecast.cluster; "
            "print(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_platform_folder_does_not_shadow_the_stdlib_module():
    assert not (LIB.parent / "__init__.py").exists()
    # `import platform` from the repository root is Python's module, not this folder.
    assert not Path(platform.__file__).resolve().is_relative_to(LIB.parent.resolve())
    assert platform.python_version().startswith("3.")
