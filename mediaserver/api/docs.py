"""What the OpenAPI document says each route answers: its error codes, by HTTP status.

Routes list the codes they can refuse with (``errors(...)``); the document then carries, for
each status, the codes behind it. FastAPI's automatic 422 goes: validation errors are answered
400 ``invalid_request`` here (see ``app.py``).
"""

from __future__ import annotations

from typing import Any

from mediaserver.api.models import ErrorResponse
from mediaserver.errors import STATUS

AUTH = ("unauthorized",)  # an API key (HTTP Basic) or a user token is required
INPUT = ("invalid_request",)  # the request's parameters or body can be refused
BODY = ("invalid_request", "payload_too_large")  # the route reads a JSON body


def errors(*codes: str | tuple[str, ...]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status its codes answer with, the codes in its text."""
    flat: list[str] = []
    for c in codes:
        flat.extend((c,) if isinstance(c, str) else c)
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(flat):
        by_status.setdefault(STATUS[code], []).append(code)
    return {
        status: {"model": ErrorResponse, "description": "Refused: " + ", ".join(f"`{c}`" for c in found)}
        for status, found in sorted(by_status.items())
    }


def tidy_openapi(schema: dict) -> dict:
    """Drop FastAPI's 422 answers (this server answers validation errors 400) and its
    validation-error schemas, which then nothing uses."""
    for path in schema.get("paths", {}).values():
        for op in path.values():
            responses = op.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {
                    "description": "Refused: `invalid_request`",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                }
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    return schema
