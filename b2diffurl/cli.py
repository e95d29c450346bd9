"""The command-line layer, and the only module that knows of one: every command's --config flag,
the checks made before anything loads, and one-line errors with their exit codes.

Each command parses its own set of flags (`flag_values()`), so that any two command modules
import together and each command's work stays a plain function callable from Python."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
from typing import Callable, Iterator, Sequence

from absl import flags
from ml_collections import config_flags

from b2diffurl.errors import EXIT_CODES, SIGTERM_EXIT_CODE, Terminated, UserError, exit_code

MIXED_PRECISION = ("no", "fp16", "bf16")


def flag_values(with_config: bool = True) -> flags.FlagValues:
    """A new set of flags holding --help and (if `with_config`) --config: a command adds its own."""
    values = flags.FlagValues()
    flags.DEFINE_bool("help", False, "show the flags and exit", short_name="h", flag_values=values)
    if not with_config:
        return values
    config_flags.DEFINE_config_file("config", "config/stage_process.py",
                                    "ml_collections config file; override fields as --config.key value",
                                    flag_values=values)
    return values


def _require(condition: bool, key: str, allowed: str, value) -> None:
    if not condition:
        raise UserError(f"config.{key} = {value!r} is not allowed: {allowed}")


def check_config(config) -> None:
    """Refuse an inconsistent config before anything is loaded."""
    # late: keeps `plan` light when it fails early
    from b2diffurl.method import selection
    from b2diffurl.method.loss import STEP_WEIGHTINGS
    from b2diffurl.models import prompts, rewards
    from b2diffurl.models.pipeline import ATTENTIONS

    num_steps = config.sample.num_steps
    _require(num_steps >= 1, "sample.num_steps", "an integer >= 1", num_steps)
    _require(config.sample.eta > 0, "sample.eta", "> 0 (every step needs a density)", config.sample.eta)
    _require(config.num_branches >= 1, "num_branches", "an integer >= 1", config.num_branches)
    for key in ("sample.batch_size", "sample.num_batches_per_stage", "sample.unet_chunk_size", "sample.decode_chunk_size",
                "train.batch_size", "train.gradient_accumulation_steps", "train.num_epochs", "train.steps_per_forward",
                "stages.num_stages", "reward.batch_size"):
        group, name = key.split(".")
        value = config[group][name]
        _require(value >= 1, key, "an integer >= 1", value)
    from b2diffurl.stage.retention import KEEP_CHOICES

    _require(config.keep_sample_files in KEEP_CHOICES, "keep_sample_files", " / ".join(KEEP_CHOICES),
             config.keep_sample_files)
    _require(config.process_timeout > 0, "process_timeout", "> 0 seconds", config.process_timeout)
    _require(config.reward.retries >= 0, "reward.retries", "an integer >= 0", config.reward.retries)
    _require(config.train.max_untrained_stages >= 1, "train.max_untrained_stages", "an integer >= 1",
             config.train.max_untrained_stages)
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
    _require(config.train.step_weighting in STEP_WEIGHTINGS, "train.step_weighting", " / ".join(STEP_WEIGHTINGS),
             config.train.step_weighting)
    _require(config.mixed_precision in MIXED_PRECISION, "mixed_precision", " / ".join(MIXED_PRECISION),
             config.mixed_precision)
    _require(config.unet_attention in ATTENTIONS, "unet_attention", " / ".join(ATTENTIONS), config.unet_attention)
    # Measured on torch 2.13 (CPU, bf16 autocast): the compiled UNet's LoRA gradients were off by 95% (norm a third).
    _require(not config.compile_unet or config.mixed_precision == "no", "compile_unet",
             "False under mixed precision (compiled under bf16 autocast, the LoRA's gradients came out wrong)",
             config.compile_unet)
    _require(not config.train.use_8bit_adam or importlib.util.find_spec("bitsandbytes") is not None,
             "train.use_8bit_adam", "True only with bitsandbytes installed (pip install bitsandbytes)",
             config.train.use_8bit_adam)
    rewards.check_reward_config(config.reward)  # names, weighted components, a user function, aesthetic weights
    _require(config.eval.selection in selection.SELECTIONS, "eval.selection",
             ", ".join(sorted(selection.SELECTIONS)), config.eval.selection)
    _require(not config.resume_from or os.path.isdir(config.resume_from), "resume_from",
             "'' (a new LoRA) or an existing checkpoint folder", config.resume_from)
    prompts.load_prompts(config.prompt_file)  # raises UserError naming the file
    from b2diffurl.tracking import check_trackers

    check_trackers(config)  # a tracker name, and wandb installed where asked for


def parse_flags(values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
    """Parse `argv` (program name first) into `values`; a bad flag or config key is one line
    and exit code 2, --help prints the flags and exits 0. Returns the positional arguments."""
    try:
        rest = values(list(argv))[1:]
        if "help" in values and values["help"].value:
            print(values.get_help())
            sys.exit(0)
        return rest
    except AttributeError as error:  # ml_collections: a key the config does not have
        key = str(error).strip("\"'")
        message = f"unknown config key {key!r} (config/base.py lists the keys)"
    except (flags.Error, KeyError, TypeError, ValueError) as error:
        message = str(error).splitlines()[0]
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_command_flags(values: flags.FlagValues, argv: Sequence[str] | None = None) -> None:
    """Parse the flags of a command that takes no config and no positional arguments (default
    sys.argv); anything left over is one line on stderr and exit code 2."""
    rest = parse_flags(values, sys.argv if argv is None else argv)
    if rest:
        print(f"error: unexpected arguments: {' '.join(rest)}", file=sys.stderr)
        sys.exit(2)


def load_config(values: flags.FlagValues, continues_run: bool = True):
    """The parsed --config, checked: its values, that its models can be had and (if
    `continues_run`) that it continues the run it names. UserError else."""
    try:
        config = values["config"].value
        config.to_dict()
    except OSError as error:  # ml_collections reports a config file it could not load late
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise UserError(f"cannot load the config file: {lines[-1]}") from None
    check_config(config)
    from b2diffurl.models.hub import check_models_available
    from b2diffurl.models.rewards import required_models
    from b2diffurl.stage.resume import check_continuation

    check_models_available(config, required_models(config.reward))
    if continues_run:
        check_continuation(config, record=False)
    return config


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within: SIGTERM raises errors.Terminated (once), so that `finally` blocks and the atomic
    writes remove their partial files before the process exits."""
    def on_sigterm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the unwinding short
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:  # the terminal or a `| tee` is gone already (SIGTERM to the whole group)
        pass


