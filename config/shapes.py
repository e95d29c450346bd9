"""config/tiny.py for longer: the shapes-world run that the README's outcome quotes.

    bash run_process.sh config/shapes.py
    python -m b2diffurl.compare --config config/shapes.py     # against the DDPO-style baseline
"""

from config import tiny


def get_config():
    config = tiny.get_config()
    config.exp_name = "shapes"
    config.stages.num_stages = 12
    config.eval.every = 4
    return config
