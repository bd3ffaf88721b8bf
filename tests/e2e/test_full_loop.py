"""The whole loop on the native local testnet, across real processes and real HTTP.

A buyer deposits test dollars on anvil and the market credits them after the confirmations;
the buyer creates an API key with a signed request and uses the unmodified `openai` client
(streamed chat, plain completion); the market routes to the provider agent serving from a
real vLLM, verifies the signed receipts and charges them; the worker settles the epoch on
anvil; the provider withdraws exactly what it earned, the buyer's escrow falls by exactly
what was charged, and a receipt's Merkle proof verifies on-chain. Then, with a second
provider online, the serving provider's vLLM is killed mid-request: the buyer gets an answer
from the other one or a clean error, and pays only for verified tokens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import openai
import pytest
from celery import Celery
from eth_account import Account
from eth_account.signers.local import LocalAccount

from market.buyers.signin import BuyerAction, sign_request
from protocol.chain.connection import fund_from_dev_account
from protocol.chain.settlement import SettlementClient
from protocol.chain.transactor import Transactor
from protocol.keys import load_keystore
from protocol.messages import Domain, Receipt, message_digest, parse_signed, verify
from scripts.testnet import provision
from scripts.testnet.stack import PASSPHRASE, SERVED_MODEL, VENV_BIN, Provider, Stack
from tests.market.providers.factories import heartbeat

pytestmark = [pytest.mark.e2e, pytest.mark.anvil, pytest.mark.timeout(900)]

DEPOSIT = 25_000_000  # 25 tUSD in base units (6 decimals)
CLOSE_EPOCH = "market.settlement.close_epoch"
T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Polls `check` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = check()
        except (httpx.HTTPError, KeyError) as exc:
            result, last = None, exc
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(0.5)


@dataclass
class Buyer:
    """A buyer with an EVM account, escrow at the market and an API key."""

    account: LocalAccount
    domain: Domain
    market_url: str
    api_key: str = ""

    @property
    def address(self) -> str:
        return str(self.account.address)

    def signed(self, action: BuyerAction) -> dict[str, str]:
        return sign_request(self.account, action, self.domain)

    def statement_response(self) -> httpx.Response:
        headers = (
            {"Authorization": f"Bearer {self.api_key}"}
            if self.api_key
            else self.signed(BuyerAction.STATEMENT)
        )
        return httpx.get(
            f"{self.market_url}/buyers/{self.address}/statement", headers=headers, timeout=10
        )

    def credited(self) -> int:
        """What the market has credited of the buyer's deposits (0 before it knows the buyer)."""
        response = self.statement_response()
        if response.status_code == 404:
            return 0
        assert response.status_code == 200, response.text
        return int(response.json()["deposited"])

    def statement(self) -> dict[str, Any]:
        response = self.statement_response()
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def job(self, job_id: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.market_url}/jobs/{job_id}",
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.market_url}/v1", api_key=self.api_key, **kwargs)


@pytest.fixture(scope="module")
def chain(stack: Stack) -> SettlementClient:
    return provision.open_client(stack.rpc_url, stack.deployment_file)


