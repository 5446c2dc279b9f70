# One image for every auditq process: api, worker and migrate (see compose.yaml).
FROM python:3.11-slim

ARG UV_VERSION=0.13.9
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project

COPY README.md alembic.ini ./
COPY migrations ./migrations
COPY shared ./shared
COPY api ./api
COPY worker ./worker
COPY cli ./cli
RUN uv sync --frozen --no-dev

RUN useradd --system --uid 10001 --no-create-home auditq
USER auditq

EXPOSE 8000
CMD ["python", "-m", "api"]
