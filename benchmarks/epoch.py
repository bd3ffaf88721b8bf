"""Epoch close: time, peak memory and gas to settle 1k, 10k and 100k receipts in one epoch.

    python -m benchmarks.epoch [--quick]

Each size runs in its own process: a migrated SQLite file, a fresh deployment on the embedded
chain (eth-tester), 10 buyers with escrow deposited on-chain and credited by the watcher,
10 providers registered on-chain, and N receipt rows spread over the buyer/provider pairs
(`benchmarks._data.fill_bulk`). Timed first: the receipt-check pass over the N receipts
(`market.settlement.tasks.check_receipts`, which the worker runs every 30 s, so that in
service only the last half minute's receipts are left for the close). Then timed:
`market.settlement.tasks.close_epoch`, the real task (check what is left unchecked; open the
epoch: assign leaf indexes, aggregate debits and credits, build the Merkle tree; decide
rewards; send `settleEpoch`; record the settlement in the ledger). Peak memory is the
rise of the process's resident high-water mark (VmHWM, reset through /proc/self/clear_refs
just before) over its resident size before the close. Gas is the settlement transaction's
`gasUsed`. Before all this, a first epoch of 100 receipts in which every buyer and provider
takes part is settled: its transaction creates their storage slots (escrow rewritten,
earnings created), which a running market's later epochs only rewrite, so the timed epoch's
gas is what an epoch costs in service; the first epoch's gas is printed beside it. Baseline
beside the times: building `protocol.merkle.MerkleTree` alone over N hashes.
"""

from __future__ import annotations

import argparse
import gc
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._servers import REPO

TARGET_100K_S = 10.0
TARGET_GAS_10K = 10.0
WARM_UP = 100
"""Receipts of the first epoch, settled before the timed one: ten per buyer and provider."""


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(count: int) -> dict[str, Any]:
    """Sets up one epoch of `count` receipts and closes it; the figures."""
    from eth_account.signers.local import LocalAccount

    from benchmarks._data import fill_bulk
    from market.chain.service import MarketChain
    from market.config import Settings
    from market.db import create_engine, make_session_factory, migrate, session_scope
    from market.settlement.models import Epoch
    from market.settlement.tasks import TaskContext, check_receipts, close_epoch, watch_deposits
    from protocol.chain.connection import EMBEDDED, connect, fund_from_dev_account, new_account
    from protocol.chain.deploy import deploy
    from protocol.chain.settlement import SettlementClient
    from protocol.chain.transactor import Transactor
    from protocol.merkle import MerkleTree
    from tests.support.chain import TEST_DEPLOY_PARAMS

    params = TEST_DEPLOY_PARAMS
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        url = f"sqlite:///{tmp}/market.sqlite3"
        migrate(url)
        engine = create_engine(url)
        sessions = make_session_factory(engine)
        w3 = connect(EMBEDDED)

        def account() -> Transactor:
            acct: LocalAccount = new_account()
            fund_from_dev_account(w3, acct.address, 10**20)
            return Transactor(w3, acct)

        operator = account()
        client = SettlementClient(w3, deploy(operator, params))
        chain = MarketChain(client, operator)
        ctx = TaskContext(
            Settings(database_url=url, var_dir=Path(tmp), confirmations=0), sessions, chain
        )
        buyers = []
        for _ in range(10):
            buyer = account()
            client.faucet(buyer, buyer.address, 5_000 * 10**6)
            client.deposit(buyer, 5_000 * 10**6)
            buyers.append(buyer.address)
        watch_deposits(ctx)
        providers = []
        for _ in range(10):
            provider = account()
            client.register_provider(provider, secrets.token_bytes(32))
            providers.append(provider.address)

        def settled_gas(number: int | None, receipts: int) -> int:
            with session_scope(sessions) as session:
                epoch = None if number is None else session.get(Epoch, number)
                if epoch is None or epoch.receipt_count != receipts:
                    raise RuntimeError(f"epoch {number} did not settle {receipts} receipts")
                tx_hash = epoch.tx_hash
            return int(w3.eth.get_transaction_receipt(tx_hash)["gasUsed"])  # type: ignore[arg-type]

        # A first epoch in which every buyer and provider takes part: its settlement creates
        # their storage slots, which every later epoch only rewrites.
        fill_bulk(sessions, WARM_UP, buyers, providers, chain.domain)
        check_receipts(ctx)
        first_gas = settled_gas(close_epoch(ctx), WARM_UP)

        fill_bulk(sessions, count, buyers, providers, chain.domain)
        start = time.perf_counter()
        checked = check_receipts(ctx)
        check_s = time.perf_counter() - start
        if checked != count:
            raise RuntimeError(f"the check pass checked {checked} of {count} receipts")

        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        rss_before = _status_kb("VmRSS")
        start = time.perf_counter()
        number = close_epoch(ctx)
        elapsed = time.perf_counter() - start
        peak = _status_kb("VmHWM") - rss_before
        gas = settled_gas(number, count)
        engine.dispose()
    hashes = [secrets.token_bytes(32) for _ in range(count)]
    start = time.perf_counter()
    MerkleTree(hashes)
    tree_s = time.perf_counter() - start
    return {
        "receipts": count,
        "check_s": check_s,
        "close_s": elapsed,
        "peak_mib": peak / 1024,
        "gas": gas,
        "first_gas": first_gas,
        "tree_s": tree_s,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs each size in a subprocess and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1k only (CI)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return []
    sizes = (1_000,) if args.quick else (1_000, 10_000, 100_000)
    rows = []
    for size in sizes:
        command = [sys.executable, "-m", "benchmarks.epoch", "--worker", str(size)]
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"epoch worker for {size} failed")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("\n== epoch: close_epoch on the embedded chain, 10 buyers x 10 providers ==")
    header = (
        f"{'receipts':>9}{'check s':>9}{'close s':>9}{'tree-only s':>12}{'peak MiB':>10}"
        f"{'gas':>11}{'gas/request':>13}{'first-epoch gas':>17}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['receipts']:>9}{row['check_s']:>9.2f}{row['close_s']:>9.2f}{row['tree_s']:>12.3f}"
            f"{row['peak_mib']:>10.1f}{row['gas']:>11}{row['gas'] / row['receipts']:>13.2f}"
            f"{row['first_gas']:>17}"
        )
    by = {row["receipts"]: row for row in rows}
    if 100_000 in by:
        t = by[100_000]["close_s"]
        ok = "MET" if t < TARGET_100K_S else "MISSED"
        print(f"target: 100k close < {TARGET_100K_S:g} s: {t:.2f} s  {ok}")
    if 10_000 in by:
        g = by[10_000]["gas"] / 10_000
        ok = "MET" if g <= TARGET_GAS_10K else "MISSED"
        print(f"target: gas per request at 10k <= {TARGET_GAS_10K:g}: {g:.2f}  {ok}")
    return rows


if __name__ == "__main__":
    main()
