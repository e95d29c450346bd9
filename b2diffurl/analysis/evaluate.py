"""Held-out evaluation of the base model and a LoRA: reward and diversity, one JSON report.

    python -m b2diffurl.analysis.evaluate --config config/tiny.py --lora model/tiny/stage2/checkpoints
    python -m b2diffurl.analysis.evaluate --config config/tiny.py --stage 2     # what run_process.sh runs

N images (`--num-images`, default eval.num_images_per_prompt) for each prompt of `--prompt-file`
(default eval.prompt_file), with the run's sampling settings and a fixed seed, so every
evaluation of a run sees the same noise. With --lora the report holds "base" and "lora";
with --stage k it evaluates stage k's LoRA into stage{k}/evaluation.json and, once per run,
the base model into {run}/evaluation_base.json. From Python: `evaluate(config, lora=...)` or
`evaluate(config, stage=k)`, which return the report.
"""

from __future__ import annotations

import logging
import os
import re

from absl import flags

from b2diffurl import cli
from b2diffurl.errors import UserError

log = logging.getLogger("b2diffurl.analysis.evaluate")  # not __name__: "__main__" when run


def evaluate(config, lora: str | None = None, stage: int | None = None, prompt_file: str | None = None,
             num_images: int | None = None, out: str | None = None, with_base: bool = True) -> dict:
    """Evaluate the base model (unless `with_base` is False and a LoRA is given) and `lora`, or
    stage `stage`'s LoRA (the base then once per run, into the run folder); write the report to
    `out` (default evaluation.json, or the stage folder's) and return it."""
    from b2diffurl.analysis.generate import generate_with_config
    from b2diffurl.models.metrics import build_embedder, summarise
    from b2diffurl.files import atomic_write_json
    from b2diffurl.models.checkpoint import load_lora
    from b2diffurl.models.pipeline import load_pipeline
    from b2diffurl.models.prompts import load_prompts
    from b2diffurl.models.rewards import build_reward, score_images
    from b2diffurl.stage.context import make_accelerator
    from b2diffurl.paths import BASE_EVALUATION_FILE, StagePaths, run_dir

    prompt_file = prompt_file or config.eval.prompt_file
    prompts = load_prompts(prompt_file)
    prompts = prompts[: config.eval.max_prompts] if config.eval.max_prompts > 0 else prompts
    num_images = num_images or config.eval.num_images_per_prompt
    base_out = None
    if stage is not None:
        stage_paths = StagePaths.of(config, stage)
        if not stage_paths.is_complete():
            raise UserError(f"stage {stage} is not complete: nothing to evaluate")
        lora, out = stage_paths.checkpoint, out or stage_paths.evaluation
        base_out = os.path.join(run_dir(config), BASE_EVALUATION_FILE)
    out = out or "evaluation.json"
    if lora and not os.path.isdir(lora):
        raise UserError(f"--lora {lora} is not a folder")

    accelerator = make_accelerator(config)
    pipe = load_pipeline(config, accelerator.device)  # a fresh LoRA is zero: this is the base model
    reward = build_reward(config.reward, accelerator.device)
    embed, embedding_name = build_embedder(config, accelerator.device)
    group_of = getattr(reward, "prompt_groups", None)  # success rates per prompt group, where the reward has them
    outcomes = getattr(reward, "outcomes", None)  # what went wrong, per group, where the reward can say
    modes = getattr(reward, "modes", None)  # ... and with each image, for paired comparisons

    def evaluate_model(name: str) -> dict:
        images, expanded = generate_with_config(pipe, accelerator, config, prompts, num_images, seed=config.seed)
        images = images.numpy()
        scores = score_images(reward, images, expanded, config.reward.batch_size, name=f"reward {config.reward.name}",
                              retries=config.reward.retries)
        result = summarise(expanded, scores, embed(images), group_of)
        log.info("%s: reward %.4f ± %.4f (95%% CI), diversity %.4f per prompt, %.4f over all %d images", name,
                 result["reward_mean"], result["reward_ci95"], result["diversity_mean"], result["diversity_all"],
                 len(images))
        for group, rate in result.get("success", {}).items():
            log.info("%s: success %.3f [%.3f, %.3f] over %d images: %s", name, rate["success_rate"], rate["ci95_low"],
                     rate["ci95_high"], rate["num_images"], group)
        if outcomes is not None:
            result["outcomes"] = outcomes(images, expanded)
            for group, row in result["outcomes"].items():
                log.info("%s: %s: %s; order right %d of %d", name, group,
                         ", ".join(f"{mode} {share:.3f}" for mode, share in row["modes"].items()),
                         row["order_right"], row["order_of"])
        if modes is not None:
            result["modes"] = modes(images, expanded)
        return result

    def header(lora_path: str | None, stage_index: int | None) -> dict:
        return {"stage": stage_index, "lora": lora_path, "model": config.pretrained.model, "prompt_file": prompt_file,
                "num_images_per_prompt": num_images, "reward": config.reward.name,
                "diversity_embedding": embedding_name, "seed": config.seed, "num_steps": config.sample.num_steps,
                "eta": config.sample.eta, "guidance_scale": config.sample.guidance_scale}

    results = {}
    if base_out is None and (not lora or with_base):
        results["base"] = evaluate_model("base")
    elif base_out is not None and not os.path.exists(base_out):
        atomic_write_json({**header(None, None), "results": {"base": evaluate_model("base")}}, base_out)
    if lora:
        load_lora(pipe.unet, lora)
        results["lora"] = evaluate_model("lora")
    report = {**header(lora or None, stage), "results": results}
    atomic_write_json(report, out)
    log.info("report written to %s", out)
    if stage is not None:
        from b2diffurl.files import read_json
        from b2diffurl.stage.card import write_model_card
        from b2diffurl.tracking import track

        write_model_card(config, stage)  # the LoRA's card, now with its held-out result
        base = read_json(base_out)["results"]["base"]
        track(accelerator, config, stage, {**_scalars("eval", results["lora"]), **_scalars("eval_base", base)})
    return report


