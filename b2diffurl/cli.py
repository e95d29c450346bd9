"""What the three scripts share: the config flag, up-front checks, one-line errors."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    "config", "config/stage_process.py", "ml_collections config file; override fields as --config.key value"
)
MIXED_PRECISION = ("no", "fp16", "bf16")


class UserError(Exception):
    """A problem the user can fix (bad config, missing model or file): one line, exit code 2."""


# Errors a script reports as one line (no traceback), by class name, with their exit codes;
# named rather than imported so that the checks run before torch is imported.
ONE_LINE_ERRORS = {"UserError": 2, "SampleFileError": 2, "NonFiniteWeightsError": 1}


def _require(condition: bool, key: str, allowed: str, value) -> None:
    if not condition:
        raise UserError(f"config.{key} = {value!r} is not allowed: {allowed}")


def check_config(config) -> None:
    """Refuse an inconsistent config before anything is loaded."""
    from b2diffurl import prompts, rewards, selection  # late: keeps `plan` light when it fails early

    num_steps = config.sample.num_steps
    _require(num_steps >= 1, "sample.num_steps", "an integer >= 1", num_steps)
    _require(config.sample.eta > 0, "sample.eta", "> 0 (every step needs a density)", config.sample.eta)
    _require(config.num_branches >= 1, "num_branches", "an integer >= 1", config.num_branches)
    for key in ("sample.batch_size", "sample.num_batches_per_stage", "sample.unet_chunk_size", "sample.decode_chunk_size",
                "train.batch_size", "train.gradient_accumulation_steps", "train.num_epochs",
                "stages.num_stages", "reward.batch_size"):
        group, name = key.split(".")
        value = config[group][name]
        _require(value >= 1, key, "an integer >= 1", value)
    _require(config.eval.history_cnt >= 0, "eval.history_cnt", "an integer >= 0 (0: this stage's scores only)",
             config.eval.history_cnt)
    smin, smax = config.stages.split_step_min, config.stages.split_step_max
    _require(1 <= smin <= smax <= num_steps, "stages.split_step_min/max",
             f"1 <= split_step_min <= split_step_max <= sample.num_steps={num_steps}", (smin, smax))
    _require(config.split_step == -1 or 1 <= config.split_step <= num_steps, "split_step",
             f"-1 (use the curriculum) or 1..sample.num_steps={num_steps}", config.split_step)
    _require(0 <= config.stage < config.stages.num_stages, "stage",
             f"0..stages.num_stages-1={config.stages.num_stages - 1}", config.stage)
    _require(config.eval.pos_threshold >= config.eval.neg_threshold, "eval.pos_threshold",
             f">= eval.neg_threshold={config.eval.neg_threshold}", config.eval.pos_threshold)
    _require(config.mixed_precision in MIXED_PRECISION, "mixed_precision", " / ".join(MIXED_PRECISION),
             config.mixed_precision)
    _require(not config.train.use_8bit_adam or importlib.util.find_spec("bitsandbytes") is not None,
             "train.use_8bit_adam", "True only with bitsandbytes installed (pip install bitsandbytes)",
             config.train.use_8bit_adam)
    rewards.check_reward_config(config.reward)  # names, weighted components, a user function, aesthetic weights
    _require(config.eval.selection in selection.SELECTIONS, "eval.selection",
             ", ".join(sorted(selection.SELECTIONS)), config.eval.selection)
    _require(not config.resume_from or os.path.isdir(config.resume_from), "resume_from",
             "'' (a new LoRA) or an existing checkpoint folder", config.resume_from)
    prompts.load_prompts(config.prompt_file)  # raises UserError naming the file


def run_script(body: Callable, positional: bool = False, continues_run: bool = True) -> Callable:
    """absl main for a script: check the config, that the models can be had and (if
    `continues_run`) that the config continues the run it names, then run
    `body(config, *args)`. A UserError or a bad sample file becomes one line on stderr and exit
    code 2; a diverged LoRA one line and exit code 1."""

    def main(argv):
        if len(argv) > 1 and not positional:
            raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
        config = CONFIG.value
        try:
            config.to_dict()
        except OSError as error:  # ml_collections reports a config file it could not load late
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            raise UserError(f"cannot load the config file: {lines[-1]}") from None
        check_config(config)
        from b2diffurl.hub import check_models_available
        from b2diffurl.resume import check_continuation

        check_models_available(config)
        if continues_run:
            check_continuation(config, record=False)
        body(config, *argv[1:])

    def guarded(argv):
        try:
            main(argv)
        except Exception as error:
            code = ONE_LINE_ERRORS.get(type(error).__name__)
            if code is None:
                raise
            print(f"error: {error}", file=sys.stderr)
            sys.exit(code)

    return guarded


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a bad flag or config key as one line and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except AttributeError as error:  # ml_collections: a key the config does not have
        key = str(error).strip("\"'")
        message = f"unknown config key {key!r} (config/base.py lists the keys)"
    except (flags.Error, KeyError, TypeError, ValueError) as error:
        message = str(error).splitlines()[0]
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(body: Callable, positional: bool = False, continues_run: bool = True) -> None:
    """Entry point of a script: parse flags, check, run `body(config, ...)` (see run_script).
    `continues_run=False` for tools that only read a run (generate, evaluate)."""
    app.run(run_script(body, positional, continues_run), flags_parser=_parse_flags)
