#!/usr/bin/env bash
# Download (here, where pip reaches PyPI) the wheels the GPU machine lacks for the scripts in
# bench/gpu/, into .whl/ (git-ignored through .git/info/exclude). The machine's image has torch,
# accelerate, onnx, onnxruntime (CPU build), safetensors, huggingface-hub, numpy, Pillow,
# PyYAML, tqdm and matplotlib, but not diffusers, webdataset, pydantic or simplejpeg. Versions follow this
# checkout's .venv; the image's Python is 3.12. See bench/gpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
EXCLUDE="$(git rev-parse --git-path info/exclude)"
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo /.whl/ >> "$EXCLUDE"
PY="${PYTHON:-.venv/bin/python}"
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl
for pkg in diffusers importlib_metadata webdataset braceexpand pydantic pydantic_core \
           annotated-types typing-inspection typing_extensions simplejpeg; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$pkg==$(version "$pkg")"
done
du -sh .whl
