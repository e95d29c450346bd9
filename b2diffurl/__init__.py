"""B2-DiffuRL: backward progressive training with branch-based sampling, for text-to-image
diffusion models under a sparse reward.

run_process.sh runs the stages k = 0, 1, ... in turn; each stage is three scripts that talk
through files in {save_path}/{exp_name}/stage{k}/:

    run_sample.py  ->  stage.sample   branch sampling with DDIM log-probs
                       reads  stage{k-1}/checkpoints/            writes sample.pkl, images.pt
    run_select.py  ->  stage.select   reward, per-prompt normalisation, best/worst selection
                       reads  sample.pkl, images.pt,             writes sample_stage.pkl,
                              stage{k-1}/history.json                   history.json
    run_train.py   ->  stage.train    clipped policy-gradient update of the LoRA
                       reads  sample_stage.pkl,                  writes checkpoints/, then COMPLETE
                              stage{k-1}/checkpoints/

The package, by what a reader comes for, in floors from the bottom up: a module imports only
from its own floor and the floors below (tests/test_layout.py holds it to this, and to no
import cycle):

    errors.py  the errors a user can act on; method/: the algorithm, pure (tensors in, tensors
               out; no files, no config): the DDIM step and its log-prob, guidance, branch
               sampling, per-prompt statistics, selection, the loss and the update, the
               curriculum of trained steps
    files.py, paths.py, logs.py, tracking.py
               atomic files, the names of a run's files, logs and metrics files, TensorBoard
               and W&B through accelerate's trackers
    world/     the shapes world: its renderer, parser and exact reward, its failure modes, the
               tiny random model (the method does not know it exists); grids.py: image grids
    models/    loading Stable Diffusion with its LoRA, LoRA checkpoints, prompts, rewards, and
               the metrics of scored images
    stage/     one module per script (sample, select, train), and the stage plan, sample-file
               format and resume rules they share; cli.py: the command-line layer
    analysis/  evaluate, generate, compare, the run's data, curves and stage table
    lab/       commands on the shapes world: pretraining its model, its ceiling, what its text
               encoder tells apart, a stage's failure modes
"""
