"""Step 3 of a stage: the clipped policy-gradient update of the LoRA -> stage{k}/checkpoints/,
then the stage's COMPLETE marker (b2diffurl.stage.train).

    python run_train.py --config config/tiny.py --config.stage 0
"""

from b2diffurl import cli

if __name__ == "__main__":
    cli.run_stage_script("train")
