"""Which failure modes a stage's branch samples show, and which of them a branch group can teach.

    python -m b2diffurl.lab.stage_failures model/scale/b2diffurl_seed1/stage0 [more stage folders]

Reads each stage folder's sample.pkl (prompts, groups) and images.pt, and prints per folder
b2diffurl.world.failures.stage_failures: the share of each outcome over all two-object images,
and over the branch groups that hold both a success and a failure the outcome of their failing
branches.
"""

from __future__ import annotations

import sys

from b2diffurl.paths import StagePaths
from b2diffurl.world.failures import stage_failures


def main(argv: list[str] | None = None) -> None:
    import torch

    from b2diffurl.stage.sample_file import load_samples

    for folder in (sys.argv[1:] if argv is None else argv):
        paths = StagePaths(folder)
        record = load_samples(paths.samples)
        images = torch.load(paths.images, weights_only=True).numpy()
        result = stage_failures(record["prompts"], record["group_id"].tolist(), images)
        print(f"{folder}: {result['images']} two-object images in {result['groups']} groups; "
              + ", ".join(f"{mode} {share:.3f}" for mode, share in result["all"].items()))
        print(f"  {result['contrasting_groups']} groups with a success and a failure; their failing branches: "
              + ", ".join(f"{mode} {share:.3f}" for mode, share in result["failing_in_contrasting"].items()
                          if mode != "success"))
        print(f"  {result['order_groups']} groups hold a success and a branch with the order reversed")


if __name__ == "__main__":
    main()
