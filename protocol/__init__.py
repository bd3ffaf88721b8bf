"""Shared by the market and the provider agent: signed-message formats, canonical encoding, keys."""
