"""`market demo`: the README's main job on the embedded default (see `market.demo.flow`)."""

from market.demo.flow import DemoError, DemoOptions, DemoOutcome, Progress, run_demo
from market.demo.report import charge_for, energy_rows, fee_for, tusd

__all__ = [
    "DemoError",
    "DemoOptions",
    "DemoOutcome",
    "Progress",
    "charge_for",
    "energy_rows",
    "fee_for",
    "run_demo",
    "tusd",
]