@pytest.fixture(scope="module")
def buyer(stack: Stack, chain: SettlementClient) -> Buyer:
    """(1) and (2) up to the key: faucet, deposit, credited after the confirmations, API key."""
    market = httpx.get(f"{stack.market_url}/market", timeout=10).json()
    domain = Domain(chain_id=market["chain_id"], settlement_contract=market["settlement_contract"])
    assert domain.settlement_contract == chain.deployment.settlement
    buyer = Buyer(Account.create(), domain, stack.market_url)
    fund_from_dev_account(chain.w3, buyer.address, 10**19)
    sender = Transactor(chain.w3, buyer.account)
    chain.faucet(sender, buyer.address, DEPOSIT)
    receipt = chain.deposit(sender, DEPOSIT)
    assert chain.escrow(buyer.address) == DEPOSIT

    # credited only once buried under `confirmations` blocks (anvil mines one a second)
    deposit_block = int(receipt["blockNumber"])
    early = buyer.credited()
    if chain.w3.eth.block_number < deposit_block + market["confirmations"]:
        assert early == 0, "credited before the confirmations"
    started = time.monotonic()
    wait_until("the deposit to be credited", lambda: buyer.credited() == DEPOSIT, timeout=60)
    assert chain.w3.eth.block_number >= deposit_block + market["confirmations"]
    statement = buyer.statement()
    assert statement["deposited"] == DEPOSIT
    assert statement["available"] == DEPOSIT
    assert statement["held"] == 0
    print(f"deposit credited {time.monotonic() - started:.1f} s after it was mined")

    unsigned = httpx.post(f"{stack.market_url}/buyers/{buyer.address}/api-keys", timeout=10)
    assert unsigned.status_code in (401, 403), unsigned.text
    response = httpx.post(
        f"{stack.market_url}/buyers/{buyer.address}/api-keys",
        json={"name": "e2e"},
        headers=buyer.signed(BuyerAction.CREATE_API_KEY),
        timeout=10,
    )
    assert response.status_code == 201, response.text
    buyer.api_key = response.json()["secret"]
    assert buyer.api_key.startswith("sk-jm-")
    return buyer


def check_receipt(
    buyer: Buyer, chain: SettlementClient, job_id: str, usage: dict[str, Any]
) -> dict[str, Any]:
    """The job completed with a receipt the provider signed with its on-chain key, matching
    the usage the buyer was told; its charge at the offer's prices."""
    job = buyer.job(job_id)
    assert job["status"] == "completed", job
    receipt = job["receipt"]
    assert receipt is not None
    assert receipt["prompt_tokens"] == usage["prompt_tokens"]
    assert receipt["completion_tokens"] == usage["completion_tokens"]
    assert receipt["energy_method"] == "unmeasured"
    assert receipt["energy_mj"] is None
    assert receipt["charge"] == job["charge"] > 0
    assert 0 <= job["fee"] == receipt["fee"] < job["charge"]
    assert job["charge"] <= job["hold_amount"]
    cost = (
        usage["prompt_tokens"] * job["price_in_per_mtok"]
        + usage["completion_tokens"] * job["price_out_per_mtok"]
    )
    assert job["charge"] * 10**6 >= cost > (job["charge"] - 1) * 10**6  # ceil to the base unit
    bound_key = "0x" + chain.provider_key(job["provider_address"]).hex()
    envelope = parse_signed(json.dumps(receipt["envelope"]), Receipt)
    message = verify(envelope, bound_key, buyer.domain)
    assert message.job_id == job_id
    assert message_digest(message) == receipt["receipt_hash"]
    return job


def close_epoch(stack: Stack) -> dict[str, Any]:
    """Sends the close-epoch task to the Celery worker (through Redis) until an epoch settles."""
    app = Celery("e2e", broker=stack.redis_url, set_as_current=False)
    before = {e["number"] for e in httpx.get(f"{stack.market_url}/epochs", timeout=10).json()}

    def settled() -> dict[str, Any] | None:
        app.send_task(CLOSE_EPOCH)
        time.sleep(1.0)
        epochs = httpx.get(f"{stack.market_url}/epochs", timeout=10).json()
        fresh = [e for e in epochs if e["number"] not in before and e["status"] == "settled"]
        return fresh[0] if fresh else None

    return wait_until("the worker to settle an epoch", settled, timeout=120)


