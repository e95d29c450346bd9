"""One PNG with the curves of a run: rewards, selection, loss, KL, curriculum, evaluation.

    python -m b2diffurl.analysis.curves model/tiny                 # -> model/tiny/report.png
    python -m b2diffurl.analysis.curves model/tiny --out run.png

The run folder is read into plain arrays by b2diffurl.analysis.run_data.collect; `draw_report`
draws them with matplotlib, which is optional: it is imported only when a report is drawn.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

from b2diffurl.analysis.run_data import collect
from b2diffurl.paths import METRICS_FILE


def agg_figure(**kwargs):
    """A matplotlib Figure on the Agg canvas; one line and exit code 2 if matplotlib is missing.

    The Figure is made without pyplot, so drawing a report neither needs a display nor switches
    the backend (and closes the figures) of a notebook or script that already uses pyplot.
    """
    try:
        import matplotlib
    except ImportError:
        print("error: the report needs matplotlib: pip install matplotlib", file=sys.stderr)
        raise SystemExit(2) from None
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # files only, no display, for anyone who imports pyplot later
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _say(ax, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _band(ax, x, low, high, **style) -> None:
    """fill_between that is still visible with a single stage."""
    if len(x) == 1:
        x, low, high = [x[0] - 0.25, x[0] + 0.25], [low[0]] * 2, [high[0]] * 2
    ax.fill_between(x, low, high, **style)


def _stage_axis(ax, data: dict) -> None:
    """Stages along the bottom; images sampled by the end of each stage along the top, where known."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("stage")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    stages, images = data["stages"], data["images_sampled"]
    known = np.isfinite(images)
    if known.sum() >= 2 and np.all(np.diff(images[known]) > 0):
        x, y = stages[known].astype(np.float64), images[known]
        top = ax.secondary_xaxis("top", functions=(_piecewise_linear(x, y), _piecewise_linear(y, x)))
        top.set_xlabel("images sampled", fontsize=8, color="0.35")
        top.tick_params(labelsize=8, labelcolor="0.35")
    elif known.sum() == 1:
        ax.set_xlabel(f"stage ({int(images[known][0]):,} images sampled by stage {stages[known][0]})")


def _piecewise_linear(x: np.ndarray, y: np.ndarray):
    """The function through the points (x, y), x increasing, continued straight past both ends."""
    def f(v):
        v = np.asarray(v, dtype=np.float64)
        below = y[0] + (v - x[0]) * (y[1] - y[0]) / (x[1] - x[0])
        above = y[-1] + (v - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2])
        return np.where(v < x[0], below, np.where(v > x[-1], above, np.interp(v, x, y)))
    return f


def _binary(data: dict) -> bool:
    """True when every stage's training reward was 0/1 (the select events carry success rates)."""
    return len(data["select_stage"]) > 0 and bool(np.isfinite(data["reward_success_rate"]).all())


def _reward_panel(ax, data: dict) -> None:
    x = data["select_stage"]
    if _binary(data):
        ax.set_title("training success rate per stage (all branches)")
        _band(ax, x, data["reward_success_ci95_low"], data["reward_success_ci95_high"], color="C0", alpha=0.25,
              label="95% interval (Wilson)")
        ax.plot(x, data["reward_success_rate"], "o-", color="C0", label="success rate")
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"success rate (share of images with {data['reward'] or 'reward'} = 1)")
        _stage_axis(ax, data)
        return ax.legend(fontsize=8, loc="best")
    ax.set_title("training reward per stage (all branches)")
    if len(x) == 0:
        return _say(ax, "no select events yet")
    mean, std = data["reward_mean"], data["reward_std"]
    _band(ax, x, data["reward_min"], data["reward_max"], color="C0", alpha=0.12, label="min to max")
    _band(ax, x, mean - std, mean + std, color="C0", alpha=0.3, label="mean ± std")
    ax.plot(x, mean, "o-", color="C0", label="mean")
    ax.set_ylabel(f"reward ({data['reward']})" if data["reward"] else "reward")
    _stage_axis(ax, data)
    ax.legend(fontsize=8, loc="best")


