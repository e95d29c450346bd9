"""Looking at runs, from Python or the command line: held-out evaluation (evaluate.py, with
b2diffurl.models.metrics), images from a LoRA (generate.py), B2-DiffuRL against its control and
the DDPO-style baseline (compare.py), a run folder read into arrays (run_data.py), its curves
(curves.py) and per-stage table (stage_table.py)."""
