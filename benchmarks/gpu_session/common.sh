# Sourced by the call scripts: the Python path, the data folder, and the dry-run switches.
# DRY=1 runs the same steps on a CPU with tiny settings, to check the scripts before a GPU is spent.
set -u
export PYTHONUNBUFFERED=1
REPO=$(pwd)
if ! python3 -c "import nibabel, pydantic" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl
fi
export PYTHONPATH=/tmp/site:$REPO/project
DATA=${DATA:-/tmp/data}
mkdir -p "$DATA"
if [ "${DRY:-0}" = 1 ]; then
    DRY_RUN=--dry-run-cpu; CROP=--crop=32,32,32; DEVICE=cpu; PRECISION=fp32; LONG=3
else
    DRY_RUN=; CROP=--crop=; DEVICE=cuda; PRECISION=bf16; LONG=1000
fi
unpack() {  # unpack .gpu/$1.tar.xz into $DATA once
    if [ -f ".gpu/$1.tar.xz" ] && [ ! -f "$DATA/.$1" ]; then
        tar -xJf ".gpu/$1.tar.xz" -C "$DATA" && touch "$DATA/.$1"
    fi
}
