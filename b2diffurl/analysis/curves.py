"""One PNG with the curves of a run: rewards, selection, loss, KL, curriculum, evaluation.

    python -m b2diffurl.analysis.curves model/tiny                 # -> model/tiny/report.png
    python -m b2diffurl.analysis.curves model/tiny --out run.png

`collect` reads a run folder into plain arrays (stage{k}/metrics.jsonl through
`read_run_metrics`, stage{k}/evaluation.json, evaluation_base.json); `draw_report` draws them
with matplotlib, which is optional: it is imported only when a report is drawn.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from b2diffurl.logs import read_run_metrics
from b2diffurl.stage.paths import BASE_EVALUATION_FILE, EVALUATION_FILE, METRICS_FILE, RUN_CONFIG_FILE, stage_dirs

SELECT_FIELDS = ("reward_mean", "reward_std", "reward_min", "reward_max", "reward_success_rate",
                 "reward_success_ci95_low", "reward_success_ci95_high", "num_positive", "num_negative", "num_selected")
STEP_FIELDS = ("loss", "approx_kl", "clipfrac", "grad_norm")
EVAL_FIELDS = ("reward_mean", "reward_ci95", "diversity_mean")
SUCCESS_FIELDS = ("success_rate", "ci95_low", "ci95_high")


def _number(value) -> float:
    """A metric value as float; missing, non-numeric and non-finite ("nan", "inf") -> NaN."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _read_json(path: str, warnings: list[str]) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        warnings.append(f"{path} cannot be read: {error}")
        return None


def _eval_field(result: dict, field: str) -> float:
    """A field of an evaluation result; with one image a prompt the per-prompt diversity is
    undefined and the diversity over all images stands in for it."""
    value = _number(result.get(field))
    if field == "diversity_mean" and not np.isfinite(value):
        value = _number(result.get("diversity_all"))
    return value


def read_evaluations(run_dir: str, warnings: list[str]) -> tuple[list[tuple[int, dict]], dict | None]:
    """(stage, LoRA results) of every stage{k}/evaluation.json in stage order, and the base
    model's results (or None); what cannot be read is skipped with a line in `warnings`."""
    rows, base = [], None
    for stage, folder in stage_dirs(run_dir):
        path = os.path.join(folder, EVALUATION_FILE)
        if not os.path.exists(path) or (content := _read_json(path, warnings)) is None:
            continue
        results = content.get("results", {}) if isinstance(content, dict) else {}
        if not isinstance(results.get("lora"), dict):
            warnings.append(f"{path} has no results.lora")
            continue
        rows.append((stage, results["lora"]))
        if base is None and isinstance(results.get("base"), dict):
            base = results["base"]
    base_path = os.path.join(run_dir, BASE_EVALUATION_FILE)
    if os.path.exists(base_path) and (content := _read_json(base_path, warnings)) is not None:
        results = content.get("results", {}) if isinstance(content, dict) else {}
        if isinstance(results.get("base"), dict):
            base = results["base"]  # the run-level file wins over a copy inside a stage's file
        else:
            warnings.append(f"{base_path} has no results.base")
    return rows, base


def _evaluations(run_dir: str, warnings: list[str]) -> tuple[dict, dict | None]:
    """Per-stage LoRA evaluation arrays, and the base model's results (or None)."""
    rows, base = read_evaluations(run_dir, warnings)
    evaluations = {"eval_stage": np.array([s for s, _ in rows], dtype=np.int64)}
    for field in EVAL_FIELDS:
        evaluations[f"eval_{field}"] = np.array([_eval_field(r, field) for _, r in rows], dtype=np.float64)
    # Success rates of a 0/1 reward, per prompt group: {group: {field: [E]}}, for the groups every evaluation has.
    groups = [g for g in (rows[0][1].get("success") or {}) if all(g in (r.get("success") or {}) for _, r in rows)] \
        if rows else []
    evaluations["eval_success"] = {
        group: {field: np.array([_number(r["success"][group].get(field)) for _, r in rows]) for field in SUCCESS_FIELDS}
        for group in groups}
    evaluations["eval_success_images"] = {group: _number(rows[-1][1]["success"][group].get("num_images"))
                                          for group in groups}
    if base is not None:
        base = {**{field: _eval_field(base, field) for field in EVAL_FIELDS},
                "success": {group: {field: _number(rate.get(field)) for field in SUCCESS_FIELDS}
                            for group, rate in (base.get("success") or {}).items()}}
    return evaluations, base


