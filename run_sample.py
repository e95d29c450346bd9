"""Step 1 of a stage: branch-based sampling with DDIM log-probs -> stage{k}/sample.pkl, images.pt, images/

    python run_sample.py --config config/tiny.py --config.stage 0

The stage index decides split step, seed, folders and the checkpoint to resume from
(b2diffurl.stages.plan_stage). run_process.sh calls the three scripts for every stage.
"""

from b2diffurl import cli


def main(config) -> None:
    from b2diffurl import workflow  # after the checks: bad input is refused before torch loads
    from b2diffurl.logs import setup_logging

    setup_logging()
    workflow.sample_stage(config)


if __name__ == "__main__":
    cli.main(main)
