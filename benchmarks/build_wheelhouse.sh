#!/usr/bin/env bash
# Build, here (with a package index), the offline kit that benchmarks/gpu.sh needs on a lent GPU
# machine that has no package index: Python 3.12 manylinux x86-64 wheels of what the project needs
# beyond that machine's image, plus copies of the reference data (../shared does not travel).
#
#   bash benchmarks/build_wheelhouse.sh            # -> .wheelhouse/ (git-ignored)
#   bash benchmarks/build_wheelhouse.sh DIR
#
# The image (see the device notes) already has Python 3.12, torch, numpy, scipy, safetensors,
# tqdm, einops, scikit-image, attrs, typing-extensions. It lacks MONAI (peer network, training
# loss), jsonschema and its helpers (manifest validation, imported by `import unetrpp`), slicerio
# and pynrrd (segmentation writer). SimpleITK is left out on purpose: its wheel is ~52 MB and the
# kit's pipeline check starts from the official network inputs (npz), so no image file is read.
#
# Checks before it finishes: every wheel's requirements are either in the wheelhouse or in the
# image's package list (IMAGE below), and the kit plus the project stays under the size that
# travels to the device (LIMIT_MB, the device allows 64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.wheelhouse}
SHARED=${UNETRPP_SHARED:-../shared}
LIMIT_MB=60
PYVER=3.12

# Versions: those the development environment runs (pyproject.toml ranges), pure-Python where possible.
WHEELS=(
  "monai==1.6.1"
  "jsonschema==4.26.0"
  "jsonschema-specifications==2025.9.1"
  "referencing==0.37.0"
  "rpds-py==2026.9.1"
  "slicerio==1.4.0"
  "pynrrd==1.1.3"
)
# Packages of the device image this kit relies on (from its package list; lower case, '-' for '_').
IMAGE="numpy torch scipy safetensors tqdm einops scikit-image attrs typing-extensions packaging
pyyaml filelock fsspec sympy networkx jinja2 triton setuptools requests"

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 \
         manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  PLATFORMS+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${WHEELS[@]}"

# Reference data the kit reads: parity vectors and the official pipeline cases' network inputs.
rm -rf "$DEST/shared"
mkdir -p "$DEST/shared/parity" "$DEST/shared/pipeline"
cp "$SHARED"/parity/*.json "$DEST/shared/parity/"
for case in "$SHARED"/pipeline/*/; do
  name=$(basename "$case")
  mkdir -p "$DEST/shared/pipeline/$name"
  cp "$case/case.json" "$case/official_preprocessed.npz" "$DEST/shared/pipeline/$name/"
done

# Every requirement (no extras, no environment markers that exclude Linux/3.12) is satisfied.
python3 - "$DEST" "$IMAGE" <<'EOF'
import re, sys, zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import Requirement

dest, image = Path(sys.argv[1]), set(sys.argv[2].split())
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "os_name": "posix", "extra": ""}
have = {norm(w.name.split("-")[0]) for w in dest.glob("*.whl")}
missing = []
for w in sorted(dest.glob("*.whl")):
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if norm(req.name) not in have and norm(req.name) not in image:
                missing.append(f"{w.name}: {req}")
if missing:
    sys.exit("error: requirements neither in the wheelhouse nor in the device image:\n  " + "\n  ".join(missing))
EOF

kit_mb=$(du -sm "$DEST" | cut -f1)
project_mb=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | awk '{print int($1 / 1048576) + 1}')
total=$((kit_mb + project_mb))
echo "wheelhouse $DEST: $(ls "$DEST"/*.whl | wc -l) wheels, ${kit_mb} MB; with the project ${total} MB (limit ${LIMIT_MB} MB)"
if [ "$total" -ge "$LIMIT_MB" ]; then
  echo "error: the kit and the project (${total} MB) exceed ${LIMIT_MB} MB" >&2
  exit 1
fi
