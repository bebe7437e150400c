"""API-key authentication for the REST API: HTTP Basic with the key id and its secret."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from mediaserver.errors import MediaserverError

basic = HTTPBasic(auto_error=False, description="API key id as the user name, its secret as the password")


@dataclass(frozen=True)
class Caller:
    key_id: str
    team_id: str
    secret: str


async def api_key(request: Request, creds: HTTPBasicCredentials | None = Depends(basic)) -> Caller:
    if creds is None:
        raise MediaserverError("unauthorized", "send your API key as HTTP Basic credentials (key id : secret)")
    key = await request.app.state.store.get_api_key(creds.username)
    # Compare even when the key is unknown, so timing does not reveal which key ids exist.
    expected = key["secret"] if key else "x" * 43
    if not hmac.compare_digest(expected.encode(), creds.password.encode()) or key is None:
        raise MediaserverError("unauthorized", "unknown API key or wrong secret")
    return Caller(key_id=key["id"], team_id=key["team_id"], secret=key["secret"])
