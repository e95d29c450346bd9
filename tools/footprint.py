"""Measure a reference stage's disk footprint on the SD-architecture random model.

Samples one reduced stage of config/stage_process.py (the reference run: 512 px, T = 20, K = 5,
at the largest split step s = 20) with run_sample.py and run_select.py on the random-weight
model of tools/build_sd_random.py, saves a checkpoint of its LoRA with an AdamW state after one
step, measures every file per sample, multiplies out to the reference stage (1,280 samples) and
run (100 stages), and prints that beside the stage plan's estimate. Only sizes matter here:
bf16 stands in for fp16 on a CPU (both 2 bytes), a JPEG reward for CLIP (no hub download).

    python tools/footprint.py /tmp/footprint        # builds the model there if it is missing
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_SAMPLES = 1280  # B = 8 prompts x 32 batches x K = 5
REFERENCE_STAGES = 100


def main(work: str) -> None:
    sys.path.insert(0, REPO)  # run as a file: the package, for this process and the scripts it starts
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    os.chdir(REPO)
    import torch

    from b2diffurl import cli
    from b2diffurl.files import human_size
    from b2diffurl.models.checkpoint import save_checkpoint
    from b2diffurl.models.pipeline import load_pipeline
    from b2diffurl.paths import StagePaths
    from b2diffurl.stage.retention import size_on_disk, stage_footprint
    from b2diffurl.stage.sample_file import load_samples
    from b2diffurl.stage.train import build_optimizer

    model = os.path.join(work, "sd-random")
    if not os.path.isdir(model):
        subprocess.run([sys.executable, "tools/build_sd_random.py", model], check=True)
    overrides = [f"--config.pretrained.model={model}", "--config.mixed_precision=bf16",
                 "--config.sample.batch_size=1", "--config.sample.num_batches_per_stage=1",
                 "--config.stages.split_step_min=20", "--config.reward.name=jpeg_compressibility",
                 f"--config.save_path={work}", "--config.exp_name=footprint", "--config.stage=0"]
    argv = ["footprint", "--config", "config/stage_process.py", *overrides]
    for script, output in (("run_sample.py", "sample.pkl"), ("run_select.py", "sample_stage.pkl")):
        if not os.path.exists(os.path.join(work, "footprint", "stage0", output)):  # made by an earlier try
            subprocess.run([sys.executable, script, *argv[1:]], check=True)

    values = cli.flag_values()
    sys.argv = argv  # ml_collections finds the overrides of a config flag in sys.argv
    cli.parse_flags(values, argv)
    config = cli.load_config(values)
    paths = StagePaths.of(config, 0)
    n = len(load_samples(paths.samples)["prompts"])
    n_selected = len(load_samples(paths.selected, selected=True)["prompts"])
    pipe = load_pipeline(config, torch.device("cpu"))
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    optimizer = build_optimizer(config, params)
    sum(p.float().square().sum() for p in params).backward()
    optimizer.step()  # AdamW's two moments exist from the first step
    checkpoint = os.path.join(work, "checkpoint")
    save_checkpoint(pipe.unet, checkpoint, optimizer, {"stage": 0})

    measured = {"sample.pkl": size_on_disk(paths.samples) / n, "images.pt": size_on_disk(paths.images) / n,
                "images/ (PNG)": size_on_disk(paths.image_dir) / n,
                "sample_stage.pkl": size_on_disk(paths.selected) / n_selected}
    reference = config.copy_and_resolve_references()
    reference.sample.batch_size, reference.sample.num_batches_per_stage = 8, 32
    estimate = stage_footprint(reference)
    selected_share = 2 / config.num_branches  # best and worst of each group at most
    stage = {name: per_sample * REFERENCE_SAMPLES * (selected_share if name == "sample_stage.pkl" else 1)
             for name, per_sample in measured.items()}
    print(f"measured on {model} ({sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.0f}M-parameter UNet), "
          f"one stage of {n} samples ({n_selected} selected), s = 20:")
    print("| file | bytes a sample | reference stage (1,280 samples) |")
    print("|---|---|---|")
    for name, per_sample in measured.items():
        print(f"| {name} | {per_sample:,.0f} | {human_size(stage[name])} |")
    bulk = sum(stage.values())
    estimated = estimate["sample_files"] + estimate["images"] + estimate["pngs"] + estimate["selected"]
    lora = sum(p.numel() for p in params)
    print(f"| sample files of a stage | | {human_size(bulk)} (the plan estimates {human_size(estimated)}) |")
    print(f"checkpoint: {human_size(size_on_disk(checkpoint))} ({lora:,} LoRA parameters, AdamW state included)")
    for keep, stages in (("all", REFERENCE_STAGES), ("last", 2), ("none", 1)):
        total = bulk * stages + size_on_disk(checkpoint) * REFERENCE_STAGES
        print(f"keep_sample_files = {keep!r}: at most {human_size(total)} for a {REFERENCE_STAGES}-stage run")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/footprint")
