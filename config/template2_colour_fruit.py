"""The reference run (config/stage_process.py) on the paper's template 2: a colour and a fruit ("green banana").

Trains on config/prompt/template2_train.json and evaluates on template2_test.json (the
authors' prompt sets); every other setting is the reference run's.

    bash run_process.sh config/template2_colour_fruit.py
"""

from config import stage_process


def get_config():
    config = stage_process.get_config()
    config.exp_name = "template2_colour_fruit"
    config.prompt_file = "config/prompt/template2_train.json"
    config.eval.prompt_file = "config/prompt/template2_test.json"
    return config
