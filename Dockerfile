# The market (API, worker, beat), the contract deployer and the provider agent: one image, the
# command picks the role (see docker-compose.yml). vLLM runs in its own image beside the agent:
# vllm/vllm-openai on a GPU, Dockerfile.vllm-cpu on the CPU.
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
# testnet chores (keys, funds, roles), for the compose testnet
COPY scripts/testnet scripts/testnet
ENV PATH="/app/.venv/bin:$PATH" PYTHONPATH=/app PYTHONUNBUFFERED=1