def collect(run_dir: str) -> dict:
    """Everything the report draws, as arrays. Keys:

    stages, split_step, train_skipped     per stage with any record: int, float, bool [S]
    select_stage, reward_*, num_*         per stage with a `select` event (the latest wins) [S']
    step, step_stage, loss, approx_kl,    per optimiser step, in run order; `step` counts 1, 2, ...
      clipfrac, grad_norm, step_skipped     over the whole run [M]
    stage_first_step                      per stage: `step` of its first optimiser step (or of the
                                            next stage's, if it had none) [S]
    images_sampled                        per stage: images sampled by its end [S]
    eval_stage, eval_reward_mean,         per stage with stage{k}/evaluation.json (LoRA results) [E]
      eval_reward_ci95, eval_diversity_mean
    eval_success                          {prompt group: {success_rate, ci95_low, ci95_high: [E]}} (0/1 rewards)
    eval_success_images                   {prompt group: images in the last evaluation}
    base                                  the base model's reward_mean, reward_ci95, diversity_mean and
                                            success ({group: {success_rate, ci95_low, ci95_high}}), or None
    run, num_steps, reward                run folder name, T and reward name from run_config.json (or None)
    warnings                              files that could not be read
    Non-finite and missing values are NaN.
    """
    warnings: list[str] = []
    split_step: dict[int, float] = {}
    train_skipped: dict[int, bool] = {}
    select: dict[int, dict] = {}
    sampled: dict[int, float] = {}
    steps: list[dict] = []
    for record in read_run_metrics(run_dir):
        stage = int(record["stage"])
        split_step[stage] = _number(record.get("split_step"))
        event = record.get("event")
        if event == "sample":
            sampled[stage] = _number(record.get("num_samples"))
        elif event == "select":
            select[stage] = record
        elif event == "optimizer_step":
            steps.append(record)
        elif event == "train":
            train_skipped[stage] = bool(record.get("skipped", False))
    stages = sorted(split_step)

    data: dict = {
        "stages": np.array(stages, dtype=np.int64),
        "split_step": np.array([split_step[s] for s in stages], dtype=np.float64),
        "train_skipped": np.array([train_skipped.get(s, False) for s in stages], dtype=bool),
        "select_stage": np.array(sorted(select), dtype=np.int64),
        # images sampled by the end of each stage (NaN from the first stage without a sample event)
        "images_sampled": np.cumsum([sampled.get(s, math.nan) for s in stages]).astype(np.float64),
    }
    for field in SELECT_FIELDS:
        data[field] = np.array([_number(select[s].get(field)) for s in sorted(select)], dtype=np.float64)

    data["step"] = np.arange(1, len(steps) + 1, dtype=np.int64)
    data["step_stage"] = np.array([int(r["stage"]) for r in steps], dtype=np.int64)
    for field in STEP_FIELDS:
        data[field] = np.array([_number(r.get(field)) for r in steps], dtype=np.float64)
    data["step_skipped"] = np.array([bool(r.get("skipped", False)) for r in steps], dtype=bool)
    # A stage's first step is one past the steps of all earlier stages.
    data["stage_first_step"] = np.array([int(np.sum(data["step_stage"] < s)) + 1 for s in stages], dtype=np.int64)

    evaluations, data["base"] = _evaluations(run_dir, warnings)
    data.update(evaluations)

    config_path = os.path.join(run_dir, RUN_CONFIG_FILE)
    config = (_read_json(config_path, warnings) if os.path.exists(config_path) else None) or {}
    data["run"] = os.path.basename(os.path.normpath(run_dir))
    data["num_steps"] = config.get("sample.num_steps")
    data["reward"] = config.get("reward.name")
    data["warnings"] = warnings
    return data


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
