"""Entry points: `python -m jobs.X` or `ray job submit --working-dir . -- python -m jobs.X`."""
