"""The reference run (config/stage_process.py) on the paper's template 2: a colour and a fruit ("green banana").

Trains on config/prompt/template2_train.json and evaluates on template2_test.json.

    bash run_process.sh config/template2_colour_fruit.py
"""

from config import stage_process


def get_config():
    return stage_process.on_template(2, "template2_colour_fruit")
