"""Trim aiperf's `pip install --target DIR` (for the GPU machine's Python 3.12) to what `aiperf profile` needs there.

bench/gpu_bundle.sh's nvtools part calls it. Removed: (1) the parts of aiperf that a profile run never imports
(its plots, dashboard, Kubernetes operator, search planner, public datasets, pandas and zstandard: a profile of
the nvtools stage ran without them against `llmserve serve` on CPU) and whatever only they require; (2) what the
GPU image already has in a version all of aiperf's requirers accept (bench/gpu_image.txt). A package the image has without a version read stays when a
requirer pins an upper bound (aiperf pins psutil~=7.0, rich~=14.1, ...): the image's may be another minor.
aiperf then runs as `PYTHONPATH=DIR python3 -m aiperf` under the image's python, apart from our venv, whose
packages clash with aiperf's pins.

    python bench/nvidia_tools/bundle_prune.py DIR
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_requirements import TARGET_ENV, image_packages, installed  # noqa: E402  (bench/gpu_requirements.py)

ROOT_PACKAGE = "aiperf"
NOT_IMPORTED_BY_PROFILE = {
    "plotly",
    "dash",
    "dash-bootstrap-components",
    "kaleido",
    "kubernetes-asyncio",
    "kopf",
    "optuna",
    "textual",
    "datasets",
    "pandas",  # its exports and plots; a profile's JSON and CSV are written without it
    "seaborn",
    "zstandard",
}
# The image's own copy serves, whatever the pin: aiperf draws images with pillow (~=12.3) only for image endpoints,
# a text profile just imports it (20 MB unpacked).
FROM_IMAGE_ANYWAY = {"pillow"}
UPPER_BOUNDS = ("<", "~=", "==")


def applies(req: Requirement) -> bool:
    """On the GPU machine, for the packages installed (an `extra == ...` marker is an extra nobody asked for)."""
    return not req.marker or ("extra" not in str(req.marker) and req.marker.evaluate(TARGET_ENV))


def needed(dists: dict, from_image: set[str]) -> set[str]:
    """The packages `aiperf profile` imports: aiperf's requirements, transitively, less the unused parts; the
    requirements of a package the image provides are the image's own (not followed)."""
    seen: set[str] = set()
    todo = [canonicalize_name(ROOT_PACKAGE)]
    while todo:
        name = todo.pop()
        if name in seen or name in NOT_IMPORTED_BY_PROFILE or name not in dists:
            continue
        seen.add(name)
        if name not in from_image:
            todo += [canonicalize_name(r.name) for r in dists[name][1].requires_dist or [] if applies(r)]
    return seen


def image_has(name: str, requirers: list[Requirement], image: dict) -> bool:
    if name not in image:
        return False
    if name in FROM_IMAGE_ANYWAY:
        return True
    version = image[name]
    if version is None:  # only the name was read: trust it where no requirer bounds the version from above
        return not any(op in str(r.specifier) for r in requirers for op in UPPER_BOUNDS)
    return all(r.specifier.contains(version, prereleases=True) for r in requirers)


def remove(target: Path, info: Path) -> None:
    for line in (info / "RECORD").read_text().splitlines():
        path = target / line.split(",", 1)[0]
        if path.is_file() or path.is_symlink():
            path.unlink()
    shutil.rmtree(info, ignore_errors=True)


def prune(target: Path) -> tuple[list[str], list[str]]:
    dists = installed(target)
    image = image_packages()
    # Every requirement of every installed package counts (a superset of the needed ones'): conservative.
    requirers = [r for _, meta in dists.values() for r in meta.requires_dist or [] if applies(r)]
    from_image = {
        name
        for name in dists
        if name != ROOT_PACKAGE and image_has(name, [r for r in requirers if canonicalize_name(r.name) == name], image)
    }
    keep = needed(dists, from_image)
    unused, on_image = [], []
    for name, (info, _) in sorted(dists.items()):
        if name not in keep:
            unused.append(name)
        elif name in from_image:
            on_image.append(name)
        else:
            continue
        remove(target, info)
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts name this machine's python: `-m aiperf`
    shutil.rmtree(target / "share", ignore_errors=True)  # data files: Jupyter extensions, man pages
    for folder in sorted((p for p in target.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if folder.name == "__pycache__" or not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)  # left empty (or byte code only) by the removals
    return unused, on_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="the --target folder of `pip install aiperf`")
    args = parser.parse_args()
    unused, on_image = prune(args.dir)
    print(f"left out, not imported by aiperf profile: {' '.join(unused)}", file=sys.stderr)
    print(f"left out, the image has them: {' '.join(on_image)}", file=sys.stderr)


if __name__ == "__main__":
    main()
