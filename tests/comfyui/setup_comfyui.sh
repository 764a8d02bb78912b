#!/usr/bin/env bash
# Set up a real ComfyUI for the Hallo pack's server tests, outside the repository, on a CPU-only machine.
#
#   tests/comfyui/setup_comfyui.sh COMFYUI_SRC [COMFYUI_DIR] [VENV_DIR]
#
#   COMFYUI_SRC  a ComfyUI git repository (bare or not; HEAD or $COMFYUI_REV is exported) or a plain ComfyUI checkout
#   COMFYUI_DIR  where ComfyUI ends up (default: COMFYUI_SRC itself when it is a plain checkout, else ./ComfyUI)
#   VENV_DIR     the Python environment (default: comfy-venv beside COMFYUI_DIR); an existing one is reused
#
# Environment: PYTHON (interpreter for a new venv, default python3), TORCH_SPEC (torch for a NEW venv only, default
# torch==2.13.0, which the local pip find-links resolve to the +cpu wheel), SKIP_CHROMIUM=1 (do not apt-get chromium).
#
# What it does, and why (details: docs/comfyui_testing.md):
#   1. exports ComfyUI; blobs missing from an incomplete mirror are left out with a warning;
#   2. creates/reuses the venv; the torch already in it is NEVER replaced: every pip call runs with a constraints
#      file pinning the installed torch, torch/torchvision/torchaudio are dropped from ComfyUI's requirements and
#      spandrel is installed --no-deps (it would pull torchvision, which pulls a CUDA torch);
#   3. installs `requests` (server.py imports it; not in ComfyUI's requirements), our pack's requirements.txt and
#      onnxruntime (CPU);
#   4. where the real torchvision / torchaudio cannot be imported (PyPI only has CUDA builds, which cannot load
#      against torch+cpu), writes small import shims into VENV_DIR/comfy-shims and puts that folder on the venv's
#      path with a .pth file (appended after site-packages, so a real, working install always wins);
#   5. installs Debian's chromium for the UI tests when it is missing (root + apt-get only).
# It needs PyPI (or a mirror) and a ComfyUI checkout; it never contacts GitHub.
set -euo pipefail

