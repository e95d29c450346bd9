"""The reference run (config/stage_process.py) on the paper's template 3: an object and its place ("chair under umbrella").

Trains on config/prompt/template3_train.json and evaluates on template3_test.json (the
authors' prompt sets); every other setting is the reference run's.

    bash run_process.sh config/template3_object_place.py
"""

from config import stage_process


def get_config():
    config = stage_process.get_config()
    config.exp_name = "template3_object_place"
    config.prompt_file = "config/prompt/template3_train.json"
    config.eval.prompt_file = "config/prompt/template3_test.json"
    return config
