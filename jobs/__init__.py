"""Entry points: `python -m jobs.X` or `ray job submit --working-dir . -- python -m jobs.X`."""

import importlib.util
import sys

if importlib.util.find_spec("framecast") is None:
    # Typical cause: `ray start` was run outside the project's virtualenv, so a submitted job's
    # `python` is another interpreter. One clear line instead of an import traceback.
    sys.exit(f"framecast is not installed for {sys.executable}: run `make install` and start Ray "
             "from the project's virtualenv (`source .venv/bin/activate`), or `pip install -e .`")
