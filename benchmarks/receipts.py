"""Receipt intake: verified receipts per second on one core vs the raw Ed25519 verify rate.

    python -m benchmarks.receipts [--quick]

N real receipts are signed by a provider key for N market-signed tickets (64 output tokens
each, complete, unmeasured energy). The intake figure is `market.jobs.service.check_receipt`
as the request path calls it, with the digest of the ticket the market signed: parse the
JSON envelope, verify the signature and domain, match the ticket (its digest), compare the
usage and the output digest of the relayed token ids. The baseline is PyNaCl's
`VerifyKey.verify` over the same signing bytes and signatures, already decoded. Each is
timed in one thread (one core), in alternating rounds; the best round of each counts.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from nacl.signing import VerifyKey

from market.jobs.service import Usage, check_receipt
from protocol.keys import public_key_hex, signing_key_from_seed
from protocol.messages import (
    Domain,
    EnergyAttribution,
    JobTicket,
    Receipt,
    Signed,
    message_digest,
    new_job_id,
    output_digest,
    sign,
    signing_bytes,
)

TARGET_SHARE = 0.5
PROVIDER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
DOMAIN = Domain(chain_id=31337, settlement_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
TOKENS = 64


def make(count: int) -> list[tuple[str, JobTicket, str, Usage, list[int]]]:
    """`count` (receipt envelope JSON, ticket, its digest, observed usage, relayed token ids)."""
    market = signing_key_from_seed("0x" + "01" * 32)
    provider = signing_key_from_seed("0x" + "02" * 32)
    token_ids = [1000 + i for i in range(TOKENS)]
    digest = output_digest(token_ids)
    out = []
    now = int(time.time() * 1000)
    for i in range(count):
        ticket = JobTicket(
            job_id=new_job_id(),
            provider=PROVIDER,
            request_digest="0x" + f"{i:064x}",
            model="tiny-llama",
            max_tokens=TOKENS,
            issued_at=now,
            expires_at=now + 60_000,
            domain=DOMAIN,
        )
        sign(ticket, market)  # as the market does; the receipt names its digest
        digest_of_ticket = message_digest(ticket)
        receipt = Receipt(
            job_id=ticket.job_id,
            provider=PROVIDER,
            model="tiny-llama",
            model_digest="0x" + "ab" * 32,
            prompt_tokens=9 + i % 50,
            completion_tokens=TOKENS,
            output_digest=digest,
            first_token_at=now + 5,
            finished_at=now + 50,
            energy=EnergyAttribution(method="unmeasured"),
            attestation_seq=None,
            ticket_digest=digest_of_ticket,
            status="complete",
            interrupted_reason=None,
            domain=DOMAIN,
        )
        usage = Usage(receipt.prompt_tokens, TOKENS)
        envelope = sign(receipt, provider).model_dump_json()
        out.append((envelope, ticket, digest_of_ticket, usage, token_ids))
    return out


def rate(fn: Any, items: list[Any]) -> float:
    """Items/second of one pass of `fn` over `items`."""
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Prints the table; returns the rates."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer receipts (CI)")
    args = parser.parse_args(argv)
    count, rounds = (500, 5) if args.quick else (3_000, 7)
    receipts = make(count)
    public = public_key_hex(signing_key_from_seed("0x" + "02" * 32))
    verify_key = VerifyKey(bytes.fromhex(public.removeprefix("0x")))

    raw_items = []
    for envelope_json, *_ in receipts:
        env = Signed[Receipt].model_validate_json(envelope_json)
        raw_items.append(
            (signing_bytes(env.message), bytes.fromhex(env.signature.removeprefix("0x")))
        )

    def raw(item: tuple[bytes, bytes]) -> None:
        verify_key.verify(item[0], item[1])

    def intake(item: tuple[str, JobTicket, str, Usage, list[int]]) -> None:
        envelope_json, ticket, digest, usage, ids = item
        check_receipt(envelope_json, ticket, public, DOMAIN, usage, ids, ticket_digest=digest)

    # Rounds alternate between the two, so that both see the same moments of a shared,
    # noisy machine; the best round of each counts.
    raw_rate = intake_rate = 0.0
    for _ in range(rounds):
        raw_rate = max(raw_rate, rate(raw, raw_items))
        intake_rate = max(intake_rate, rate(intake, receipts))
    share = intake_rate / raw_rate
    print("\n== receipts: verified receipts per second, one core ==")
    print(f"{count} receipts, best of {rounds} rounds")
    print(f"{'path':<44}{'per s':>10}{'us each':>10}")
    print(f"{'PyNaCl VerifyKey.verify (baseline)':<44}{raw_rate:>10.0f}{1e6 / raw_rate:>10.1f}")
    print(
        f"{'market.jobs.service.check_receipt':<44}{intake_rate:>10.0f}{1e6 / intake_rate:>10.1f}"
    )
    verdict = "MET" if share >= TARGET_SHARE else "MISSED"
    print(f"intake / raw verify: {share * 100:.1f} %  (target >= 50 %)  {verdict}")
    return {"raw_per_s": raw_rate, "intake_per_s": intake_rate, "share": share}


if __name__ == "__main__":
    main()
