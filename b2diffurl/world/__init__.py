"""The shapes world: a tiny text-to-image world with an exact, sparse reward, so that the
method can be run and checked offline on a CPU. shapes.py renders and parses it, pretrain.py
trains its model (shipped in model/shapes-sd), random_model.py builds a tiny random-weight SD
for tests, and failures.py sorts a stage's samples by what went wrong. Nothing in method/ or
stage/ knows of it; rewards.py offers its reward by name."""