def _selection_panel(ax, data: dict) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title("selected samples per stage")
    x = data["select_stage"]
    if len(x) == 0:
        return _say(ax, "no select events yet")
    positive, negative = data["num_positive"], data["num_negative"]
    ax.bar(x, positive, color="C2", alpha=0.8, label="positive (best branch, A ≥ ρ⁺)")
    ax.bar(x, negative, bottom=np.nan_to_num(positive), color="C3", alpha=0.8, label="negative (worst branch, A < ρ⁻)")
    ax.plot(x, data["num_selected"], "ko-", markersize=4, label="selected (trained on)")
    skipped = data["stages"][data["train_skipped"]]
    if len(skipped):
        ax.plot(skipped, np.zeros(len(skipped)), "x", color="C3", markersize=10, mew=2, label="training skipped")
    ax.set_ylabel("samples")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 1.5 * max(1.0, np.nanmax(data["num_selected"], initial=0)))  # room for the legend
    _stage_axis(ax, data)
    ax.legend(fontsize=8, loc="upper left")


def _split_step_panel(ax, data: dict) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title("curriculum: trained steps per stage")
    if len(data["stages"]) == 0:
        return _say(ax, "no stages yet")
    ax.plot(data["stages"], data["split_step"], "o-", drawstyle="steps-mid", color="C4", label="split step s")
    if data["num_steps"]:
        ax.axhline(data["num_steps"], color="0.5", ls="--", label=f"T = {data['num_steps']} (all steps)")
    ax.set_ylim(0, (data["num_steps"] or np.nanmax(data["split_step"], initial=0)) + 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("split step s (last s of T steps trained)")
    _stage_axis(ax, data)
    ax.legend(fontsize=8, loc="lower right")


def _stage_boundaries(ax, data: dict) -> None:
    """Dotted lines where stages start, numbered on a top axis; every n-th stage when there are many."""
    ends = list(data["stage_first_step"][1:]) + [len(data["step"]) + 1]
    # A stage whose training was skipped has no steps: nothing to mark.
    spans = [(stage, first, end) for stage, first, end in zip(data["stages"], data["stage_first_step"], ends)
             if end > first]
    top = ax.secondary_xaxis("top")
    top.tick_params(length=0, labelsize=8, labelcolor="0.35")
    if len(spans) <= 12:  # every boundary, each stage named over its middle
        for _, first, _ in spans[1:]:
            ax.axvline(first - 0.5, color="0.5", ls=":", lw=1)
        names = [f"stage {k}" if len(spans) <= 6 else str(k) for k, _, _ in spans]
        top.set_xticks([(first + end - 1) / 2 for _, first, end in spans], names)
    else:  # about 12 marked starts
        marked = spans[::math.ceil(len(spans) / 12)]
        for _, first, _ in marked[1:]:
            ax.axvline(first - 0.5, color="0.5", ls=":", lw=1)
        top.set_xticks([first - 0.5 for _, first, _ in marked], [str(k) for k, _, _ in marked])
    if len(spans) > 6:
        top.set_xlabel("stage", fontsize=8, color="0.35", labelpad=4)


def _step_axis(ax, data: dict) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("optimiser step (whole run; dotted lines: stage starts)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, len(data["step"]) + 0.5)
    ax.grid(alpha=0.3)


def _headroom(*axes, fraction: float = 0.35) -> None:
    """Raise the top of each y-axis so that a legend across the top covers no data."""
    for ax in axes:
        low, high = ax.get_ylim()
        if ax.get_yscale() == "log":
            ax.set_ylim(low, high * (high / low) ** fraction)
        else:
            ax.set_ylim(low, high + fraction * (high - low))


def _no_steps(ax, data: dict) -> None:
    skipped = int(data["train_skipped"].sum())
    _say(ax, "no optimiser steps yet" + (f"\n(training skipped in {skipped} stage(s))" if skipped else ""))


def _step_style(data: dict) -> dict:
    """Markers while single steps can be told apart; a thin line when there are hundreds."""
    return {"marker": "." if len(data["step"]) <= 100 else None, "lw": 1 if len(data["step"]) <= 100 else 0.6}


def _loss_panel(ax, data: dict) -> None:
    ax.set_title("loss per optimiser step")
    if len(data["step"]) == 0:
        return _no_steps(ax, data)
    step, loss = data["step"], data["loss"]
    ax.plot(step, loss, color="C0", alpha=0.8, label="loss", **_step_style(data))
    for stage in np.unique(data["step_stage"]):
        in_stage = data["step_stage"] == stage
        if np.isfinite(loss[in_stage]).any():
            ax.hlines(np.nanmean(loss[in_stage]), step[in_stage].min() - 0.4, step[in_stage].max() + 0.4,
                      color="C1", lw=2, zorder=3, label="stage mean" if stage == data["step_stage"][0] else None)
    if data["step_skipped"].any():
        ax.plot(step[data["step_skipped"]], np.zeros(int(data["step_skipped"].sum())), "x", color="C3",
                markersize=8, mew=2, zorder=4, label="skipped step (non-finite)")
    ax.axhline(0, color="0.6", lw=0.8)
    _stage_boundaries(ax, data)
    ax.set_ylabel("clipped policy-gradient loss")
    _step_axis(ax, data)
    _headroom(ax)
    ax.legend(fontsize=8, loc="upper center", ncol=3)


def _kl_panel(ax, data: dict) -> None:
    ax.set_title("approx KL and clip fraction per optimiser step")
    if len(data["step"]) == 0:
        return _no_steps(ax, data)
    step, kl, clipfrac = data["step"], data["approx_kl"], data["clipfrac"]
    kl_line = ax.plot(step, kl, color="C0", label="approx KL", **_step_style(data))
    if (kl > 0).any():
        ax.set_yscale("log", nonpositive="mask")
        ax.set_ylabel("approx KL (log scale; zeros not shown)", color="C0")
    else:
        ax.set_ylabel("approx KL", color="C0")
    right = ax.twinx()
    clip_line = right.plot(step, clipfrac, color="C1", ls="--", label="clip fraction", **_step_style(data))
    right.set_ylim(0, max(0.05, 1.1 * np.nanmax(clipfrac)) if np.isfinite(clipfrac).any() else 1)
    right.set_ylabel("clip fraction (ratios outside 1 ± ε)", color="C1")
    _stage_boundaries(ax, data)
    _step_axis(ax, data)
    _headroom(ax, right)
    ax.legend(handles=kl_line + clip_line, fontsize=8, loc="upper center", ncol=2)


def _headline_groups(success: dict, images: dict, most: int = 2) -> list:
    """The prompt groups the panel draws: the `most` largest besides "all" ("all" if it is alone)."""
    groups = [group for group in success if group != "all"] or list(success)
    groups = sorted(groups, key=lambda group: -images.get(group, 0))[:most]
    return [(group, success[group]) for group in groups]


def _evaluation_panel(ax, data: dict) -> None:
    ax.set_title("held-out evaluation")
    x, base = data["eval_stage"], data["base"]
    if len(x) == 0:
        return _say(ax, "no evaluations yet")
    success = data["eval_success"]
    if success:  # a 0/1 reward: success rate of each prompt group with its interval
        handles = []
        for i, (group, rate) in enumerate(_headline_groups(success, data["eval_success_images"])):
            color = f"C{[0, 1, 4, 5, 6][i % 5]}"
            yerr = [rate["success_rate"] - rate["ci95_low"], rate["ci95_high"] - rate["success_rate"]]
            handles.append(ax.errorbar(x, rate["success_rate"], yerr=yerr, fmt="o-", color=color, capsize=3,
                                       label=f"LoRA: {group} (n = {data['eval_success_images'][group]:.0f})"))
            if base is not None and group in base["success"]:
                line = base["success"][group]
                handles.append(ax.axhline(line["success_rate"], color=color, ls="--", alpha=0.7,
                                          label=f"base: {group}"))
                ax.axhspan(line["ci95_low"], line["ci95_high"], color=color, alpha=0.08)
        ax.set_ylim(0, 1)
        ax.set_ylabel("held-out success rate (95% interval)", color="C0")
    else:
        handles = [ax.errorbar(x, data["eval_reward_mean"], yerr=data["eval_reward_ci95"], fmt="o-", color="C0",
                               capsize=3, label="LoRA reward mean (95% interval)")]
    right = ax.twinx()
    handles += right.plot(x, data["eval_diversity_mean"], "s-", color="C2", mfc="none", label="LoRA diversity")
    ax.set_zorder(right.get_zorder() + 1)  # the reward over the diversity where they meet
    ax.patch.set_visible(False)
    if base is not None:
        if not success:
            handles.append(ax.axhline(base["reward_mean"], color="C0", ls="--", alpha=0.7, label="base reward"))
        handles.append(right.axhline(base["diversity_mean"], color="C2", ls=":", lw=2, alpha=0.7,
                                     label="base diversity"))
    if not success:
        ax.set_ylabel(f"held-out reward ({data['reward']})" if data["reward"] else "held-out reward", color="C0")
    right.set_ylabel("diversity (mean pairwise distance)", color="C2")
    right.ticklabel_format(axis="y", useOffset=False)  # tiny changes as plain numbers, not "1e-5 + 0.107"
    _stage_axis(ax, data)
    ax.set_xlim(x.min() - 0.5 - 0.05 * np.ptp(x), x.max() + 0.5 + 0.05 * np.ptp(x))
    _headroom(ax, right)
    if success:
        ax.set_yticks(np.linspace(0, 1, 6))  # a rate: no ticks in the legend's headroom above 1
    ax.legend(handles=handles, fontsize=7 if success else 8, loc="upper center", ncol=2)


def draw_report(data: dict, out_path: str) -> None:
    """Draw `collect`'s data as a 2 x 3 figure and write it to `out_path` as PNG."""
    from b2diffurl.files import atomic_write

    fig = agg_figure(figsize=(17, 9.5), layout="constrained")
    axes = fig.subplots(2, 3)
    _reward_panel(axes[0, 0], data)
    _selection_panel(axes[0, 1], data)
    _split_step_panel(axes[0, 2], data)
    _loss_panel(axes[1, 0], data)
    _kl_panel(axes[1, 1], data)
    _evaluation_panel(axes[1, 2], data)
    about = [f"{len(data['stages'])} stages"]
    if data["reward"]:
        about.append(f"reward {data['reward']}")
    if data["num_steps"]:
        about.append(f"T = {data['num_steps']}")
    fig.suptitle(f"run {data['run']}: " + ", ".join(about), fontsize=14)
    atomic_write(out_path, lambda f: fig.savefig(f, format="png", dpi=100))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m b2diffurl.analysis.curves", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder, {save_path}/{exp_name}")
    parser.add_argument("--out", help="PNG to write (default RUN_DIR/report.png)")
    args = parser.parse_args(argv)
    data = collect(args.run_dir)
    if len(data["stages"]) == 0 and len(data["eval_stage"]) == 0:
        print(f"error: {args.run_dir} has no stage{{k}}/{METRICS_FILE} files", file=sys.stderr)
        raise SystemExit(2)
    for warning in data["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    out = args.out or os.path.join(args.run_dir, "report.png")
    draw_report(data, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
