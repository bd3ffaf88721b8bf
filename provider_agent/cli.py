"""`provider-agent`: what a GPU owner runs beside vLLM."""

from __future__ import annotations

import typer

app = typer.Typer(help="The provider agent: serve jobs beside vLLM, meter energy, sign receipts.")


@app.callback()
def main() -> None:
    """Provider agent commands."""
