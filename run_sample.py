"""Step 1 of a stage: branch-based sampling with DDIM log-probs.

    python run_sample.py --config config/tiny.py --config.stage 0

Reads the LoRA the stage starts from (stage{k-1}/checkpoints/); writes stage{k}/sample.pkl,
images.pt and images/. The work is b2diffurl.stage.sample; run_process.sh calls the three
scripts for every stage.
"""

from b2diffurl import cli

if __name__ == "__main__":
    cli.run_stage_script("sample")
