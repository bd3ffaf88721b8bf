"""The market's exception tree: one base, stable distinct codes, one body shape."""

from __future__ import annotations

import pytest

from market import errors
from market.errors import InsufficientFundsError, MarketError


def _all_errors() -> list[type[MarketError]]:
    found = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, MarketError)
    ]
    return sorted(found, key=lambda cls: cls.__name__)


def test_every_error_has_its_own_code() -> None:
    codes = [cls.code for cls in _all_errors()]
    assert len(codes) == len(set(codes)), codes


@pytest.mark.parametrize("cls", _all_errors(), ids=lambda cls: cls.__name__)
def test_every_error_has_an_http_status_and_a_name_ending_in_error(
    cls: type[MarketError],
) -> None:
    assert 400 <= cls.status_code <= 599
    assert cls.__name__.endswith("Error")
    assert cls.__doc__


def test_body_is_one_shape() -> None:
    exc = errors.HoldNotFoundError("no hold for job j")
    assert exc.body() == {"error": {"code": "hold_not_found", "message": "no hold for job j"}}
    assert (exc.status_code, str(exc)) == (404, "no hold for job j")


def test_status_and_code_can_be_overridden_per_instance() -> None:
    exc = MarketError("teapot", status_code=418, code="teapot")
    assert (exc.status_code, exc.code) == (418, "teapot")
    assert MarketError.status_code == 500


def test_insufficient_funds_says_how_much() -> None:
    exc = InsufficientFundsError("buyer:0xA:available", 5, 7)
    assert (exc.account, exc.available, exc.requested) == ("buyer:0xA:available", 5, 7)
    assert exc.status_code == 402
    assert "5 available, 7 requested" in exc.message
