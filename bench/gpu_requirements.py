"""What the GPU machine needs beyond its image, derived from pyproject.toml (never hand-listed).

  python bench/gpu_requirements.py requirements      # print the requirements to resolve for the GPU machine
  python bench/gpu_requirements.py prune DIR         # after `pip install --target DIR`: drop what the image has

The project's `[project] dependencies` plus its `engine` extra are what `llmserve serve` and the Triton python
backend import. The image's own packages (bench/gpu_image.txt) are left out, unless a requirement of ours rules
out the version read there (its numpy 2 breaks the python backend stub; its transformers is older than ours).
torch is never carried: the image's CUDA build is the point of the machine; nvidia-pytriton travels as the
trimmed server that bench/gpu_bundle.sh packs (its 55 MB wheel would not fit).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.metadata import Metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# The image's CUDA torch; the Triton server travels trimmed; the CPU engine (OpenVINO, its export's nncf and gguf)
# is never used on a GPU machine and would push the bundle past one call's 64 MiB.
NEVER = {"torch", "nvidia-pytriton", "openvino", "openvino-genai", "openvino-tokenizers", "nncf", "gguf"}
EXTRAS = ("engine",)  # the optional dependencies the GPU side needs (bench's extra is all on the image)
# Markers are evaluated for the GPU machine's interpreter, not this one.
TARGET_ENV = {
    **default_environment(),
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "sys_platform": "linux",
    "platform_machine": "x86_64",
}


def image_packages(path: Path = ROOT / "bench" / "gpu_image.txt") -> dict[str, Version | None]:
    """Name -> version read on the image (None where only the name was read)."""
    found: dict[str, Version | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonicalize_name(name)] = Version(version) if version else None
    return found


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project.get("optional-dependencies", {}).get(extra, [])
    return [Requirement(line) for line in lines]


def image_satisfies(req: Requirement, image: dict[str, Version | None]) -> bool:
    name = canonicalize_name(req.name)
    if name not in image:
        return False
    version = image[name]  # a name without a version read: trust the image (checked by `pip check` there)
    return version is None or req.specifier.contains(version, prereleases=True)


def requirements() -> list[str]:
    image = image_packages()
    wanted = []
    for req in project_requirements():
        if req.marker and not req.marker.evaluate(TARGET_ENV):
            continue
        if canonicalize_name(req.name) in NEVER or image_satisfies(req, image):
            continue
        wanted.append(str(req))
    return wanted


def installed(target: Path) -> dict[str, tuple[Path, Metadata]]:
    dists = {}
    for info in target.glob("*.dist-info"):
        meta = Metadata.from_email((info / "METADATA").read_text(encoding="utf-8"), validate=False)
        dists[canonicalize_name(meta.name)] = (info, meta)
    return dists


def prune(target: Path) -> list[str]:
    """Remove from TARGET every distribution the image already has in a version all requirers accept."""
    image = image_packages()
    dists = installed(target)
    reqs = [r for r in project_requirements() if not r.marker or r.marker.evaluate(TARGET_ENV)]
    for _, meta in dists.values():
        for req in meta.requires_dist or []:
            # Only the extras actually installed matter; an `extra == ...` marker is skipped.
            if not req.marker or ("extra" not in str(req.marker) and req.marker.evaluate(TARGET_ENV)):
                reqs.append(req)
    removed = []
    for name, (info, _) in sorted(dists.items()):
        if name not in image:
            continue
        on_us = [r for r in reqs if canonicalize_name(r.name) == name]
        if not all(image_satisfies(r, image) for r in on_us):
            continue  # e.g. numpy<2 against the image's numpy 2: ours must travel
        for line in (info / "RECORD").read_text().splitlines():
            path = target / line.split(",", 1)[0]
            if path.is_file() or path.is_symlink():
                path.unlink()
        shutil.rmtree(info, ignore_errors=True)
        removed.append(name)
    # Folders left empty (or holding only byte code) by the removals.
    for folder in sorted((p for p in target.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if folder.name == "__pycache__" or not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("requirements", help="print the requirements to resolve, one a line")
    pruning = sub.add_parser("prune", help="drop from DIR what the image already has")
    pruning.add_argument("dir", type=Path)
    args = parser.parse_args()
    if args.command == "requirements":
        print("\n".join(requirements()))
    else:
        removed = prune(args.dir)
        print(f"left out (the image has them): {' '.join(removed)}", file=sys.stderr)


if __name__ == "__main__":
    main()
