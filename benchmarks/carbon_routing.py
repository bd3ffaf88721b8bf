"""Routing by carbon vs by price over the regional table (docs/energy-accounting.md).

Providers in every region of `energy_regions.csv` with a USD tariff and a grid intensity
serve the same model on the same GPU, at the J/token ML.ENERGY measured for it
(Llama-3.1-8B-Instruct, lm-arena-chat, one H100, max_num_seqs 64). Each prices output at its
energy floor plus the same margin:

    floor (base units / Mtok) = J/token x host overhead 1.4 x PUE 1.56 / 3.6e6 x tariff x 1e6
                                tokens x 1e6 base units (tUSD, 6 decimals), rounded up

N requests of a fixed output length are routed with `market.routing.service.choose`, once
sorted by price and once by carbon, and the totals compared.

    .venv/bin/python benchmarks/carbon_routing.py [--requests 10000] [--tokens 400]
"""

from __future__ import annotations

import argparse
import math
import random
from decimal import Decimal

from market.energy.data import mlenergy_configs, regions
from market.routing.schemas import ProviderPreferences
from market.routing.service import RouteRequest, choose
from market.routing.table import LiveOffer, RoutingTable

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
HOST, PUE = Decimal("1.4"), Decimal("1.56")
MARGIN = 2_000
"""Base units per million output tokens every provider adds to its floor (0.002 USD)."""


def reference_jpt() -> Decimal:
    """ML.ENERGY's J/token for the model on one H100 at max_num_seqs 64 (lm-arena-chat)."""
    for c in mlenergy_configs():
        same = c.model == MODEL and c.gpu_spec.startswith("H100") and c.max_num_seqs == 64
        if same and c.task == "lm-arena-chat" and c.num_gpus == 1:
            return Decimal(str(c.j_per_token))
    raise SystemExit("reference configuration not found")


def offers(
    jpt: Decimal, exclude: frozenset[str] = frozenset()
) -> list[tuple[LiveOffer, Decimal, Decimal]]:
    """(offer, energy cost USD per Mtok, gCO2 per Mtok) per region."""
    kwh_per_mtok = jpt * HOST * PUE / Decimal(3_600_000) * 1_000_000
    out = []
    for code, region in sorted(regions().items()):
        if (
            code in exclude
            or region.currency != "USD"
            or region.tariff is None
            or region.grid_intensity is None
        ):
            continue
        cost = kwh_per_mtok * region.tariff.value
        gco2 = kwh_per_mtok * region.grid_intensity.value
        floor = math.ceil(cost * 1_000_000)
        offer = LiveOffer(
            provider=f"provider-{code}",
            model=MODEL,
            region=code,
            price_in_per_mtok=0,
            price_out_per_mtok=floor + MARGIN,
            max_concurrency=64,
            job_url="",
            joules_per_token=float(jpt),
            gco2_per_mtok=float(gco2),
            energy_cost_per_mtok=float(cost * 1_000_000),
        )
        out.append((offer, cost, gco2))
    return out


def run(requests: int, tokens: int, exclude: frozenset[str] = frozenset()) -> None:
    jpt = reference_jpt()
    rows = offers(jpt, exclude)
    table = RoutingTable([o for o, _, _ in rows])
    figures = {o.provider: (cost, gco2, o.price_out_per_mtok) for o, cost, gco2 in rows}
    print(f"{MODEL} on H100, batch 64: {jpt} J/token; {len(rows)} regions; margin {MARGIN}")
    print(f"{'region':8} {'gCO2/Mtok':>10} {'energy USD/Mtok':>16} {'price base/Mtok':>16}")
    for o, cost, gco2 in sorted(rows, key=lambda r: r[0].price_out_per_mtok):
        print(f"{o.region:8} {gco2:>10.1f} {cost:>16.6f} {o.price_out_per_mtok:>16}")
    mtok = Decimal(tokens) / 1_000_000
    totals: dict[str, tuple[Decimal, Decimal, Decimal]] = {}
    for policy in ("price", "carbon"):
        rng = random.Random(7)  # noqa: S311 (simulation)
        request = RouteRequest(MODEL, ProviderPreferences(sort=policy), attempts=1)
        g = c = p = Decimal(0)
        for _ in range(requests):
            chosen = choose(table, request, rng)[0]
            cost, gco2, price = figures[chosen.provider]
            g += gco2 * mtok
            c += cost * mtok
            p += Decimal(price) * mtok / 1_000_000
        totals[policy] = (g, c, p)
    print(f"\n{requests} requests x {tokens} output tokens ({requests * tokens / 1e6:g} Mtok)")
    print(f"{'policy':8} {'total gCO2':>12} {'energy cost USD':>16} {'price paid USD':>15}")
    for policy, (g, c, p) in totals.items():
        print(f"{policy:8} {g:>12.1f} {c:>16.4f} {p:>15.4f}")
    (gp, _, pp), (gc, _, pc) = totals["price"], totals["carbon"]
    total_mtok = Decimal(requests * tokens) / 1_000_000
    print(
        f"\ncarbon saved by routing by carbon: {gp - gc:.1f} g ({(gp - gc) / gp * 100:.1f} %), "
        f"{(gp - gc) / total_mtok:.1f} g per Mtok"
    )
    print(
        f"price premium: {pc - pp:.4f} USD ({(pc - pp) / pp * 100:.1f} %), "
        f"{(pc - pp) / total_mtok:.6f} USD per Mtok"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--exclude", default="", help="comma-separated regions to leave out")
    args = parser.parse_args()
    run(args.requests, args.tokens, frozenset(r for r in args.exclude.split(",") if r))


if __name__ == "__main__":
    main()
