"""The reference run (config/stage_process.py) on the paper's template 3: an object and its place ("chair under umbrella").

Trains on config/prompt/template3_train.json and evaluates on template3_test.json.

    bash run_process.sh config/template3_object_place.py
"""

from config import stage_process


def get_config():
    return stage_process.on_template(3, "template3_object_place")
