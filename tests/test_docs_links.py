"""Every relative link in README.md and docs/ names a file or folder that exists, and the README
stays short (about 200 lines: what users read first; studies live in docs/)."""

import glob
import os
import re

import pytest

from b2diffurl.files import REPO

PAGES = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """The targets of markdown links that point into the repository (no scheme, no pure anchor),
    without their #fragment."""
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t.split("#", 1)[0] for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_the_link_reader_finds_relative_links_only():
    text = "[a](docs/x.md#part) [b](https://example.org) [c](#here) [d](../examples/slurm.sbatch) ![e](img.png)"
    assert relative_links(text) == ["docs/x.md", "../examples/slurm.sbatch", "img.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_resolves(page):
    with open(page) as f:
        text = f.read()
    missing = [t for t in relative_links(text) if not os.path.exists(os.path.join(os.path.dirname(page), t))]
    assert not missing, f"{os.path.relpath(page, REPO)} links to missing files: {missing}"


def test_the_readme_is_short():
    with open(os.path.join(REPO, "README.md")) as f:
        assert len(f.read().splitlines()) <= 200
