"""Step 2 of a stage: reward, per-prompt normalisation, best/worst selection.

    python run_select.py --config config/tiny.py --config.stage 0

Reads stage{k}/sample.pkl and images.pt; writes stage{k}/sample_stage.pkl and history.json
(b2diffurl.stage.select).
"""

from b2diffurl import cli

if __name__ == "__main__":
    cli.run_stage_script("select")
