"""The model card beside every LoRA: checkpoints/README.md, in the diffusers convention.

YAML front matter (base model, `library_name: diffusers`, tags) over a text that says what the
LoRA is (stage, reward, images sampled, the held-out result once the stage is evaluated), the
settings that define its run, the command that continues or reproduces it, and how to load it
in plain diffusers. Training writes it with the checkpoint; the held-out evaluation of the stage
rewrites it with its result.
"""

from __future__ import annotations

import json
import os

CARD_FILE = "README.md"
TAGS = ("text-to-image", "diffusers", "lora", "stable-diffusion", "reinforcement-learning", "b2diffurl")
# What defines a run beyond the settings a continuation must keep (stage.resume.CONTINUATION_KEYS).
TRAINING_KEYS = ("prompt_file", "sample.batch_size", "sample.num_batches_per_stage", "train.learning_rate",
                 "train.clip_range", "train.batch_size", "train.gradient_accumulation_steps", "train.num_epochs")


def write_model_card(config, stage: int) -> str:
    """Write the card of stage `stage`'s LoRA into its checkpoint folder, with the run's command
    (kept in training_state.json) and the stage's held-out evaluation if it has one; returns the
    card's path."""
    from b2diffurl.files import atomic_write, read_json
    from b2diffurl.models.checkpoint import STATE_FILE
    from b2diffurl.paths import BASE_EVALUATION_FILE, StagePaths, run_dir
    from b2diffurl.tracking import images_sampled

    paths, run = StagePaths.of(config, stage), run_dir(config)
    evaluation = read_json(paths.evaluation) if os.path.exists(paths.evaluation) else None
    base_path = os.path.join(run, BASE_EVALUATION_FILE)
    if evaluation is not None and "base" not in evaluation["results"] and os.path.exists(base_path):
        evaluation["results"]["base"] = read_json(base_path)["results"]["base"]
    command = read_json(os.path.join(paths.checkpoint, STATE_FILE)).get("command")
    path = os.path.join(paths.checkpoint, CARD_FILE)
    text = model_card(config, stage, paths.checkpoint, images_sampled(run, stage), command, evaluation)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def model_card(config, stage: int, folder: str, images_sampled: int, command: str | None = None,
               evaluation: dict | None = None) -> str:
    """The card of stage `stage`'s LoRA saved in `folder`; `evaluation` is the stage's held-out
    report (analysis.evaluate), `command` the run_process.sh command of the run."""
    from b2diffurl.models.prompts import load_prompts
    from b2diffurl.stage.resume import CONTINUATION_KEYS, setting

    base = config.pretrained.model
    front = ["---", f"base_model: {json.dumps(base)}", "library_name: diffusers", "tags:",
             *[f"- {tag}" for tag in TAGS], "---"]
    method = ("DDPO-style (every sample trained)" if config.eval.selection == "all"
              else f"B2-DiffuRL (K = {config.num_branches} branches, best and worst of each group)")
    lines = [
        f"# {config.exp_name}: stage {stage} of {config.stages.num_stages}", "",
        f"A LoRA (rank {config.lora.rank}, alpha {config.lora.alpha}) on the UNet of `{base}`, fine-tuned by "
        f"{method} with a clipped policy-gradient loss on DDIM log-probabilities against the reward "
        f"`{config.reward.name}`{' (shuffled: a control run)' if config.reward.shuffle else ''}.", "",
        f"- stage: {stage} of {config.stages.num_stages} (stage 0 first)",
        f"- images sampled by the run so far: {images_sampled:,}",
        "", "## Held-out evaluation", "", *_held_out(evaluation),
        "", "## Settings that define the run", "", "| setting | value |", "|---|---|",
        *[f"| `{key}` | {_value(setting(config, key))} |" for key in (*CONTINUATION_KEYS, *TRAINING_KEYS)],
        "", "Every setting is in `training_state.json` beside this card.", "",
        "## Continue or reproduce the run", "",
        "Rerunning the command that made the run continues it after its last complete stage; the same "
        "command in a fresh clone reproduces it:", "", "```bash",
        command or f"bash run_process.sh <config file> --config.exp_name={config.exp_name}", "```", "",
        "## Use it in diffusers", "", "```python",
        "import torch",
        "from diffusers import DDIMScheduler, StableDiffusionPipeline", "",
        f"pipe = StableDiffusionPipeline.from_pretrained({json.dumps(base)})",
        "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # the sampler it was trained with",
        f"pipe.load_lora_weights({json.dumps(folder)})",
        'pipe.to("cuda" if torch.cuda.is_available() else "cpu")',
        f"image = pipe({json.dumps(load_prompts(config.prompt_file)[0])}, num_inference_steps={config.sample.num_steps}, "
        f"guidance_scale={config.sample.guidance_scale}, eta={config.sample.eta}).images[0]",
        'image.save("sample.png")', "```", "",
    ]
    return "\n".join(front + lines)


def _value(value) -> str:
    return f"`{value}`" if value != "" else "(none)"


def _held_out(evaluation: dict | None) -> list[str]:
    """The stage's held-out evaluation as a table beside the base model's, or a line saying there is none."""
    if evaluation is None:
        return ["Not evaluated at this stage (run_process.sh evaluates every `eval.every` stages and the last)."]
    results = evaluation.get("results", {})
    lora, base = results.get("lora", {}), results.get("base") or {}

    def reward(result: dict) -> str:
        return f"{result['reward_mean']:.4f} ± {result['reward_ci95']:.4f}" if "reward_mean" in result else "-"

    def success(result: dict, group: str) -> str:
        rate = result.get("success", {}).get(group)
        return f"{rate['success_rate']:.3f} [{rate['ci95_low']:.3f}, {rate['ci95_high']:.3f}] of {rate['num_images']}" \
            if rate else "-"

    return [f"On `{evaluation.get('prompt_file')}`, {evaluation.get('num_images_per_prompt')} image(s) a prompt, the "
            "same noise for both models (95% intervals):", "", "| | this LoRA | base model |", "|---|---|---|",
            f"| reward | {reward(lora)} | {reward(base)} |",
            *[f"| success: {group} | {success(lora, group)} | {success(base, group)} |" for group in lora.get("success", {})]]
