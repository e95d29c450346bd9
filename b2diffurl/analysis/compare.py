"""B2-DiffuRL against its shuffled-reward control and the DDPO-style baseline at the same number
of sampled images, side by side, on paired held-out images.

    python -m b2diffurl.analysis.compare --config config/shapes.py                      # seed 0
    python -m b2diffurl.analysis.compare --config config/shapes.py --seeds 0,1,2 --config.stages.num_stages 8
    python -m b2diffurl.analysis.compare --config config/shapes.py --methods b2diffurl  # one side now
    python -m b2diffurl.analysis.compare --config config/shapes.py --methods ''         # table and plot only

For every seed and method, runs `bash run_process.sh CONFIG` (with the --config.key overrides
given) into {out}/{method}_seed{n}: `b2diffurl` as the config says; `control`, the same with
each stage's rewards shuffled among its samples (reward.shuffle: what the update does to the
model without signal); `ddpo`, the DDPO-style baseline (config/baseline.py's `ddpo_overrides`:
K = 1, s = T, every sample trained, K times the sampling batches so that a stage samples as many
images). Each evaluates on the held-out prompts after every eval.every stages, on the same
noise as the base model, so that every evaluation pairs with the base image by image. Then it
writes {out}/compare.json (every evaluation), {out}/results.json (one entry per run, its last
evaluation against the base: success, paired gained/lost counts and McNemar's statistic, and
the config), {out}/compare.md (the table) and {out}/compare.png. A finished run is not redone
(run_process.sh continues where a run stopped), so rerunning the command with more seeds adds
them. --keep DIR copies the record of the study (the comparison, every evaluation and stage
log, each run's last checkpoint) to DIR, small enough to commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
from absl import flags

from b2diffurl import cli
from b2diffurl.analysis.curves import read_evaluations
from b2diffurl.analysis.metrics import mcnemar_chi2, paired_change
from b2diffurl.errors import UserError
from b2diffurl.files import REPO, atomic_write, atomic_write_json
from b2diffurl.method.selection import CONTRAST
from b2diffurl.world.shapes import HELD_OUT_TWO_OBJECTS

METHODS = ("b2diffurl", "control", "ddpo")


def run_overrides(config, method: str, seed: int, out: str) -> dict:
    """What a run of `method` changes in the config: where it goes, its seed, an evaluation
    after every stage, and for ddpo the baseline's settings."""
    from config.baseline import ddpo_overrides

    changes = {"save_path": out, "exp_name": f"{method}_seed{seed}", "log_dir": os.path.join(out, "log"),
               "seed": seed}
    return {**changes, **{"ddpo": ddpo_overrides(config), "control": {"reward.shuffle": True}}.get(method, {})}


def run_config(config, method: str, seed: int, out: str):
    """The config of one run: `config` with run_overrides applied."""
    changed = config.copy_and_resolve_references()
    changed.update_from_flattened_dict(run_overrides(config, method, seed, out))
    return changed


def images_per_stage(config) -> int:
    return config.sample.batch_size * config.sample.num_batches_per_stage * config.num_branches


def training_log(run_dir: str, per_stage: int) -> list[dict]:
    """One row per stage of a run from its metrics: images sampled before the stage, the success
    of the stage's own samples (its reward mean: the policy on the training captions, before the
    stage's update), what the selection kept (positive: a best branch, negative: a worst; the
    contrast_* counts of selection.contrast_census), and the seconds of sampling and training."""
    from b2diffurl.logs import read_run_metrics

    stages: dict[int, dict] = {}
    for record in read_run_metrics(run_dir):
        row = stages.setdefault(int(record["stage"]), {"stage": int(record["stage"])})
        if record.get("event") == "sample":
            row["sampling_seconds"] = record.get("seconds")
        elif record.get("event") == "select":
            row.update(train_success=record.get("reward_mean"), **{key: record.get(f"num_{key}") for key in (
                "samples", "positive", "negative", *CONTRAST)})
        elif record.get("event") == "train":
            row["training_seconds"] = record.get("training_seconds")
    return [{**stages[k], "images": k * per_stage} for k in sorted(stages)]


def _outcome(result: dict) -> dict:
    """The held-out two-object failure modes and order accuracy of one evaluation, where the reward
    reports them (b2diffurl.world.failures)."""
    row = result.get("outcomes", {}).get(HELD_OUT_TWO_OBJECTS)
    if not row:
        return {}
    return {"order_accuracy": row["order_accuracy"], "order_right": row["order_right"], "order_of": row["order_of"],
            "modes": row["modes"]}


