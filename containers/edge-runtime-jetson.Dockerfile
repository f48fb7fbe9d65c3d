# edgefleet edge runtime for NVIDIA Jetson (JetPack 6, L4T r36): onnxruntime-gpu with the TensorRT and CUDA
# execution providers. TensorRT engines are built on the device into /data/trt-cache on first load.
#   docker build -f containers/edge-runtime-jetson.Dockerfile -t edgefleet/edge-runtime:jetson .
FROM nvcr.io/nvidia/l4t-jetpack:r36.2.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/edgefleet
COPY constraints.txt ./
# Only the contract (with its processing extra) and the runtime distribution: no SQLAlchemy, Alembic, typer, rich.
COPY protos ./protos
COPY edge-runtime ./edge-runtime
# Jetson's onnxruntime-gpu wheel comes from NVIDIA's Jetson AI Lab index; it replaces the CPU wheel.
RUN python3.11 -m venv /venv && /venv/bin/pip install -c constraints.txt "./protos[processing]" ./edge-runtime \
    && /venv/bin/pip uninstall -y onnxruntime \
    && /venv/bin/pip install --extra-index-url https://pypi.jetson-ai-lab.dev/jp6/cu122 onnxruntime-gpu
ENV PATH=/venv/bin:$PATH
VOLUME /data
ENTRYPOINT ["edge-runtime", "run", "--data-dir", "/data", "--health-listen", "127.0.0.1:8551"]
CMD ["--controller", "controller:7443", "--source", "video:/dev/video0"]