def _scalars(prefix: str, result: dict) -> dict:
    """An evaluation result as tracker scalars: reward, its interval, diversity, success rates."""
    scalars = {f"{prefix}/{key}": result[key] for key in ("reward_mean", "reward_ci95", "diversity_mean", "diversity_all")
               if key in result}
    for group, rate in result.get("success", {}).items():
        name = re.sub(r"[^\w-]+", "_", group)  # "two objects, held-out" -> two_objects_held-out
        scalars.update({f"{prefix}/success/{name}/{key}": rate[key] for key in ("success_rate", "ci95_low", "ci95_high")})
    return scalars


FLAGS = cli.flag_values()
LORA = flags.DEFINE_string("lora", "", "LoRA checkpoint folder to evaluate beside the base model", flag_values=FLAGS)
STAGE = flags.DEFINE_integer("stage", -1, "evaluate this stage's LoRA into its stage folder (run_process.sh)",
                             flag_values=FLAGS)
PROMPT_FILE = flags.DEFINE_string("prompt-file", "", "held-out prompts (JSON list); default eval.prompt_file",
                                  flag_values=FLAGS)
NUM_IMAGES = flags.DEFINE_integer("num-images", 0, "images per prompt; default eval.num_images_per_prompt",
                                  flag_values=FLAGS)
OUT = flags.DEFINE_string("out", "", "report path; default evaluation.json (or the stage folder with --stage)",
                          flag_values=FLAGS)
NO_BASE = flags.DEFINE_bool("no-base", False, "with --lora: skip the base model", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> None:
    from b2diffurl.logs import setup_logging

    def body(config):
        import contextlib

        from b2diffurl.stage.lock import run_lock
        from b2diffurl.paths import run_dir

        setup_logging()
        stage = STAGE.value if STAGE.value >= 0 else None
        with run_lock(run_dir(config)) if stage is not None else contextlib.nullcontext():  # writes into the run
            evaluate(config, LORA.value or None, stage, PROMPT_FILE.value or None, NUM_IMAGES.value or None,
                     OUT.value or None, with_base=not NO_BASE.value)

    cli.run(FLAGS, body, argv, continues_run=False,
            where=lambda config: f"evaluation of stage {STAGE.value}" if STAGE.value >= 0 else "evaluation")


if __name__ == "__main__":
    main()
