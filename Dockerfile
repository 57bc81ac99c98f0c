# humanaes scoring service (CPU). Build:  docker build -t humanaes-serve .
# Run:    docker run --rm -p 8000:8000 --stop-timeout 40 humanaes-serve
# GPU:    build FROM an image with CUDA PyTorch instead of the CPU wheel below, run with --gpus all
#         and pass `--device cuda` (one model per container; run one container per GPU).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2

WORKDIR /opt/humanaes
# CPU-only PyTorch first (the default wheel pulls CUDA libraries), then the package with its extra.
RUN pip install torch --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY humanaes ./humanaes
RUN pip install ".[serve]"

RUN useradd --system --no-create-home humanaes
USER humanaes

EXPOSE 8000
# uvicorn drains on SIGTERM: requests in progress finish (give --stop-timeout >= --timeout-s + 5)
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
# API keys: pass HUMANAES_API_KEYS in the environment, or mount a file and add --api-keys-file.
CMD ["humanaes", "serve", "--host", "0.0.0.0", "--port", "8000", "--threads", "2"]
