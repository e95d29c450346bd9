"""What the three stage scripts share: their Accelerator, the start (the run folder seen by every
process, the plan, a complete stage skipped, an interrupted one cleared), the policy they start
from, the sample files' `meta`, and the end (the completion marker)."""

from __future__ import annotations

import logging
import os
import shutil
import socket

import torch

from b2diffurl.errors import UnsharedFolderError, UserError
from b2diffurl.files import atomic_write_json
from b2diffurl.models.checkpoint import load_lora
from b2diffurl.models.pipeline import load_pipeline
from b2diffurl.paths import StagePaths, run_dir
from b2diffurl.stage.plan import StagePlan, plan_stage
from b2diffurl.stage.resume import check_continuation
from b2diffurl.stage.sample_file import FORMAT_VERSION
from b2diffurl.tracking import trackers

log = logging.getLogger(__name__)


def make_accelerator(config):
    """The Accelerator of a script: device, mixed precision, TF32 where asked and available, and
    the trackers of config.report_to (b2diffurl.tracking), and config.process_timeout for every wait on the other processes.
    Under `accelerate launch` with N processes, only the main process logs at INFO level."""
    import datetime

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Launched on N processes without CUDA (accelerate launch --multi_gpu on a CPU box): gloo on CPU.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # A process that waits longer than process_timeout for the others (a rank that hangs) fails the launch.
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=config.process_timeout))
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=cpu,
                              log_with=trackers(config) or None,
                              project_dir=os.path.join(run_dir(config), "tensorboard"), kwargs_handlers=[timeout])
    if accelerator.num_processes > 1:
        from b2diffurl.logs import setup_logging

        setup_logging(accelerator.is_main_process)
    return accelerator


def begin(config, accelerator, clear_interrupted: bool = False) -> StagePlan | None:
    """Start of every script: the plan and the continuation check (recorded by the main
    process); None for a complete stage. With `clear_interrupted`, the main process removes the
    folder an interrupted attempt left, so the stage is redone from its start; every process
    waits for that."""
    check_shared_folder(run_dir(config), accelerator)
    plan = plan_stage(config)
    if accelerator.is_main_process:
        check_continuation(config)
        if clear_interrupted and not plan.paths.is_complete() and os.path.isdir(plan.paths.root):
            log.warning("stage %d was interrupted; clearing %s and redoing it", plan.stage, plan.paths.root)
            shutil.rmtree(plan.paths.root)
    accelerator.wait_for_everyone()
    if plan.paths.is_complete():
        log.info("stage %d is complete (%s exists); nothing to do", plan.stage, plan.paths.complete_marker)
        return None
    return plan


def check_shared_folder(folder: str, accelerator) -> None:
    """Every process of a launch (on several nodes: every node) must see the same run folder. Each
    writes a file of its own there, the launch's barrier passes, and each reads every other's;
    the verdicts are gathered, so that every process fails alike (UnsharedFolderError) if any
    could not read what another wrote. Nothing to do for one process."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    def path(rank: int) -> str:
        return os.path.join(folder, f".visible-{rank}")

    mine = f"{socket.gethostname()}:{os.getpid()}"
    os.makedirs(folder, exist_ok=True)
    atomic_write_json({"process": mine}, path(accelerator.process_index))
    written = gather_object([mine])
    unseen = []
    for rank, theirs in enumerate(written):
        try:
            with open(path(rank)) as f:
                seen = f.read()
        except OSError:
            seen = ""
        if theirs not in seen:
            unseen.append(f"process {accelerator.process_index} on host {socket.gethostname()} cannot read what "
                          f"process {rank} ({theirs.replace(':', ', pid ')}) wrote")
    unseen = gather_object(unseen)  # a collective: every process has read every file by now
    if os.path.exists(path(accelerator.process_index)):
        os.remove(path(accelerator.process_index))
    if unseen:
        raise UnsharedFolderError(f"run folder {folder} is not the same for every process of the launch: "
                                  f"{unseen[0]} there; every node must mount the same shared folder at the same path")


def load_policy(config, plan: StagePlan, device):
    """The pipeline with the LoRA this stage starts from (π_old)."""
    if plan.stage > 0 and not StagePaths.of(config, plan.stage - 1).is_complete():
        raise UserError(f"stage {plan.stage - 1} is not complete, so stage {plan.stage} has no LoRA to start "
                        "from; run_process.sh resumes at the first incomplete stage")
    if plan.resume_from and not os.path.isdir(plan.resume_from):
        raise UserError(f"stage {plan.stage} resumes from {plan.resume_from}, which does not exist")
    pipe = load_pipeline(config, device)
    if plan.resume_from:
        load_lora(pipe.unet, plan.resume_from)
        log.info("LoRA loaded from %s", plan.resume_from)
    return pipe


def stage_meta(config, plan: StagePlan) -> dict:
    """The `meta` of this stage's sample files; selection and training check it."""
    return {
        "num_steps": config.sample.num_steps, "split_step": plan.split_step, "branch_point": plan.branch_point,
        "num_branches": config.num_branches, "eta": config.sample.eta,
        "guidance_scale": config.sample.guidance_scale, "model": config.pretrained.model,
        "seed": plan.seed, "stage": plan.stage, "format_version": FORMAT_VERSION,
    }


def peak_gpu_memory() -> dict:
    """{"peak_gpu_memory_gb": ...} on CUDA, else {}."""
    if not torch.cuda.is_available():
        return {}
    return {"peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3)}


def mark_complete(stage_paths: StagePaths, state: dict) -> None:
    """The completion marker, written last: its presence means every file of the stage is final."""
    atomic_write_json(state, stage_paths.complete_marker)
