"""One line per stage from a run's stage{k}/metrics.jsonl files: what a researcher checks first.

    python -m b2diffurl.analysis.stage_table model/tiny
"""

from __future__ import annotations

import sys

import numpy as np

from b2diffurl.logs import read_run_metrics


def stage_table(records: list[dict]) -> list[dict]:
    """Per stage (latest record of each event wins): split step, rewards, selection, training."""
    stages: dict[int, dict] = {}
    losses: dict[int, list[float]] = {}
    kls: dict[int, list[float]] = {}
    for record in records:
        row = stages.setdefault(record["stage"], {"stage": record["stage"]})
        row["split_step"] = record.get("split_step", row.get("split_step"))
        if record["event"] == "select":
            row.update(reward_mean=record["reward_mean"], reward_max=record["reward_max"],
                       selected=f"{record['num_selected']}/{record['num_samples']}")
        elif record["event"] == "optimizer_step":
            losses.setdefault(record["stage"], []).append(record["loss"])
            kls.setdefault(record["stage"], []).append(record["approx_kl"])
        elif record["event"] == "train":
            row["train"] = ("skipped" if record.get("skipped") else "UNTRAINED" if record.get("untrained")
                            else f"{record['optimizer_steps']} steps")
    for stage, row in stages.items():
        if stage in losses:
            row.update(loss=float(np.mean(losses[stage])), approx_kl=float(np.mean(kls[stage])))
    return [stages[k] for k in sorted(stages)]


def format_table(rows: list[dict]) -> str:
    columns = ["stage", "split_step", "reward_mean", "reward_max", "selected", "train", "loss", "approx_kl"]
    lines = ["  ".join(f"{c:>11}" for c in columns)]
    for row in rows:
        cells = [row.get(c, "-") for c in columns]
        lines.append("  ".join(f"{c:>11.4g}" if isinstance(c, float) else f"{c!s:>11}" for c in cells))
    return "\n".join(lines)


def success_lines(run: str) -> list[str]:
    """One line per held-out evaluation that has success rates (the shapes rewards): the base
    model's, then each evaluated stage's, for the headline group (held-out two-object captions)
    and over all images; and, where the evaluation reports outcomes, one with the order accuracy
    of all two-object images, paired against the base image by image where both kept their
    images' modes."""
    from b2diffurl.analysis.run_data import read_evaluations
    from b2diffurl.models.metrics import paired_order
    from b2diffurl.world.shapes import HELD_OUT_TWO_OBJECTS

    rows, base = read_evaluations(run, [])
    lines = []
    for name, result in ([("base", base)] if base else []) + [(f"stage {stage}", r) for stage, r in rows]:
        success = result.get("success", {})
        cells = [f"{group} {success[group]['success_rate']:.3f} [{success[group]['ci95_low']:.3f}, "
                 f"{success[group]['ci95_high']:.3f}] of {success[group]['num_images']}"
                 for group in (HELD_OUT_TWO_OBJECTS, "all") if group in success]
        if cells:
            lines.append(f"success {name:>9}: " + "; ".join(cells))
        order = result.get("outcomes", {}).get("two objects")
        if order and order["order_of"]:
            line = (f"order   {name:>9}: two objects {order['order_accuracy']:.3f} ({order['order_right']} of "
                    f"{order['order_of']} with the stated objects on the stated axis)")
            if base and result is not base and "modes" in result and result.get("prompts") == base.get("prompts"):
                paired = paired_order(base.get("modes", []), result["modes"])
                line += (f"; vs base {paired['gained']} gained / {paired['lost']} lost of {paired['images']} "
                         f"(McNemar chi2 {paired['mcnemar_chi2']:.1f})")
            lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> None:
    """Print the table and the held-out success lines of the run folder argv[0] (default model/tiny)."""
    argv = sys.argv[1:] if argv is None else argv
    run = argv[0] if argv else "model/tiny"
    print(format_table(stage_table(read_run_metrics(run))))
    for line in success_lines(run):
        print(line)


if __name__ == "__main__":
    main()
