"""The method, pure: tensors in, tensors out, no files and no config objects. To try another
selection rule, loss or schedule, edit only here.

    ddim.py             one DDIM step and the log-density of x_{t-1} given x_t
    guidance.py         the classifier-free-guided noise prediction
    branch_sampling.py  a shared trunk per prompt up to the branch point, then K branches
    curriculum.py       which steps stage k trains (backward progressive training)
    statistics.py       per-prompt reward statistics over recent stages -> advantages
    selection.py        the best and worst branch of each group
    loss.py             the clipped policy-gradient loss
    update.py           the stage's schedule of optimiser steps and the update itself
"""