def test_full_loop(stack: Stack, chain: SettlementClient, buyer: Buyer) -> None:
    timings: dict[str, float] = {}
    client = buyer.openai()

    # (2) a streamed chat completion with the unmodified openai client
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model=SERVED_MODEL,
        messages=[{"role": "user", "content": "Say something about energy."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chat_job = raw.headers["x-job-id"]
    text, usage_chunk = "", None
    for chunk in raw.parse():
        for choice in chunk.choices:
            text += choice.delta.content or ""
        if chunk.usage is not None:
            usage_chunk = chunk.model_dump()
    timings["streamed chat"] = time.monotonic() - started
    assert text
    assert usage_chunk is not None
    chat_usage = usage_chunk["usage"]
    assert chat_usage["completion_tokens"] > 0
    assert usage_chunk["energy"]["method"] == "unmeasured"
    assert usage_chunk["energy"]["joules"] is None
    assert chat_usage["receipt"]["job_id"] == chat_job

    # ... and a plain (non-streamed) completion
    started = time.monotonic()
    raw_completion = client.completions.with_raw_response.create(
        model=SERVED_MODEL, prompt="The grid at night", max_tokens=16, temperature=0
    )
    completion = raw_completion.parse()
    timings["completion"] = time.monotonic() - started
    completion_job = raw_completion.headers["x-job-id"]
    assert completion.usage is not None
    completion_usage = completion.usage.model_dump()
    extra = completion.model_extra or {}
    assert extra["energy"]["method"] == "unmeasured"
    assert completion_usage["receipt"]["job_id"] == completion_job

    # (3) routed to a registered provider; receipts verified; the statement shows the charges
    jobs = [
        check_receipt(buyer, chain, chat_job, chat_usage),
        check_receipt(buyer, chain, completion_job, completion_usage),
    ]
    registered = {p.address: p for p in stack.providers if f"agent-{p.index}" in stack.services}
    assert {job["provider_address"] for job in jobs} <= set(registered)
    total = sum(job["charge"] for job in jobs)
    fees = sum(job["fee"] for job in jobs)
    statement = buyer.statement()
    assert statement["charged"] == total
    assert statement["available"] == DEPOSIT - total
    assert statement["held"] == 0
    charged_lines = {line["job_id"] for line in statement["lines"] if line["job_id"]}
    assert {chat_job, completion_job} <= charged_lines

    # (4) the epoch closes through the worker and its settlement lands on anvil
    earned = {a: chain.earnings(a) for a in registered}
    started = time.monotonic()
    epoch = close_epoch(stack)
    timings["epoch settled"] = time.monotonic() - started
    assert epoch["total_debit"] == total
    assert epoch["fee"] == fees
    assert epoch["total_credit"] == total - fees
    assert epoch["receipt_count"] == len(jobs)
    tx = chain.w3.eth.get_transaction_receipt(epoch["tx_hash"])
    assert tx["status"] == 1
    assert chain.last_settled_epoch() == epoch["number"]
    assert chain.escrow(buyer.address) == DEPOSIT - total  # the escrow fell by the charges

    # each provider withdraws exactly what it earned: its charges minus the fee
    withdrawn = 0
    for address, provider in registered.items():
        own = [job for job in jobs if job["provider_address"] == address]
        credit = sum(job["charge"] - job["fee"] for job in own)
        assert chain.earnings(address) - earned[address] == credit
        if not own:
            continue
        identity = load_keystore(provider.data_dir / "keystore.json", PASSPHRASE)
        assert identity.address == address
        payable = chain.earnings(address)
        wallet_before = chain.payment_balance(address)
        chain.withdraw_earnings(Transactor(chain.w3, identity.eth_account))
        assert chain.payment_balance(address) - wallet_before == payable
        assert chain.earnings(address) == 0
        withdrawn += payable - earned[address]
    assert withdrawn == total - fees

    # a receipt's Merkle proof verifies on-chain
    proof = httpx.get(f"{stack.market_url}/receipts/{chat_job}/proof", timeout=10).json()
    assert proof["epoch"] == epoch["number"]
    assert proof["root"] == "0x" + chain.epoch_root(epoch["number"]).hex()
    assert proof["receipt_hash"] == jobs[0]["receipt"]["receipt_hash"]
    siblings = [bytes.fromhex(h.removeprefix("0x")) for h in proof["proof"]]
    receipt_hash = bytes.fromhex(proof["receipt_hash"].removeprefix("0x"))
    assert chain.verify_receipt(epoch["number"], receipt_hash, siblings)
    assert not chain.verify_receipt(epoch["number"], bytes(32), siblings)
    print(f"timings: {json.dumps({k: round(v, 2) for k, v in timings.items()})}")


def _running_requests(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:num_requests_running")
    )


def _long_stream(stack: Stack, buyer: Buyer) -> contextlib.AbstractContextManager[httpx.Response]:
    """A streamed chat completion of 1,500 tokens (minutes on vLLM's CPU build), opened."""
    body = {
        "model": SERVED_MODEL,
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 1500,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {buyer.api_key}"}
    url = f"{stack.market_url}/v1/chat/completions"
    return httpx.stream("POST", url, json=body, headers=headers, timeout=60)


def test_buyer_leaves_mid_stream(stack: Stack, buyer: Buyer) -> None:
    """The buyer drops a long stream after a few tokens: the market cancels it at the agent,
    vLLM stops generating, and the buyer pays for the tokens made until then, to the unit."""
    before = buyer.statement()
    seen = 0
    with _long_stream(stack, buyer) as response:
        assert response.status_code == 200
        job_id = response.headers["x-job-id"]
        for line in response.iter_lines():
            seen += line.startswith('data: {"id"')
            if seen == 6:  # the role chunk and five tokens
                break
    left = time.monotonic()
    wait_until(
        "vLLM to stop generating",
        lambda: all(_running_requests(p.vllm_url) == 0 for p in stack.providers) or None,
        timeout=30,
    )
    stopped_s = time.monotonic() - left
    assert stopped_s < 5  # aborted: 1,500 tokens take several times longer on vLLM's CPU build
    job = wait_until("the job to end", lambda: (j := buyer.job(job_id))["status"] != "routed" and j)
    assert (job["status"], job["error"]) == ("completed", "interrupted (cancelled)")
    receipt = job["receipt"]
    assert (receipt["status"], receipt["interrupted_reason"]) == ("interrupted", "cancelled")
    assert 5 <= receipt["completion_tokens"] < 1500
    after = wait_until("the hold to end", lambda: (s := buyer.statement())["held"] == 0 and s)
    assert after["charged"] - before["charged"] == job["charge"] == receipt["charge"] > 0
    print(
        f"buyer left after 5 tokens: vLLM stopped {stopped_s:.2f} s later, charged for "
        f"{receipt['completion_tokens']} tokens ({job['charge']} base units)"
    )


def test_market_killed_mid_stream_releases_the_hold(stack: Stack, buyer: Buyer) -> None:
    """The market API is killed mid-stream (no cleanup runs) and started again: the job it
    left open is failed and its hold released once its heartbeat is older than
    `MARKET_ORPHANED_JOB_AFTER_S`, by the worker's beat task."""
    before = buyer.statement()
    with _long_stream(stack, buyer) as response:
        assert response.status_code == 200
        job_id = response.headers["x-job-id"]
        lines = response.iter_lines()
        while not next(lines).startswith('data: {"id"'):
            pass
        assert buyer.statement()["held"] > 0
        market = stack.processes["market"]
        os.killpg(market.pid, signal.SIGKILL)
        market.wait(timeout=10)
    killed = time.monotonic()
    stack.start_market()
    stack.wait_for_market()
    job = wait_until(
        "the killed market's job to be released",
        lambda: (j := buyer.job(job_id))["status"] != "routed" and j,
        timeout=90,
    )
    released_s = time.monotonic() - killed
    assert job["status"] == "failed"
    assert job["error"] == "the market process serving it stopped (no heartbeat for 15 s)"
    after = buyer.statement()
    assert after["held"] == 0
    assert (after["available"], after["charged"]) == (before["available"], before["charged"])
    print(f"market killed mid-stream: its hold was released {released_s:.1f} s later")
    # The agent signed a receipt for the tokens it had sent into its outbox; its receipt
    # sync learns from the market that nobody will pay it, and why.
    unpaid = stack.providers[0].data_dir / "receipts-unpaid.jsonl"

    def unpaid_answer() -> dict[str, Any] | None:
        lines = unpaid.read_text().splitlines() if unpaid.exists() else []
        return next((a for a in map(json.loads, lines) if a["job_id"] == job_id), None)

    answer = wait_until("the agent's receipt sync to answer the job", unpaid_answer, timeout=30)
    assert answer == {"job_id": job_id, "state": "closed", "detail": job["error"]}


def test_provider_rotates_its_key(stack: Stack, chain: SettlementClient, buyer: Buyer) -> None:
    """The serving provider replaces its Ed25519 key (agent stopped, `provider-agent
    rotate-key`, agent started): the old key is void at the market, and the next request is
    served and charged on a receipt signed by the new key."""
    provider = stack.providers[0]
    name, keystore = f"agent-{provider.index}", provider.data_dir / "keystore.json"
    old = load_keystore(keystore, PASSPHRASE)
    stack.stop(name)
    agent = str(VENV_BIN / "provider-agent")
    output = stack.run(name, [agent, "rotate-key", "--kdf-cost", "fast"], stack.agent_env(provider))
    assert "registered with the market" in output
    new = load_keystore(keystore, PASSPHRASE)
    assert new.address == old.address == provider.address
    assert chain.provider_key(provider.address) == bytes(new.signing_key.verify_key)
    provider.public_key = new.public_key_hex
    stack.save()

    view = httpx.get(f"{stack.market_url}/providers/{provider.address}", timeout=10).json()
    assert view["public_key"] == new.public_key_hex
    beat = heartbeat(old, buyer.domain, int(time.time() * 1000))
    refused = httpx.post(f"{stack.market_url}/providers/heartbeat", json=beat, timeout=10)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "bad_provider_signature")

    stack.start_agent(provider)
    stack.wait_for_online(provider)
    raw = buyer.openai(max_retries=0).chat.completions.with_raw_response.create(
        model=SERVED_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    usage = raw.parse().usage
    assert usage is not None
    job = check_receipt(buyer, chain, raw.headers["x-job-id"], usage.model_dump())
    assert job["provider_address"] == provider.address
    assert job["receipt"]["envelope"]["signer"] == new.public_key_hex
    print(f"key rotated: {old.public_key_hex} -> {new.public_key_hex}; charged {job['charge']}")


@pytest.fixture
def second_provider(stack: Stack) -> Provider:
    provider = stack.providers[1]
    if f"agent-{provider.index}" not in stack.services:
        stack.provision_provider(provider)
        stack.start_agent(provider)
    stack.wait_for_online(provider)
    return provider


def test_provider_dies_mid_request(
    stack: Stack, chain: SettlementClient, buyer: Buyer, second_provider: Provider
) -> None:
    """(5) vLLM is killed mid-request: an answer from the other provider, or a clean error;
    either way the buyer pays for verified tokens only."""
    before = buyer.statement()
    outcome: dict[str, Any] = {}

    def request() -> None:
        client = buyer.openai(max_retries=0, timeout=120)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=SERVED_MODEL,
                messages=[{"role": "user", "content": "Tell a long story."}],
                max_tokens=1500,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            outcome["job"] = raw.headers["x-job-id"]
            outcome["response"] = raw.parse()
        except openai.APIError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=request)
    worker.start()
    serving = wait_until(
        "a vLLM to be generating",
        lambda: next((p for p in stack.providers if _running_requests(p.vllm_url) > 0), None),
        timeout=30,
    )
    time.sleep(0.5)  # mid-generation
    service = stack.services[f"vllm-{serving.index}"]
    os.killpg(service.pid, signal.SIGKILL)
    worker.join(timeout=180)
    assert not worker.is_alive(), "the buyer's request hung after the provider died"

    after = wait_until(
        "the holds to be released", lambda: (s := buyer.statement())["held"] == 0 and s
    )
    spent = after["charged"] - before["charged"]
    assert after["available"] == before["available"] - spent
    if "response" in outcome:
        response = outcome["response"]
        assert response.usage is not None
        usage = response.usage.model_dump()
        job = check_receipt(buyer, chain, usage["receipt"]["job_id"], usage)
        assert job["provider_address"] != serving.address  # the fallback served it
        assert spent == job["charge"]
        print(f"fallback: {serving.address} died; {job['provider_address']} answered")
    else:
        error = outcome["error"]
        assert isinstance(error, openai.APIStatusError), repr(error)
        assert 500 <= error.status_code < 600 or error.status_code == 429
        body = error.response.json()
        assert body["error"]["message"]
        assert spent == 0, "a request without a verified receipt was charged"
        print(f"clean error after {serving.address} died: {error.status_code} {body}")
