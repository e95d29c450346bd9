"""B2-DiffuRL, its ablations and the DDPO-style baseline, each against its own shuffled-reward
control, side by side on paired held-out images.

    python -m b2diffurl.analysis.compare --config config/shapes.py                      # every method, seed 0
    python -m b2diffurl.analysis.compare --config config/shapes.py --methods b2diffurl,ddpo --seeds 0,1,2
    python -m b2diffurl.analysis.compare --config config/shapes_ablation.py --study ablation  # the study's 18 runs
    python -m b2diffurl.analysis.compare --config config/shapes.py --methods ''         # table and plot only

The config is the full method (its interval schedule s_min -> s_max and its K); the others are
derived from it (config/baseline.py's helpers): `b2diffurl` as the config says; `branch`, branch
sampling only (s = T in every stage); `progressive`, backward progressive training only (K = 1,
the same schedule, every sample trained with its per-prompt advantage, B x K prompts a sampling
batch); `ddpo`, the DDPO-style baseline (K = 1, s = T, every sample, B x K prompts a batch). Every
method also runs as `<method>_control`, the same with each stage's rewards shuffled among its
samples (reward.shuffle: what the update does to the model without signal). All sample the same
images a stage in batches of the same size.

For every seed and run, `bash run_process.sh CONFIG` (with the --config.key overrides given) into
{out}/{run}_seed{n}; each evaluates on the held-out prompts after every eval.every stages, on
the same noise as the base model, so that every evaluation pairs with the base image by image
and with every other run of the seed. A finished run's last LoRA is then evaluated once more, with
its base, on a second, independent noise (seed + SECOND_NOISE) into {run}/evaluation_second_noise.json.
Then it writes {out}/compare.json (every evaluation), {out}/results.json (one entry per run, its
last evaluation against the base, its own control and the other methods: success, order
accuracy, paired gained/lost counts and McNemar's statistic, both noises, the interval schedule
and K), {out}/compare.md (the table) and {out}/compare.png. A finished run is not redone
(run_process.sh continues where a run stopped), so rerunning the command adds what is missing.
--keep DIR copies the record of the study (the comparison, every evaluation and stage log, each
run's last checkpoint) to DIR, small enough to commit; copied back under --out, a run continues.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
from absl import flags

from b2diffurl import cli
from b2diffurl.analysis.run_data import read_evaluations
from b2diffurl.models.metrics import mcnemar_chi2, paired_change
from b2diffurl.errors import UserError
from b2diffurl.files import REPO, atomic_write, atomic_write_json, read_json
from b2diffurl.method.selection import CONTRAST
from b2diffurl.world.shapes import HELD_OUT_TWO_OBJECTS

METHODS = ("b2diffurl", "branch", "progressive", "ddpo")
CONTROL = "_control"
RUNS = tuple(method + suffix for method in METHODS for suffix in ("", CONTROL))
RIVALS = {"b2diffurl": ("branch", "progressive", "ddpo"), "branch": ("ddpo",), "progressive": ("ddpo",)}
# The ablation study, in the order that makes every partial table answer something: the full method
# against DDPO with both controls first, then each half; three seeds for b2diffurl and ddpo (each
# with its control), two for branch and progressive (with a control in seed 0).
STUDIES = {"ablation": [(run, 0) for run in ("b2diffurl", "ddpo", "b2diffurl_control", "ddpo_control", "branch",
                                              "progressive", "branch_control", "progressive_control")]
           + [(run, 1) for run in ("b2diffurl", "ddpo", "b2diffurl_control", "ddpo_control", "branch", "progressive")]
           + [(run, 2) for run in ("b2diffurl", "ddpo", "b2diffurl_control", "ddpo_control")]}
SECOND_NOISE = 1000  # the second evaluation's seed: the run's seed + this
SECOND_EVALUATION_FILE = "evaluation_second_noise.json"


def method_overrides(config, run: str) -> dict:
    """What `run` (a method, or `<method>_control`) changes in the full method's config."""
    from config.baseline import branch_at_x_T, ddpo_overrides, without_branches

    method = run.removesuffix(CONTROL)
    changes = {"b2diffurl": {}, "branch": branch_at_x_T(config), "progressive": without_branches(config),
               "ddpo": ddpo_overrides(config)}[method]
    return {**changes, **({"reward.shuffle": True} if run.endswith(CONTROL) else {})}


