"""`benchmarks.compare`'s summary: medians per side, the change in the sum, rounds won."""

from __future__ import annotations

from benchmarks.compare import WORKER, Side, summary


def _side(name: str, rounds: list[tuple[float, float]]) -> Side:
    side = Side.__new__(Side)  # no worker process: only the rows matter here
    side.name = name
    side.rows = {
        (1, False): [
            {"market_cpu_ms": m, "agent_cpu_ms": a, "p50_ms": 5.0, "requests": 100}
            for m, a in rounds
        ]
    }
    return side


def test_medians_change_and_rounds_won() -> None:
    this = _side("this", [(3.0, 1.0), (2.0, 1.0), (9.0, 1.0)])
    other = _side("HEAD~1", [(4.0, 1.0), (4.0, 1.0), (4.0, 1.0)])
    lines = summary(this, other)
    ours = next(line for line in lines if line.startswith("plain c=1   this"))
    theirs = next(line for line in lines if "HEAD~1" in line)
    assert ours.split()[3:7] == ["3.00", "1.00", "4.00", "5.00"]  # medians: 3, 1, 3+1
    assert ours.split()[7:] == ["-20.0%", "2/3"]  # 4 against 5; rounds 1 and 2 used less
    assert theirs.split()[3:] == ["4.00", "1.00", "5.00", "5.00"]


def test_the_worker_code_compiles() -> None:
    compile(WORKER, "<benchmarks.compare worker>", "exec")