def collect(out: str, config, seeds: list[int]) -> list[dict]:
    """One row per (method, seed, evaluation) found under `out`: images sampled before it,
    held-out two-object success, failure modes, order accuracy and diversity, the paired counts
    against the base and, where the run of the same seed was evaluated after as many stages,
    against the control (for b2diffurl and ddpo) and against ddpo (for b2diffurl)."""
    rows = []
    evaluated = {}
    for method in METHODS:
        for seed in seeds:
            run = run_config(config, method, seed, out)
            per_stage = images_per_stage(run)
            evaluations, base = read_evaluations(os.path.join(out, run.exp_name), [])
            points = ([(0, base)] if base else []) + [(stage + 1, result) for stage, result in evaluations]
            for stages_done, result in points:
                evaluated[method, seed, stages_done] = result
                success = result.get("success", {}).get(HELD_OUT_TWO_OBJECTS, {})
                rows.append({"method": method, "seed": seed, "stages": stages_done, **_paired(base, result),
                             "images": stages_done * per_stage, "success_rate": success.get("success_rate"),
                             "ci95_low": success.get("ci95_low"), "ci95_high": success.get("ci95_high"),
                             "num_images": success.get("num_images"),
                             "diversity": result.get("diversity_all", float("nan")),
                             "reward_mean": result.get("reward_mean"), **_outcome(result)})
    for row in rows:
        for other, methods in (("control", ("b2diffurl", "ddpo")), ("ddpo", ("b2diffurl",))):
            theirs = evaluated.get((other, row["seed"], row["stages"]))
            if row["method"] in methods and row["stages"] > 0 and theirs:
                against = _paired(theirs, evaluated[row["method"], row["seed"], row["stages"]])
                row.update({f"{key}_vs_{other}": value for key, value in against.items()
                            if key in ("gained", "lost", "mcnemar_chi2")})
    return rows


def _paired(base: dict | None, result: dict) -> dict:
    """Gained/lost held-out two-object images of `result` against `base` (the base model's, or
    another run's evaluation) on the same noise."""
    if not base or "scores" not in base or "scores" not in result or base.get("prompts") != result.get("prompts"):
        return {}
    from b2diffurl.world.shapes import prompt_groups

    rows = [i for i, p in enumerate(result["prompts"]) if HELD_OUT_TWO_OBJECTS in prompt_groups(p)]
    return paired_change(np.asarray(base["scores"])[rows], np.asarray(result["scores"])[rows])


def results(rows: list[dict], configs: dict[tuple[str, int], dict],
            logs: dict[tuple[str, int], list[dict]] | None = None) -> dict:
    """One entry per run: its last evaluation against the base, the control and ddpo (held-out
    two-object success, failure modes, order accuracy), and from its training log (`logs`, per
    run: training_log's rows) the success of every stage's samples, what the selection kept and
    the seconds spent (the format: docs/shapes-results.md)."""
    runs = []
    for (method, seed), config in configs.items():
        mine = sorted((r for r in rows if (r["method"], r["seed"]) == (method, seed)), key=lambda r: r["stages"])
        if len(mine) < 2 or mine[0]["stages"] != 0:
            continue
        base, last = mine[0], mine[-1]
        run = {"method": "ddpo" if method == "ddpo" else "b2diffurl", "seed": seed,
               "control": method == "control", "images": last["images"], "stages": last["stages"],
               "base_success": base["success_rate"], "final_success": last["success_rate"],
               "n": last["num_images"], "gained": last.get("gained"), "lost": last.get("lost"),
               "mcnemar_chi2": last.get("mcnemar_chi2"),
               **{f"{key}_vs_{other}": last[f"{key}_vs_{other}"] for other in ("control", "ddpo")
                  for key in ("gained", "lost", "mcnemar_chi2") if f"{key}_vs_{other}" in last},
               **{f"{when}_{key}": row[key] for when, row in (("base", base), ("final", last))
                  for key in ("order_accuracy", "modes", "diversity") if key in row}}
        log = [r for r in (logs or {}).get((method, seed), []) if r["stage"] < last["stages"]]
        if log:
            run.update(train_success=[r.get("train_success") for r in log],
                       selected_positive=sum(r.get("positive") or 0 for r in log),
                       selected_negative=sum(r.get("negative") or 0 for r in log),
                       **{key: sum(r.get(key) or 0 for r in log) for key in CONTRAST},
                       sampling_seconds=round(sum(r.get("sampling_seconds") or 0 for r in log), 1),
                       training_seconds=round(sum(r.get("training_seconds") or 0 for r in log), 1))
        runs.append({**run, "config": config})
    return {"runs": runs}