def run_overrides(config, run: str, seed: int, out: str) -> dict:
    """What a run changes in the config: where it goes, its seed, and its method's settings."""
    changes = {"save_path": out, "exp_name": f"{run}_seed{seed}", "log_dir": os.path.join(out, "log"), "seed": seed}
    return {**changes, **method_overrides(config, run)}


def run_config(config, run: str, seed: int, out: str):
    """The config of one run: `config` with run_overrides applied."""
    changed = config.copy_and_resolve_references()
    changed.update_from_flattened_dict(run_overrides(config, run, seed, out))
    return changed


def schedule(config) -> dict:
    """What a run's results entry names its variant by: K, the split step s of every stage, the
    images a sampling batch and a stage, and the selection."""
    from b2diffurl.method.curriculum import split_step_for_stage

    stages = config.stages
    return {"num_branches": config.num_branches, "selection": config.eval.selection,
            "split_steps": [split_step_for_stage(k, stages.num_stages, stages.split_step_min, stages.split_step_max)
                            for k in range(stages.num_stages)],
            "sampling_batch": config.sample.batch_size * config.num_branches, "images_per_stage": images_per_stage(config)}


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
    """One row per (run, seed, evaluation) found under `out`: images sampled before it, held-out
    two-object success, failure modes, order accuracy and diversity, the paired counts against the
    base and, where the other run of the same seed was evaluated after as many stages, against the
    run's own control and its rivals (RIVALS: b2diffurl against each ablation and ddpo, each
    ablation against ddpo)."""
    rows = []
    evaluated = {}
    for run in RUNS:
        for seed in seeds:
            changed = run_config(config, run, seed, out)
            per_stage = images_per_stage(changed)
            evaluations, base = read_evaluations(os.path.join(out, changed.exp_name), [])
            points = ([(0, base)] if base else []) + [(stage + 1, result) for stage, result in evaluations]
            for stages_done, result in points:
                evaluated[run, seed, stages_done] = result
                rows.append({"method": run, "seed": seed, "stages": stages_done, **_paired(base, result),
                             "images": stages_done * per_stage, **_success(result),
                             "diversity": result.get("diversity_all", float("nan")),
                             "reward_mean": result.get("reward_mean"), **_outcome(result)})
    for row in rows:
        run = row["method"]
        for other in ((run + CONTROL,) + RIVALS.get(run, ()) if not run.endswith(CONTROL) else ()):
            theirs = evaluated.get((other, row["seed"], row["stages"]))
            if row["stages"] > 0 and theirs:
                name = "control" if other == run + CONTROL else other
                row.update({f"{key}_vs_{name}": value for key, value in _paired(theirs, evaluated[
                    run, row["seed"], row["stages"]]).items() if key in ("gained", "lost", "mcnemar_chi2")})
    return rows


def _success(result: dict) -> dict:
    success = result.get("success", {}).get(HELD_OUT_TWO_OBJECTS, {})
    return {"success_rate": success.get("success_rate"), "ci95_low": success.get("ci95_low"),
            "ci95_high": success.get("ci95_high"), "num_images": success.get("num_images")}


def _paired(base: dict | None, result: dict) -> dict:
    """Gained/lost held-out two-object images of `result` against `base` (the base model's, or
    another run's evaluation) on the same noise."""
    if not base or "scores" not in base or "scores" not in result or base.get("prompts") != result.get("prompts"):
        return {}
    from b2diffurl.world.shapes import prompt_groups

    rows = [i for i, p in enumerate(result["prompts"]) if HELD_OUT_TWO_OBJECTS in prompt_groups(p)]
    return paired_change(np.asarray(base["scores"])[rows], np.asarray(result["scores"])[rows])


