# syntax=docker/dockerfile:1.7
# One image for every Kinfer function. Each Knative Service picks its function
# with FUNCTION_TARGET / FUNCTION_SOURCE (e.g. functions/infer/main.py, relative
# to /app); `kinfer serve` runs uvicorn on the functions-framework async app on $PORT.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer, exactly as locked (versions and hashes
# of requirements.lock): rebuilt only when the lock changes, and the same bytes
# on every build.
COPY requirements.lock ./
RUN pip install --no-deps --require-hashes -r requirements.lock
# Then the project itself, without touching the dependency layer.
COPY pyproject.toml ./
COPY shared ./shared
COPY functions ./functions
RUN touch README.md \
    && pip install --no-deps . \
    && pip check \
    && python -m compileall -q /opt/venv/lib

FROM python:3.11.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="kinfer" \
      org.opencontainers.image.description="Kinfer functions (functions-framework) for Knative" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 kinfer \
    && useradd --system --uid 10001 --gid kinfer --home-dir /app --shell /usr/sbin/nologin kinfer
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# FUNCTION_SOURCE paths (functions/<name>/main.py) resolve against /app.
COPY --chown=root:root functions ./functions
USER 10001:10001
EXPOSE 8080
# Knative probes /livez and /health itself; this serves `docker run` and other
# runtimes: liveness, which depends on no database or cache.
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('PORT', '8080'), timeout=2)"]
ENTRYPOINT ["kinfer"]
CMD ["serve"]
