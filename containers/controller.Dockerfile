# edgefleet controller image. Build from the repository root:
#   docker build -f containers/controller.Dockerfile -t edgefleet/controller .
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /opt/edgefleet
COPY constraints.txt ./
# Only the contract (without its processing extra: no OpenCV) and the controller distribution: no onnxruntime.
COPY protos ./protos
COPY controller ./controller
RUN pip install -c constraints.txt ./protos "./controller[postgres]" && useradd --system --home /var/lib/edgefleet edgefleet \
    && mkdir -p /var/lib/edgefleet && chown edgefleet /var/lib/edgefleet
USER edgefleet
VOLUME /var/lib/edgefleet
EXPOSE 7443 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s \
  CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
c=grpc.insecure_channel('127.0.0.1:7443'); \
sys.exit(0 if g.HealthStub(c).Check(h.HealthCheckRequest(),timeout=3).status==1 else 1)"
ENTRYPOINT ["edgefleet-controller", "serve", "--data-dir", "/var/lib/edgefleet", "--listen", "0.0.0.0:7443", \
            "--metrics-listen", "0.0.0.0:9464"]
