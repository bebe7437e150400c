"""Identifiers: a short type prefix and random URL-safe text, so an ID says what it is."""

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(12).replace('-', 'x').replace('_', 'y')}"


def new_secret() -> str:
    return secrets.token_urlsafe(32)
