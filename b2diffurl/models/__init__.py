"""The models a run loads: Stable Diffusion with a LoRA on its UNet (pipeline.py, found by
hub.py), LoRA checkpoints (checkpoint.py), prompt files and text embeddings (prompts.py),
the reward functions (rewards.py), and the metrics of scored images: reward statistics,
diversity, success rates, paired changes (metrics.py)."""
