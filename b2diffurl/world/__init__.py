"""The shapes world: a tiny text-to-image world with an exact, sparse reward, so that the
method can be run and checked offline on a CPU. shapes.py renders and parses it, failures.py
says what went wrong with an image, and random_model.py builds a tiny random-weight SD for
offline runs and tests. Nothing in method/ or stage/ knows of it; rewards.py offers its reward
by name. The commands that train and probe its model are in b2diffurl/lab/."""