def run(values: flags.FlagValues, body: Callable, argv: Sequence[str] | None = None, *, positional: bool = False,
        continues_run: bool = True, where: Callable | None = None):
    """A command: parse `argv` (default sys.argv) into `values`, load and check the config (see
    load_config; `continues_run=False` for commands that only read a run), then return
    `body(config, *positional arguments)`. An error of errors.EXIT_CODES becomes one line on
    stderr, prefixed with `where(config)` (what was running) when given, and its exit code;
    SIGTERM ends the command within seconds, without partial files, with exit code 143."""
    argv = sys.argv if argv is None else argv
    rest = parse_flags(values, argv)
    config = None
    try:
        with sigterm_unwinds():
            loose = [arg for arg in rest if arg.lower() in ("true", "false")]
            if loose:  # `--config.KEY True` parses as the flag alone, then a stray word
                raise UserError(f"unexpected argument {loose[0]!r}: a boolean config key takes its value after "
                                f"'=', as in --config.train.fresh_optimizer={loose[0]}")
            if rest and not positional:
                raise UserError(f"unexpected arguments: {' '.join(rest)}")
            config = load_config(values, continues_run)
            return body(config, *rest)
    except tuple(EXIT_CODES) as error:
        place = f"{where(config)}: " if where is not None and config is not None else ""
        _say(f"error: {place}{error}")
        sys.exit(exit_code(error))
    except Terminated:
        place = where(config) if where is not None and config is not None else os.path.basename(argv[0])
        _say(f"error: {place}: stopped by SIGTERM; nothing partial was left, rerun the same command to continue")
        sys.exit(SIGTERM_EXIT_CODE)


def run_stage_script(step: str) -> None:
    """The whole of run_{step}.py for step "sample", "select" or "train": parse the flags,
    check the config, then run b2diffurl.stage.{step}.{step}_stage(config). The stage module is
    imported after the checks, so that bad input is refused before torch loads."""
    import importlib

    def body(config):
        from b2diffurl.logs import setup_logging
        from b2diffurl.stage.lock import run_lock
        from b2diffurl.paths import run_dir

        setup_logging()
        run_step = getattr(importlib.import_module(f"b2diffurl.stage.{step}"), f"{step}_stage")
        with run_lock(run_dir(config)):
            run_step(config, command=invocation(values)) if step == "train" else run_step(config)

    values = flag_values()
    run(values, body, where=lambda config: f"stage {config.stage}, run_{step}.py{process_name()}")


def invocation(values: flags.FlagValues) -> str:
    """The run_process.sh command of the parsed --config flag: its file and overrides, less the stage."""
    import shlex

    overrides = config_flags.get_override_values(values["config"])
    overrides.pop("stage", None)
    return shlex.join(["bash", "run_process.sh", config_flags.get_config_filename(values["config"]),
                       *[f"--config.{key}={value}" for key, value in overrides.items()]])


def process_name() -> str:
    """", rank R of N" under a launcher of N > 1 processes, else ""."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f", rank {os.environ.get('RANK', '?')} of {world}" if world > 1 else ""
