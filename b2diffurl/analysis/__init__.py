"""Looking at runs, from Python or the command line: held-out evaluation (evaluate.py, with
metrics.py), images from a LoRA (generate.py), B2-DiffuRL against its control and the
DDPO-style baseline (compare.py), a run's curves (curves.py) and per-stage table
(stage_table.py), and image grids (grids.py)."""
