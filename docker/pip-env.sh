# Sourced by the Dockerfile's pip steps: turns the build arguments into pip settings.
#   WHEELHOUSE       a folder of wheels mounted into the build (podman build -v HOST:/wheels:ro);
#                    pip then installs from it only, with no index (the offline way, README)
#   TORCH_INDEX_URL  an extra index for torch, e.g. PyTorch's CPU wheel index
#   secret "pipca"   a CA bundle for pip (--secret id=pipca,src=FILE), used only during the build
export PIP_CONSTRAINT=/opt/cwdm-build/constraints.txt
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
if [ -n "${WHEELHOUSE:-}" ]; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE"
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"
fi
if [ -s /run/secrets/pipca ]; then
    export PIP_CERT=/run/secrets/pipca
fi
