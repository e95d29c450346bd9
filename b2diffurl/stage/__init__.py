"""One stage, in data-flow order: sample.py (run_sample.py), select.py (run_select.py),
train.py (run_train.py); each module's docstring names the files it reads and writes.

    plan.py         stage index -> split step, branch point, seed, checkpoint to resume from
    sample_file.py  the sample files' format (versioned, validated)
    resume.py       where a rerun continues, and the settings it must keep
    context.py      what the three scripts share: start, starting policy, accelerator, end
    card.py         the model card beside each stage's LoRA

The names of a run's and a stage's files are in b2diffurl/paths.py, below the stages.
"""
