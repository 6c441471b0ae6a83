# syntax=docker/dockerfile:1
# cwdm-brasyn: the BraSyn MLCube / MedPerf image (docs/IMAGE.md, "Building and testing the image").
#
#   docker build -t cwdm-brasyn:0.1.0 .
#
# BASE_IMAGE: PyTorch's official CUDA runtime image of the torch release the project is tested with
# (2.13.0). CUDA 12.6 rather than 13.x because 12.x runs on every driver >= 525 (minor-version
# compatibility), which covers older hospital and cluster GPUs; CUDA 13 needs a driver >= 580.
# Any other base with Python >= 3.10 works too (for example a plain Debian bookworm): where the base
# lacks torch, torch==TORCH_VERSION is installed (TORCH_INDEX_URL picks PyTorch's CPU or CUDA index).
#
# WEIGHTS: demo (default: weights/demo from the build context), published (downloaded at build time
# with `cwdm weights fetch`; needs the network during the build only) or none (weights come from the
# mounted additional_files/weights only). Nothing is downloaded at run time.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
ARG WEIGHTS=demo

# ---------------------------------------------------------------------------------------------------
# build: a virtual environment in /opt/cwdm/venv that sees the base's packages (its torch) and holds
# the project with pinned dependencies (docker/constraints.txt). pip, its caches and the sources stay
# in this stage.
FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
ARG WHEELHOUSE=""
COPY docker/constraints.txt docker/pip-env.sh /opt/cwdm-build/
RUN --mount=type=secret,id=pipca \
    set -eu; \
    python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "BASE_IMAGE needs Python >= 3.10, has " + sys.version)'; \
    . /opt/cwdm-build/pip-env.sh; \
    python3 -m venv --system-site-packages /opt/cwdm/venv; \
    if /opt/cwdm/venv/bin/python -c 'import torch' 2>/dev/null; then \
        /opt/cwdm/venv/bin/python -c 'import torch; print("torch==" + torch.__version__)' >> "$PIP_CONSTRAINT"; \
    else \
        echo "torch==${TORCH_VERSION}" >> "$PIP_CONSTRAINT"; \
        /opt/cwdm/venv/bin/python -m pip install "torch==${TORCH_VERSION}"; \
    fi; \
    tail -n 1 "$PIP_CONSTRAINT"

COPY pyproject.toml README.md /opt/cwdm-build/src/
COPY project/cwdm /opt/cwdm-build/src/project/cwdm
COPY project/mlcube.py /opt/cwdm/project/mlcube.py
RUN --mount=type=secret,id=pipca \
    set -eu; \
    . /opt/cwdm-build/pip-env.sh; \
    /opt/cwdm/venv/bin/python -m pip install /opt/cwdm-build/src; \
    mkdir -p /opt/cwdm/weights

# ---------------------------------------------------------------------------------------------------
# assembled: /opt/cwdm with the weights that WEIGHTS names at /opt/cwdm/weights/<WEIGHTS>. (One stage
# with a branch rather than one stage per choice: podman/buildah cannot select a stage by an ARG.)
FROM build AS assembled
ARG WEIGHTS
# WEIGHTS=published: a branch, tag or commit of the published repository (pin a commit).
ARG WEIGHTS_REVISION=""
# pip settings again (an ARG is seen only by the stage that declares it)
ARG WHEELHOUSE=""
COPY weights/demo /opt/cwdm-build/weights/demo
# The reference tumour segmenter of `cwdm evaluate --segmenter builtin`, whichever synthesis weights.
COPY weights/segmenter /opt/cwdm/weights/segmenter
RUN --mount=type=secret,id=pipca \
    set -eu; \
    case "$WEIGHTS" in \
    demo) \
        cp -r /opt/cwdm-build/weights/demo /opt/cwdm/weights/demo ;; \
    published) \
        . /opt/cwdm-build/pip-env.sh; \
        /opt/cwdm/venv/bin/python -m pip install --no-compile --target /opt/cwdm-build/hub huggingface_hub; \
        set -- /opt/cwdm/weights/published; \
        if [ -n "$WEIGHTS_REVISION" ]; then set -- "$@" --revision "$WEIGHTS_REVISION"; fi; \
        PYTHONPATH=/opt/cwdm-build/hub /opt/cwdm/venv/bin/cwdm weights fetch "$@" ;; \
    none) ;; \
    *) echo "WEIGHTS must be demo, published or none, not '$WEIGHTS'" >&2; exit 1 ;; \
    esac; \
    /opt/cwdm/venv/bin/python -m pip uninstall --yes --quiet pip; \
    chmod -R a+rX,go-w /opt/cwdm

# ---------------------------------------------------------------------------------------------------
# runtime: the base plus /opt/cwdm. It runs as whatever user the runner chooses (MedPerf:
# `-u <uid>:<gid>` of a user the image does not know, `--network none`); no USER is set so that a
# classic `mlcube run` can still write into the output folder that mlcube creates on the host.
# Every cache and HOME point into /tmp, which every user can write.
FROM ${BASE_IMAGE} AS runtime
ARG WEIGHTS
LABEL org.opencontainers.image.title="cwdm-brasyn" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="cWDM missing MRI sequence synthesis for BraTS BraSyn (MLCube / MedPerf)" \
      org.opencontainers.image.licenses="MIT"
COPY --from=assembled /opt/cwdm /opt/cwdm
ENV PATH=/opt/cwdm/venv/bin:${PATH} \
    CWDM_DEFAULT_WEIGHTS=/opt/cwdm/weights/${WEIGHTS} \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/torchinductor \
    CUDA_CACHE_PATH=/tmp/.cache/nv \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    HF_HOME=/tmp/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /tmp
ENTRYPOINT ["python3", "/opt/cwdm/project/mlcube.py"]
