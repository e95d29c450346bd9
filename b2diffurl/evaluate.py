"""Held-out evaluation of the base model and a LoRA: reward and diversity, one JSON report.

    python -m b2diffurl.evaluate --config config/tiny.py --lora model/tiny/stage2/checkpoints
    python -m b2diffurl.evaluate --config config/tiny.py --stage 2     # what run_process.sh runs

N images (`--num-images`, default eval.num_images_per_prompt) for each prompt of `--prompt-file`
(default eval.prompt_file), with the run's sampling settings and a fixed seed, so every
evaluation of a run sees the same noise. With --lora the report holds "base" and "lora";
with --stage k it evaluates stage k's LoRA into stage{k}/evaluation.json and, once per run,
the base model into {run}/evaluation_base.json.
"""

from __future__ import annotations

import os

from absl import flags

from b2diffurl import cli



def main(config) -> None:
    from b2diffurl.checkpoint import load_lora
    from b2diffurl.evaluation import build_embedder, summarise
    from b2diffurl.files import atomic_write_json
    from b2diffurl.logs import setup_logging
    from b2diffurl.paths import BASE_EVALUATION_FILE, StagePaths, run_dir
    from b2diffurl.pipeline import load_pipeline, make_accelerator
    from b2diffurl.prompts import load_prompts
    from b2diffurl.rewards import build_reward, score_images
    from b2diffurl.sampler import generate_with_config

    log = setup_logging()
    prompt_file = PROMPT_FILE.value or config.eval.prompt_file
    prompts = load_prompts(prompt_file)
    prompts = prompts[: config.eval.max_prompts] if config.eval.max_prompts > 0 else prompts
    num_images = NUM_IMAGES.value or config.eval.num_images_per_prompt
    lora, out, base_out = LORA.value, OUT.value or "evaluation.json", None
    if STAGE.value >= 0:
        stage_paths = StagePaths.of(config, STAGE.value)
        if not stage_paths.is_complete():
            raise cli.UserError(f"stage {STAGE.value} is not complete: nothing to evaluate")
        lora, out = stage_paths.checkpoint, OUT.value or stage_paths.evaluation
        base_out = os.path.join(run_dir(config), BASE_EVALUATION_FILE)
    if lora and not os.path.isdir(lora):
        raise cli.UserError(f"--lora {lora} is not a folder")

    accelerator = make_accelerator(config)
    pipe = load_pipeline(config, accelerator.device)  # a fresh LoRA is zero: this is the base model
    reward = build_reward(config.reward, accelerator.device)
    embed, embedding_name = build_embedder(config, accelerator.device)
    group_of = None
    if config.reward.name in ("shapes", "shapes_partial"):  # success rates per prompt group
        from b2diffurl.shapes import prompt_groups as group_of

    def evaluate(name: str) -> dict:
        images, expanded = generate_with_config(pipe, accelerator, config, prompts, num_images, seed=config.seed)
        images = images.numpy()
        scores = score_images(reward, images, expanded, config.reward.batch_size)
        result = summarise(expanded, scores, embed(images), group_of)
        log.info("%s: reward %.4f ± %.4f (95%% CI), diversity %.4f per prompt, %.4f over all %d images", name,
                 result["reward_mean"], result["reward_ci95"], result["diversity_mean"], result["diversity_all"],
                 len(images))
        for group, rate in result.get("success", {}).items():
            log.info("%s: success %.3f [%.3f, %.3f] over %d images: %s", name, rate["success_rate"], rate["ci95_low"],
                     rate["ci95_high"], rate["num_images"], group)
        return result

    results = {}
    if base_out is None and (not lora or not NO_BASE.value):
        results["base"] = evaluate("base")
    elif base_out is not None and not os.path.exists(base_out):
        atomic_write_json({**_header(config, prompt_file, num_images, embedding_name, None, None),
                           "results": {"base": evaluate("base")}}, base_out)
    if lora:
        load_lora(pipe.unet, lora)
        results["lora"] = evaluate("lora")
    stage = STAGE.value if STAGE.value >= 0 else None
    atomic_write_json({**_header(config, prompt_file, num_images, embedding_name, lora or None, stage),
                       "results": results}, out)
    log.info("report written to %s", out)


def _header(config, prompt_file: str, num_images: int, embedding: str, lora: str | None, stage: int | None) -> dict:
    return {"stage": stage, "lora": lora, "model": config.pretrained.model, "prompt_file": prompt_file,
            "num_images_per_prompt": num_images, "reward": config.reward.name, "diversity_embedding": embedding,
            "seed": config.seed, "num_steps": config.sample.num_steps, "eta": config.sample.eta,
            "guidance_scale": config.sample.guidance_scale}


if __name__ == "__main__":  # flags are defined only when run, so that the modules import together
    LORA = flags.DEFINE_string("lora", "", "LoRA checkpoint folder to evaluate beside the base model")
    STAGE = flags.DEFINE_integer("stage", -1, "evaluate this stage's LoRA into its stage folder (run_process.sh)")
    PROMPT_FILE = flags.DEFINE_string("prompt-file", "", "held-out prompts (JSON list); default eval.prompt_file")
    NUM_IMAGES = flags.DEFINE_integer("num-images", 0, "images per prompt; default eval.num_images_per_prompt")
    OUT = flags.DEFINE_string("out", "", "report path; default evaluation.json (or the stage folder with --stage)")
    NO_BASE = flags.DEFINE_bool("no-base", False, "with --lora: skip the base model")
    cli.main(main, continues_run=False)