die() { echo "setup_comfyui: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: $0 COMFYUI_SRC [COMFYUI_DIR] [VENV_DIR]"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PACK_DIR="$(cd "$HERE/../.." && pwd)"
SRC="$(cd "$1" && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
t0=$(date +%s)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# ---- 1. ComfyUI ------------------------------------------------------------------------------------------------
if [ -f "$SRC/main.py" ] && [ -f "$SRC/comfy/cli_args.py" ]; then
    COMFY="$(mkdir -p "${2:-$SRC}" && cd "${2:-$SRC}" && pwd)"
    if [ "$COMFY" != "$SRC" ]; then
        echo "== copying ComfyUI $SRC -> $COMFY"
        cp -a "$SRC/." "$COMFY/"
    fi
    COMMIT="$(git -C "$SRC" rev-parse HEAD 2>/dev/null || echo unknown)"
elif git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
    REV="${COMFYUI_REV:-HEAD}"
    COMMIT="$(git -C "$SRC" rev-parse "$REV^{commit}")"
    COMFY="${2:-$PWD/ComfyUI}"
    if [ -f "$COMFY/main.py" ]; then
        echo "== $COMFY already holds ComfyUI (commit $(cat "$COMFY/COMFYUI_COMMIT" 2>/dev/null || echo '?')); not re-exported"
    else
        echo "== exporting ComfyUI $COMMIT -> $COMFY"
        mkdir -p "$COMFY"
        excludes=()
        while read -r _mode _type hash path; do
            if ! git -C "$SRC" cat-file -e "$hash" 2>/dev/null; then
                echo "   WARNING: blob missing from this repository copy, left out: $path"
                excludes+=(":(exclude)$path")
            fi
        done < <(git -C "$SRC" ls-tree -r "$COMMIT" | awk '$2 == "blob"')
        # git still names the excluded missing blobs on stderr; show everything else
        git -C "$SRC" archive "$COMMIT" -- . "${excludes[@]}" 2> "$WORK/archive.err" | tar -x -C "$COMFY"
        grep -v -E "invalid object|cannot read" "$WORK/archive.err" >&2 || true
        echo "$COMMIT" > "$COMFY/COMFYUI_COMMIT"
    fi
    COMFY="$(cd "$COMFY" && pwd)"
else
    die "$SRC is neither a ComfyUI checkout (main.py, comfy/) nor a git repository"
fi
[ -f "$COMFY/COMFYUI_COMMIT" ] || echo "$COMMIT" > "$COMFY/COMFYUI_COMMIT"

# ---- 2. venv and torch -----------------------------------------------------------------------------------------
VENV="${3:-$(dirname "$COMFY")/comfy-venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating venv $VENV with $TORCH_SPEC"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
fi
VENV="$(cd "$VENV" && pwd)"
PY="$VENV/bin/python"
TORCH_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')" \
    || die "no torch in $VENV: install the torch you want there first (or remove $VENV to get $TORCH_SPEC)"
echo "== torch $TORCH_VERSION (kept)"

echo "torch==$TORCH_VERSION" > "$WORK/constraints.txt"
# ComfyUI's requirements without the torch family (we keep the venv's torch; torchvision/torchaudio see step 4)
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*($|[=<>~!;#])' "$COMFY/requirements.txt" | grep -v -E '^\s*spandrel' \
    > "$WORK/comfy-requirements.txt"
pipi() { "$PY" -m pip install -q -c "$WORK/constraints.txt" "$@"; }

# ---- 3. ComfyUI's and our requirements -------------------------------------------------------------------------
echo "== installing ComfyUI requirements (+ requests, spandrel --no-deps)"
pipi -r "$WORK/comfy-requirements.txt" requests
pipi --no-deps spandrel
echo "== installing the pack's requirements ($PACK_DIR/requirements.txt) + onnxruntime"
ORT=onnxruntime
"$PY" -c 'import onnxruntime' 2>/dev/null && ORT=""   # keep an existing onnxruntime(-gpu): never install both
pipi -r "$PACK_DIR/requirements.txt" $ORT
[ "$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')" = "$TORCH_VERSION" ] \
    || die "torch changed - this must not happen"

# ---- 4. import shims for torchvision / torchaudio that cannot load ----------------------------------------------
SHIMS="$VENV/comfy-shims"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -rf "$SHIMS" "$SITE/hallo-comfy-shims.pth"
need_shim() { ! "$PY" -c "import $1" >/dev/null 2>&1; }
write_stub_support() {  # $1 = package dir; module-level __getattr__ that hands out call-time errors
    cat > "$1/_unavailable.py" <<'EOF'
"""Written by the Hallo pack's tests/comfyui/setup_comfyui.sh: the real package cannot load against this torch
(PyPI ships CUDA builds only). Names import fine; calling one raises, naming the missing function."""


class Unavailable:
    def __init__(self, name):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.name} is not available: import shim of a CPU-torch ComfyUI test setup")

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Unavailable(f"{self.name}.{attr}")


def module_getattr(module_name):
    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Unavailable(f"{module_name}.{attr}")
    return __getattr__
EOF
}
stub_module() {  # $1 = file, $2 = dotted name, $3 = relative import prefix of _unavailable, $4 = real content
    # __getattr__ comes last: while it exists, `from . import submodule` would bind a stub instead of importing
    cat > "$1" <<EOF
${4:-}

from ${3}_unavailable import module_getattr  # noqa: E402
__getattr__ = module_getattr("$2")
EOF
}
mkdir -p "$SHIMS"
if need_shim torchvision; then
    echo "== torchvision does not import: writing shim"
    T="$SHIMS/torchvision"; mkdir -p "$T/transforms/v2" "$T/models" "$T/io"
    write_stub_support "$T"
    interp='import enum


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"'
    stub_module "$T/__init__.py" torchvision . '__version__ = "0.0.0+shim"
from . import transforms, models, io'
    stub_module "$T/transforms/__init__.py" torchvision.transforms .. "$interp
from . import functional, v2"
    stub_module "$T/transforms/functional.py" torchvision.transforms.functional .. \
        'from . import InterpolationMode'
    stub_module "$T/transforms/v2/__init__.py" torchvision.transforms.v2 ... 'from . import functional'
    stub_module "$T/transforms/v2/functional.py" torchvision.transforms.v2.functional ...
    stub_module "$T/models/__init__.py" torchvision.models ..
    stub_module "$T/io/__init__.py" torchvision.io ..
fi
if need_shim torchaudio; then
    echo "== torchaudio does not import: writing shim (functional.resample via scipy)"
    A="$SHIMS/torchaudio"; mkdir -p "$A/functional"
    write_stub_support "$A"
    stub_module "$A/__init__.py" torchaudio . '__version__ = "0.0.0+shim"
from . import functional'
    stub_module "$A/functional/__init__.py" torchaudio.functional .. '

def resample(waveform, orig_freq, new_freq, *args, **kwargs):
    """Band-limited resampling along the last axis (scipy polyphase; ComfyUI audio nodes call only this)."""
    import math
    import torch
    from scipy.signal import resample_poly
    orig_freq, new_freq = int(orig_freq), int(new_freq)
    if orig_freq == new_freq:
        return waveform
    g = math.gcd(orig_freq, new_freq)
    out = resample_poly(waveform.detach().cpu().double().numpy(), new_freq // g, orig_freq // g, axis=-1)
    return torch.from_numpy(out).to(dtype=waveform.dtype, device=waveform.device)'
fi
if [ -n "$(ls -A "$SHIMS")" ]; then
    echo "$SHIMS" > "$SITE/hallo-comfy-shims.pth"
else
    rmdir "$SHIMS"
fi

# ---- 5. chromium for the browser-UI tests ----------------------------------------------------------------------
if [ "${SKIP_CHROMIUM:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing Debian's chromium (UI tests)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
    else
        echo "== NOTE: no chromium; UI tests will be skipped (install: sudo apt-get install chromium)"
    fi
fi

# ---- check -----------------------------------------------------------------------------------------------------
"$PY" - <<'EOF'
import importlib.metadata as m
import torch, torchvision, torchaudio, requests, av, diffusers, transformers, insightface, onnxruntime
print(f"== ok: torch {torch.__version__}, torchvision {torchvision.__version__}, torchaudio {torchaudio.__version__}, "
      f"av {av.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
      f"frontend {m.version('comfyui-frontend-package')}")
EOF
echo "== ComfyUI import test (--quick-test-for-ci, no custom nodes)"
mkdir -p "$WORK/qt/custom_nodes"
(cd "$COMFY" && "$PY" main.py --cpu --quick-test-for-ci --base-directory "$WORK/qt" \
    --database-url "sqlite:///$WORK/qt/comfyui.db" > "$WORK/qt.log" 2>&1) \
    || { tail -30 "$WORK/qt.log"; die "ComfyUI failed its import test"; }
if grep -E "IMPORT FAILED|Cannot import" "$WORK/qt.log"; then die "some core node modules failed to import (above)"; fi
echo "== done in $(( $(date +%s) - t0 )) s"
echo "export COMFYUI_PATH=$COMFY"
echo "export COMFYUI_PYTHON=$PY"
