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

The package, by what a reader comes for:

    method/    the algorithm, pure (tensors in, tensors out; no files, no config): the DDIM step
               and its log-prob, guidance, branch sampling, per-prompt statistics, selection,
               the loss and the update, the curriculum of trained steps
    stage/     one module per script (sample, select, train), and the stage plan, paths,
               sample-file format and resume rules they share
    models/    loading Stable Diffusion with its LoRA, LoRA checkpoints, prompts, rewards
    analysis/  evaluate, generate, compare, the run's curves and stage table, image grids
    world/     the shapes world: its renderer and exact reward, the pretraining of its model,
               the tiny random model (the method does not know it exists)
    cli.py     the command-line layer; errors.py, files.py, logs.py: leaves everyone uses;
               tracking.py: TensorBoard and W&B through accelerate's trackers
"""