def table(rows: list[dict]) -> str:
    """Markdown: per method and number of images, mean over seeds of success, order accuracy and
    diversity, and the paired gained/lost counts against the base, the control and ddpo (each
    summed over seeds) with McNemar's statistic."""
    lines = ["| method | stages | images sampled | seeds | held-out two-object success | 95% interval (one seed) "
             "| order accuracy | gained / lost vs base | McNemar χ² | vs control | χ² | vs ddpo | χ² | diversity |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        for stages in sorted({r["stages"] for r in rows if r["method"] == method}):
            group = [r for r in rows
                     if r["method"] == method and r["stages"] == stages and r["success_rate"] is not None]
            if not group:
                continue
            interval = (f"[{group[0]['ci95_low']:.3f}, {group[0]['ci95_high']:.3f}]" if len(group) == 1 else
                        "seeds " + ", ".join(f"{r['success_rate']:.3f}" for r in group))
            order = (f"{sum(r['order_right'] for r in group) / max(1, sum(r['order_of'] for r in group)):.3f}"
                     if all("order_of" in r for r in group) else "–")
            paired = []
            for suffix in ("", "_vs_control", "_vs_ddpo"):
                if stages > 0 and all(f"gained{suffix}" in r for r in group):
                    gained, lost = (sum(r[f"{k}{suffix}"] for r in group) for k in ("gained", "lost"))
                    paired += [f"{gained} / {lost}", f"{mcnemar_chi2(gained, lost):.2f}"]
                else:
                    paired += ["–", "–"]
            lines.append(f"| {method} | {stages} | {group[0]['images']} | {len(group)} | "
                         f"{np.mean([r['success_rate'] for r in group]):.3f} | {interval} | {order} | "
                         f"{' | '.join(paired)} | {np.mean([r['diversity'] for r in group]):.4f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, logs: dict[tuple[str, int], list[dict]] | None = None) -> None:
    """Against images sampled: held-out success, order accuracy, the success of each stage's own
    samples on the training captions (from `logs`, training_log's rows per run) and diversity;
    every seed thin, the mean over seeds bold."""
    from b2diffurl.analysis.curves import agg_figure

    fig = agg_figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    training = [{"method": method, "seed": seed, "images": r["images"], "train_success": r["train_success"]}
                for (method, seed), log in (logs or {}).items() for r in log if r.get("train_success") is not None]
    panels = ((axes[0], rows, "success_rate"), (axes[1], rows, "order_accuracy"),
              (axes[2], training, "train_success"), (axes[3], rows, "diversity"))
    for colour, method in zip(("C0", "C7", "C3"), METHODS):
        for ax, source, field in panels:
            mine = [r for r in source if r["method"] == method and r.get(field) is not None]
            if not mine:
                continue
            images = sorted({r["images"] for r in mine})
            for seed in sorted({r["seed"] for r in mine}):
                seed_rows = sorted((r for r in mine if r["seed"] == seed), key=lambda r: r["images"])
                ax.plot([r["images"] for r in seed_rows], [r[field] for r in seed_rows], color=colour, alpha=0.3, lw=1)
            means = [np.mean([r[field] for r in mine if r["images"] == n]) for n in images]
            ax.plot(images, means, "o-", color=colour, lw=2, label=method)
        single = sorted((r for r in rows if r["method"] == method and r["success_rate"] is not None
                         and r["seed"] == min(x["seed"] for x in rows)), key=lambda r: r["images"])
        if single:
            axes[0].fill_between([r["images"] for r in single], [r["ci95_low"] for r in single],
                                 [r["ci95_high"] for r in single], color=colour, alpha=0.1)
    axes[0].set_title("held-out two-object success (shaded: 95% interval, first seed)")
    axes[1].set_title("held-out order accuracy where all else is right (chance 0.5)")
    axes[2].set_title("success of each stage's samples (training captions)")
    axes[3].set_title("diversity (mean distance between all held-out images)")
    for ax in axes:
        ax.set_xlabel("images sampled")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


KEPT_FILES = ("compare.json", "results.json", "compare.md", "compare.png")


def keep(out: str, dest: str) -> list[str]:
    """Copy what a study's record needs from `out` to `dest` (a folder to commit, a few hundred
    kB a run): the comparison files and, for every run, its run_config.json and base evaluation,
    every stage's evaluation, metrics and completion marker, and the last complete stage's
    checkpoint and score history. `compare --out dest --methods ''` rebuilds the table from it, and a copy
    of a run's folder back under `out` continues that run. Returns the files copied."""
    from b2diffurl.stage.paths import (BASE_EVALUATION_FILE, CHECKPOINT_DIR, COMPLETE_FILE, EVALUATION_FILE,
                                       HISTORY_FILE, METRICS_FILE, RUN_CONFIG_FILE, stage_dirs)

    wanted = [name for name in KEPT_FILES if os.path.exists(os.path.join(out, name))]
    for run in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        stages = stage_dirs(os.path.join(out, run))
        if not stages:
            continue
        wanted += [os.path.join(run, name) for name in (RUN_CONFIG_FILE, BASE_EVALUATION_FILE)]
        for _, folder in stages:
            wanted += [os.path.join(run, os.path.basename(folder), name)
                       for name in (EVALUATION_FILE, METRICS_FILE, COMPLETE_FILE)]
        complete = [folder for _, folder in stages if os.path.exists(os.path.join(folder, COMPLETE_FILE))]
        if complete:  # what a continuation reads: the last stage's LoRA, optimiser state and score history
            last = os.path.join(complete[-1], CHECKPOINT_DIR)
            wanted += [os.path.relpath(os.path.join(complete[-1], HISTORY_FILE), out)]
            wanted += [os.path.relpath(os.path.join(last, name), out)
                       for name in (sorted(os.listdir(last)) if os.path.isdir(last) else [])]
    copied = []
    for name in wanted:
        source = os.path.join(out, name)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(os.path.join(dest, name)) or dest, exist_ok=True)
            shutil.copyfile(source, os.path.join(dest, name))
            copied.append(name)
    return copied


def compare(config, config_file: str, overrides: dict, out: str, seeds: list[int], methods: list[str]) -> str:
    """Run `methods` for every seed (each `bash run_process.sh config_file` with `overrides` and
    the method's own), then write compare.json, results.json, compare.md and compare.png to
    `out`; returns the table."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise UserError(f"--methods takes {', '.join(METHODS)}, got {', '.join(sorted(unknown))}")
    for seed in seeds:
        for method in methods:
            changes = {**overrides, **run_overrides(config, method, seed, out)}
            command = ["bash", os.path.join(REPO, "run_process.sh"), config_file]
            command += [f"--config.{key}={value}" for key, value in changes.items()]
            print(f"=== compare: {method}, seed {seed}: {' '.join(command)}", flush=True)
            subprocess.run(command, check=True, cwd=REPO)
    rows = collect(out, config, seeds)
    logs = {(method, seed): training_log(os.path.join(out, (run := run_config(config, method, seed, out)).exp_name),
                                         images_per_stage(run))
            for method in METHODS for seed in seeds}
    atomic_write_json({"config": config_file, "overrides": overrides, "seeds": seeds, "rows": rows,
                       "training": {f"{method}_seed{seed}": log for (method, seed), log in logs.items()}},
                      os.path.join(out, "compare.json"))
    configs = {(method, seed): {"file": config_file, "overrides": {**overrides, **run_overrides(config, method, seed, out)}}
               for method in METHODS for seed in seeds}
    atomic_write_json(results(rows, configs, logs), os.path.join(out, "results.json"))
    text = table(rows)
    atomic_write(os.path.join(out, "compare.md"), lambda f: f.write(text.encode() + b"\n"))
    print(text)
    plot(rows, os.path.join(out, "compare.png"), logs)  # needs matplotlib: one line and exit code 2 without it
    print(f"wrote {os.path.join(out, 'compare.md')} and compare.png")
    return text


FLAGS = cli.flag_values()
SEEDS = flags.DEFINE_list("seeds", ["0"], "seeds; each runs both methods", flag_values=FLAGS)
OUT = flags.DEFINE_string("out", "model/compare", "folder of the runs and the comparison", flag_values=FLAGS)
RUN = flags.DEFINE_list("methods", list(METHODS),
                        "which runs to make now ('' for none); the table holds every evaluation found", flag_values=FLAGS)
KEEP = flags.DEFINE_string("keep", "", "also copy the study's record (compare.keep) to this folder, to commit",
                           flag_values=FLAGS)


def main(argv: list[str] | None = None) -> None:
    from ml_collections import config_flags

    def body(config):
        config_file = config_flags.get_config_filename(FLAGS["config"])
        overrides = config_flags.get_override_values(FLAGS["config"])
        compare(config, config_file, overrides, OUT.value, [int(s) for s in SEEDS.value], RUN.value)
        if KEEP.value:
            print(f"kept {len(keep(OUT.value, KEEP.value))} files in {KEEP.value}")

    cli.run(FLAGS, body, argv, continues_run=False)


if __name__ == "__main__":
    main()
