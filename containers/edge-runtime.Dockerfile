# edgefleet edge runtime, CPU image (x86-64 and arm64). Build from the repository root:
#   docker build -f containers/edge-runtime.Dockerfile -t edgefleet/edge-runtime .
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /opt/edgefleet
COPY constraints.txt ./
# Only the contract (with its processing extra) and the runtime distribution: no SQLAlchemy, Alembic, typer, rich.
COPY protos ./protos
COPY edge-runtime ./edge-runtime
RUN pip install -c constraints.txt "./protos[processing]" ./edge-runtime && useradd --system --home /data edgefleet \
    && mkdir -p /data && chown edgefleet /data
USER edgefleet
VOLUME /data
EXPOSE 8551
# The runtime serves grpc.health.v1 locally: SERVING once a committed bundle runs.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s \
  CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
c=grpc.insecure_channel('127.0.0.1:8551'); \
sys.exit(0 if g.HealthStub(c).Check(h.HealthCheckRequest(),timeout=3).status==1 else 1)"
ENTRYPOINT ["edge-runtime", "run", "--data-dir", "/data", "--health-listen", "127.0.0.1:8551"]
CMD ["--controller", "controller:7443", "--source", "synthetic:15"]
