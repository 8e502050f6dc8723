# CPU image by default; CUDA image with:  docker build --build-arg TORCH_VARIANT=cu128 --build-arg FAISS_EXTRA=gpu .
FROM python:3.11-slim AS runtime

ARG TORCH_VARIANT=cpu
ARG FAISS_EXTRA=cpu
ARG TORCH_VERSION=2.11.0
ARG TORCHVISION_VERSION=0.26.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REID_DATA_DIR=/data \
    REID_AUTO_MIGRATE=false

RUN groupadd --system --gid 10001 reid \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin reid

WORKDIR /app
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY models ./models
COPY migrations ./migrations
# The project itself is the local package; its dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[${FAISS_EXTRA}]" \
    && mkdir -p /data \
    && chown -R 10001:10001 /data

USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
CMD ["reid-gallery", "serve", "--host", "0.0.0.0", "--port", "8000"]
