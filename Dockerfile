# syntax=docker/dockerfile:1
# One image for all four services; the argument picks the service:
#   docker build -t leadflow:dev .
#   docker run leadflow:dev assignment        # runs `leadflow service assignment`
# Each service reads its settings from LEADFLOW_<NAME>_* variables (see docs/OPERATIONS.md);
# in a container set LEADFLOW_<NAME>_HOST=0.0.0.0, as docker-compose.yml and deploy/k8s do.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv holding leadflow and its runtime dependencies (no dev extras) ------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/leadflow
ENV PATH=/opt/leadflow/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject's list, so that a code change reuses this layer;
# constraints.txt pins their own dependencies to what development and CI run.
COPY pyproject.toml README.md constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt

COPY leadflow ./leadflow
COPY services ./services
COPY shared ./shared
RUN pip install --no-deps . \
 && pip check

# --- runtime: the virtualenv only, run as an unprivileged user ------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="leadflow" \
      org.opencontainers.image.description="leadflow services: intake, assignment, nurture, analytics"

# Bytecode was compiled at install time; the root filesystem may be read-only (deploy/k8s).
ENV PATH=/opt/leadflow/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 leadflow \
 && useradd --system --uid 10001 --gid leadflow --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin leadflow

COPY --from=build /opt/leadflow /opt/leadflow

WORKDIR /app
# Numeric, so that Kubernetes can check runAsNonRoot against the image.
USER 10001:10001

EXPOSE 8001 8002 8003 8004

# No HEALTHCHECK here: the port depends on the service, and docker-compose.yml and the
# Kubernetes probes check /readyz and /healthz themselves.
ENTRYPOINT ["leadflow", "service"]
CMD ["intake"]