def second_noise(out: str, config, run: str, seed: int) -> dict:
    """A run's last LoRA and its base on the second noise (SECOND_EVALUATION_FILE), and the same of
    its own control where it exists: success, order accuracy, gained/lost against the base and
    against the control. {} where the file is missing."""
    def read(name):
        path = os.path.join(out, run_config(config, name, seed, out).exp_name, SECOND_EVALUATION_FILE)
        return read_json(path)["results"] if os.path.exists(path) else None

    mine = read(run)
    if not mine:
        return {}
    entry = {"seed": seed + SECOND_NOISE, "base_success": _success(mine["base"])["success_rate"],
             **{key: value for key, value in _success(mine["lora"]).items() if key != "success_rate"},
             "final_success": _success(mine["lora"])["success_rate"], **_paired(mine["base"], mine["lora"]),
             **{f"{when}_order_accuracy": _outcome(mine[key]).get("order_accuracy") for when, key in
                (("base", "base"), ("final", "lora"))}}
    control = read(run + CONTROL) if not run.endswith(CONTROL) else None
    if control:
        entry.update({f"{key}_vs_control": value for key, value in _paired(control["lora"], mine["lora"]).items()
                      if key in ("gained", "lost", "mcnemar_chi2")})
    return entry


def results(rows: list[dict], configs: dict[tuple[str, int], dict],
            logs: dict[tuple[str, int], list[dict]] | None = None,
            second: dict[tuple[str, int], dict] | None = None) -> dict:
    """One entry per run: its last evaluation against the base, its own control and its rivals
    (held-out two-object success, failure modes, order accuracy), the same on the second noise
    (`second`, per run: second_noise's entry), and from its training log (`logs`, per run:
    training_log's rows) the success of every stage's samples, what the selection kept and the
    seconds spent (the format: docs/shapes-results.md). `configs` per run: its config file,
    overrides and schedule."""
    runs = []
    for (run, seed), config in configs.items():
        mine = sorted((r for r in rows if (r["method"], r["seed"]) == (run, seed)), key=lambda r: r["stages"])
        if len(mine) < 2 or mine[0]["stages"] != 0:
            continue
        base, last = mine[0], mine[-1]
        entry = {"method": run.removesuffix(CONTROL), "seed": seed, "control": run.endswith(CONTROL),
                 "images": last["images"], "stages": last["stages"],
                 "base_success": base["success_rate"], "final_success": last["success_rate"],
                 "ci95_low": last["ci95_low"], "ci95_high": last["ci95_high"],
                 "n": last["num_images"], "gained": last.get("gained"), "lost": last.get("lost"),
                 "mcnemar_chi2": last.get("mcnemar_chi2"),
                 **{key: value for key, value in last.items() if "_vs_" in key},
                 **{f"{when}_{key}": row[key] for when, row in (("base", base), ("final", last))
                    for key in ("order_accuracy", "order_right", "order_of", "modes", "diversity") if key in row}}
        log = [r for r in (logs or {}).get((run, seed), []) if r["stage"] < last["stages"]]
        if log:
            entry.update(train_success=[r.get("train_success") for r in log],
                         selected_positive=sum(r.get("positive") or 0 for r in log),
                         selected_negative=sum(r.get("negative") or 0 for r in log),
                         **{key: sum(r.get(key) or 0 for r in log) for key in CONTRAST},
                         sampling_seconds=round(sum(r.get("sampling_seconds") or 0 for r in log), 1),
                         training_seconds=round(sum(r.get("training_seconds") or 0 for r in log), 1))
        if (second or {}).get((run, seed)):
            entry["second_noise"] = second[run, seed]
        runs.append({**entry, **{k: v for k, v in config.items() if k in ("num_branches", "split_steps",
                                                                          "selection", "sampling_batch")},
                     "config": {k: v for k, v in config.items() if k in ("file", "overrides")}})
    return {"runs": runs}


