# The market and the contract deployer. The provider agent runs beside vLLM (see docker-compose.yml).
FROM python:3.11-slim
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY market market
COPY provider_agent provider_agent
COPY protocol protocol
COPY migrations migrations
COPY alembic.ini alembic.ini
RUN uv sync --frozen --no-dev --extra market --extra agent
ENV PATH="/app/.venv/bin:$PATH"
