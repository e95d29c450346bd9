"""Defaults shared by every preset. Each field has a one-line comment; presets override a few.

Batch arithmetic per stage (reference values): sample.batch_size (B=8) prompts x
sample.num_batches_per_stage (32) = 256 branch groups; x num_branches (K=5) = 1,280 images.
Selection keeps at most 2 branches a group (best and worst), so at most M = 512 trained samples,
each trained on split_step steps. Training, as in the authors' release: train.num_epochs (2)
passes of forward batches of train.batch_size (2) samples, and an optimiser step every
train.gradient_accumulation_steps (64) batches, i.e. every 128 samples, counted across the
epochs: floor(2 * floor(M / 2) / 64) optimiser steps a stage (M = 300 gives 4, M = 100 gives 1,
M < 64 gives none); the remainder is left over (logged in the train metrics).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # ---- run ----
    config.exp_name = "b2diffurl"  # run folder name: {save_path}/{exp_name}/stage{k}/
    config.save_path = "model"  # where run folders are created
    config.log_dir = "log"  # run_process.sh writes one log per stage under {log_dir}/{exp_name}/
    config.seed = 42  # stage k uses seed + k
    config.stage = 0  # which stage this invocation works on (set by run_process.sh)
    config.split_step = -1  # s for this stage; -1 takes it from the stages.* curriculum
    config.num_branches = 5  # K, branches per group (the original calls it split_time)
    config.resume_from = ""  # LoRA checkpoint folder that stage 0 starts from; "" starts a new LoRA
    config.mixed_precision = "fp16"  # "no", "fp16" or "bf16": dtype of the frozen models
    config.allow_tf32 = True  # TF32 matmuls on Ampere+ GPUs
    config.unet_attention = "sdpa"  # "sdpa" (torch's fused attention) or "classic" (softmax(QK^T)V in plain matmuls: a CPU's bf16 backward runs ~4x faster)
    config.compile_unet = False  # torch.compile the UNet in each script (fp32 only; a warm on-disk cache compiles in ~10 s, a cold one in ~1 min)
    config.process_timeout = 1800  # seconds a process of a launch waits for the others before the launch fails (a hung rank)
    config.keep_sample_files = "last"  # which complete stages keep sample.pkl, images.pt, images/, sample_stage.pkl: "all", "last" or "none"
    config.report_to = "tensorboard"  # trackers: "tensorboard" (if installed), "wandb", "tensorboard,wandb", "all", "none"
    config.prompt_file = "config/prompt/template1_train.json"  # JSON list of prompts (the paper's template 1)

    # ---- backward progressive curriculum ----
    config.stages = stages = ml_collections.ConfigDict()
    stages.num_stages = 100  # N
    stages.split_step_min = 14  # s of stage 0
    stages.split_step_max = 20  # upper end of s (<= sample.num_steps); reached when num_stages >= max - min + 1

    # ---- base model ----
    config.pretrained = pretrained = ml_collections.ConfigDict()
    pretrained.model = "CompVis/stable-diffusion-v1-4"  # hub id or local diffusers folder
    pretrained.revision = "main"  # hub revision
    pretrained.build_tiny = False  # build the tiny offline model at `model` if it is missing

    # ---- LoRA ----
    config.lora = lora = ml_collections.ConfigDict()
    lora.rank = 4  # LoRA rank
    lora.alpha = 4  # LoRA scale numerator (scale = alpha / rank)
    lora.target_modules = ("to_q", "to_k", "to_v", "to_out.0")  # UNet attention projections

    # ---- sampling ----
    config.sample = sample = ml_collections.ConfigDict()
    sample.num_steps = 20  # T, DDIM steps per trajectory
    sample.eta = 1.0  # DDIM noise; > 0 so that every step has a density
    sample.guidance_scale = 5.0  # w, classifier-free guidance (sampling and training)
    sample.batch_size = 8  # B, prompts per sampling batch
    sample.num_batches_per_stage = 32  # sampling batches per stage
    sample.unet_chunk_size = 80  # most latents per UNet call (x2 for CFG); bounds memory
    sample.merge_lora = True  # fold the LoRA into the UNet weights while sampling: plain-UNet speed (see pipeline.lora_merged)
    sample.decode_chunk_size = 8  # most latents per VAE decode; the decoder's activations are large at 512 px
    sample.save_png = True  # also write every branch image as PNG under images/

    # ---- reward ----
    config.reward = reward = ml_collections.ConfigDict()
    reward.name = "clip_score"  # key of b2diffurl.models.rewards.REWARDS, or a function as "package.module:function"
    reward.model = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # CLIP of clip_score, pickscore, aesthetic
    reward.processor = ""  # CLIPProcessor; "" = reward.model's (pickscore: laion/CLIP-ViT-H-14-laion2B-s32B-b79K)
    reward.aesthetic_weights = ""  # aesthetic: local .pth/.pt/.safetensors state dict of the LAION aesthetic MLP
    reward.components = ""  # weighted: "name:weight,...", e.g. "colour_match:1.0,jpeg_compressibility:0.01"
    reward.batch_size = 32  # images per reward call
    reward.retries = 0  # retry a reward call that raises this many times (after 1, 2, 4 ... s): a remote scorer's passing failure
    reward.shuffle = False  # control run: each stage's rewards permuted among its samples (seeded), so they carry no signal

    # ---- normalisation and selection ----
    config.eval = evaluation = ml_collections.ConfigDict()
    evaluation.history_cnt = 8  # H, earlier stages whose per-prompt scores are pooled with this stage's to normalise
    evaluation.pos_threshold = 0.5  # rho+, best branch kept if its advantage >= this
    evaluation.neg_threshold = -0.5  # rho-, worst branch kept if its advantage < this
    evaluation.selection = "best_worst"  # key of b2diffurl.method.selection.SELECTIONS ("all": DDPO)
    evaluation.prompt_file = "config/prompt/template1_test.json"  # held-out prompts for b2diffurl.analysis.evaluate
    evaluation.num_images_per_prompt = 8  # images per held-out prompt
    evaluation.max_prompts = 0  # evaluate the first this many prompts of the file; 0: all
    evaluation.every = 10  # run_process.sh evaluates after every this many stages and the last; 0: never
    evaluation.diversity_embedding = "auto"  # "pixels", "clip" (reward.model), or "auto" (clip if the reward has one)

    # ---- training ----
    config.train = train = ml_collections.ConfigDict()
    train.learning_rate = 1e-4  # AdamW learning rate
    train.adam_beta1 = 0.9  # AdamW beta1
    train.adam_beta2 = 0.999  # AdamW beta2
    train.adam_weight_decay = 1e-4  # AdamW weight decay
    train.adam_epsilon = 1e-8  # AdamW epsilon
    train.batch_size = 2  # selected samples per forward pass (a short last batch of an epoch is dropped)
    train.gradient_accumulation_steps = 64  # forward batches (each over all s steps) per optimiser step, counted across epochs
    train.num_epochs = 2  # passes over the selected samples per stage
    train.clip_range = 0.1  # epsilon, PPO ratio clip (original: train.eps)
    train.adv_clip_max = 5.0  # advantages are clipped to [-adv_clip_max, adv_clip_max]
    train.pos_weight = 1.0  # beta+, weight of samples with positive advantage (original: beta1)
    train.neg_weight = 1.0  # beta-, weight of samples with negative advantage (original: beta2)
    train.max_grad_norm = 1.0  # gradient-norm clip
    train.fresh_optimizer = False  # True: each stage starts a new AdamW state (the release carries the previous stage's)
    train.step_weighting = "uniform"  # "uniform": the paper's mean over steps; "std": a variant weighting step i by its sigma_i (docs/shapes-world.md)
    train.steps_per_forward = 1  # steps of each sample per UNet call (rows = batch_size x this; 1 to s): the same update, fewer and larger calls
    train.gradient_checkpointing = False  # recompute UNet activations in the backward pass: less memory, slower
    train.max_untrained_stages = 2  # stop the run when this many stages in a row skipped every optimiser step (fp16 overflow, NaN)
    train.use_8bit_adam = False  # bitsandbytes' 8-bit AdamW (needs bitsandbytes installed): smaller optimiser state

    return config