def table(rows: list[dict]) -> str:
    """Markdown: per run and number of images, mean over seeds of success, order accuracy and
    diversity, and the paired gained/lost counts against the base, the run's own control and
    ddpo (each summed over seeds) with McNemar's statistic."""
    lines = ["| run | stages | images sampled | seeds | held-out two-object success | 95% interval (one seed) "
             "| order accuracy | gained / lost vs base | McNemar χ² | vs control | χ² | vs ddpo | χ² | diversity |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method in RUNS:
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
    every seed thin, the mean over seeds bold, a method's colour dashed for its control."""
    from b2diffurl.analysis.curves import agg_figure

    fig = agg_figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    training = [{"method": method, "seed": seed, "images": r["images"], "train_success": r["train_success"]}
                for (method, seed), log in (logs or {}).items() for r in log if r.get("train_success") is not None]
    panels = ((axes[0], rows, "success_rate"), (axes[1], rows, "order_accuracy"),
              (axes[2], training, "train_success"), (axes[3], rows, "diversity"))
    for method in RUNS:
        colour, style = f"C{METHODS.index(method.removesuffix(CONTROL))}", "--" if method.endswith(CONTROL) else "-"
        for ax, source, field in panels:
            mine = [r for r in source if r["method"] == method and r.get(field) is not None]
            if not mine:
                continue
            images = sorted({r["images"] for r in mine})
            for seed in sorted({r["seed"] for r in mine}):
                seed_rows = sorted((r for r in mine if r["seed"] == seed), key=lambda r: r["images"])
                ax.plot([r["images"] for r in seed_rows], [r[field] for r in seed_rows], style, color=colour,
                        alpha=0.3, lw=1)
            means = [np.mean([r[field] for r in mine if r["images"] == n]) for n in images]
            ax.plot(images, means, "o" + style, color=colour, lw=2, label=method)
        single = sorted((r for r in rows if r["method"] == method and r["success_rate"] is not None
                         and r["seed"] == min(x["seed"] for x in rows)), key=lambda r: r["images"])
        if single and not method.endswith(CONTROL):
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
    from b2diffurl.paths import (BASE_EVALUATION_FILE, CHECKPOINT_DIR, COMPLETE_FILE, EVALUATION_FILE,
                                       HISTORY_FILE, METRICS_FILE, RUN_CONFIG_FILE, stage_dirs)

    wanted = [name for name in KEPT_FILES if os.path.exists(os.path.join(out, name))]
    for run in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        stages = stage_dirs(os.path.join(out, run))
        if not stages:
            continue
        wanted += [os.path.join(run, name) for name in (RUN_CONFIG_FILE, BASE_EVALUATION_FILE, SECOND_EVALUATION_FILE)]
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


def evaluate_on_second_noise(config, config_file: str, changes: dict, out: str) -> None:
    """A finished run's last LoRA and its base, once, on the second noise (seed + SECOND_NOISE)."""
    from b2diffurl.paths import StagePaths

    last = StagePaths.of(config, config.stages.num_stages - 1)
    path = os.path.join(out, config.exp_name, SECOND_EVALUATION_FILE)
    if os.path.exists(path) or not last.is_complete():
        return
    command = [sys.executable, "-m", "b2diffurl.analysis.evaluate", f"--config={config_file}",
               *(f"--config.{key}={value}" for key, value in {**changes, "seed": config.seed + SECOND_NOISE}.items()),
               f"--lora={last.checkpoint}", f"--out={path}"]
    print(f"=== compare: second noise: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def compare(config, config_file: str, overrides: dict, out: str, plan: list[tuple[str, int]],
            kept: str = "") -> str:
    """Make every (run, seed) of `plan` in order (each `bash run_process.sh config_file` with
    `overrides` and the run's own, then its second-noise evaluation), and after each, and once at
    the end, write the report of every run found in `out` (report) and copy the record to `kept`
    if given (keep); returns the table."""
    unknown = {run for run, _ in plan} - set(RUNS)
    if unknown:
        raise UserError(f"--methods takes {', '.join(RUNS)}, got {', '.join(sorted(unknown))}")
    for run, seed in plan:
        changes = {**overrides, **run_overrides(config, run, seed, out)}
        command = ["bash", os.path.join(REPO, "run_process.sh"), config_file]
        command += [f"--config.{key}={value}" for key, value in changes.items()]
        print(f"=== compare: {run}, seed {seed}: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True, cwd=REPO)
        evaluate_on_second_noise(run_config(config, run, seed, out), config_file, changes, out)
        report(config, config_file, overrides, out, kept)
    return report(config, config_file, overrides, out, kept)


def report(config, config_file: str, overrides: dict, out: str, kept: str = "") -> str:
    """compare.json, results.json, compare.md and compare.png in `out` from every run found there,
    and the record copied to `kept` if given; returns the table."""
    seeds = found_seeds(out)
    rows = collect(out, config, seeds)
    logs = {(run, seed): training_log(os.path.join(out, (changed := run_config(config, run, seed, out)).exp_name),
                                      images_per_stage(changed))
            for run in RUNS for seed in seeds}
    atomic_write_json({"config": config_file, "overrides": overrides, "seeds": seeds, "rows": rows,
                       "training": {f"{run}_seed{seed}": log for (run, seed), log in logs.items() if log}},
                      os.path.join(out, "compare.json"))
    configs = {(run, seed): {"file": config_file, "overrides": {**overrides, **run_overrides(config, run, seed, out)},
                             **schedule(run_config(config, run, seed, out))}
               for run in RUNS for seed in seeds}
    second = {(run, seed): second_noise(out, config, run, seed) for run in RUNS for seed in seeds}
    atomic_write_json(results(rows, configs, logs, second), os.path.join(out, "results.json"))
    text = table(rows)
    atomic_write(os.path.join(out, "compare.md"), lambda f: f.write(text.encode() + b"\n"))
    print(text)
    plot(rows, os.path.join(out, "compare.png"), logs)  # needs matplotlib: one line and exit code 2 without it
    print(f"wrote {os.path.join(out, 'compare.md')} and compare.png")
    if kept:
        print(f"kept {len(keep(out, kept))} files in {kept}")
    return text


def found_seeds(out: str) -> list[int]:
    """The seeds of the run folders under `out` ({run}_seed{n})."""
    names = os.listdir(out) if os.path.isdir(out) else []
    return sorted({int(name.rsplit("_seed", 1)[1]) for name in names
                   if "_seed" in name and name.rsplit("_seed", 1)[1].isdigit() and name.rsplit("_seed", 1)[0] in RUNS})


def plan_of(study: str, methods: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """The (run, seed) pairs to make, in order: a named study's, or every method for every seed."""
    if study:
        if study not in STUDIES:
            raise UserError(f"--study takes {', '.join(STUDIES)}, got {study}")
        return list(STUDIES[study])
    return [(run, seed) for seed in seeds for run in methods if run]


FLAGS = cli.flag_values()
SEEDS = flags.DEFINE_list("seeds", ["0"], "seeds; each runs every one of --methods", flag_values=FLAGS)
OUT = flags.DEFINE_string("out", "model/compare", "folder of the runs and the comparison", flag_values=FLAGS)
RUN = flags.DEFINE_list("methods", list(RUNS),
                        "which runs to make now (methods and <method>_control; '' for none); the table holds every "
                        "evaluation found", flag_values=FLAGS)
STUDY = flags.DEFINE_string("study", "", f"make a named study's runs instead ({', '.join(STUDIES)})", flag_values=FLAGS)
KEEP = flags.DEFINE_string("keep", "", "after every run, also copy the study's record (compare.keep) to this folder, to "
                           "commit",
                           flag_values=FLAGS)


def main(argv: list[str] | None = None) -> None:
    from ml_collections import config_flags

    def body(config):
        config_file = config_flags.get_config_filename(FLAGS["config"])
        overrides = config_flags.get_override_values(FLAGS["config"])
        plan = plan_of(STUDY.value, RUN.value, [int(s) for s in SEEDS.value])
        compare(config, config_file, overrides, OUT.value, plan, KEEP.value)

    cli.run(FLAGS, body, argv, continues_run=False)


if __name__ == "__main__":
    main()
