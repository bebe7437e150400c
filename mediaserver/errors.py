"""Stable error codes shared by REST, WebSocket and actors.

Every refusal the server makes is a ``MediaserverError`` with a code from this
module; the gateway turns it into ``{"error": {"code", "message"}}`` with the
HTTP status listed here (or a WebSocket ``error`` message).
"""

from __future__ import annotations

# code -> HTTP status
STATUS: dict[str, int] = {
    "invalid_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "payload_too_large": 413,
    # tokens
    "token_malformed": 401,
    "token_expired": 401,
    "token_not_yet_valid": 401,
    "token_invalid_signature": 401,
    "token_unknown_key": 401,
    "token_wrong_room": 403,
    "token_ttl_too_long": 400,
    "reconnect_expired": 410,
    # sessions
    "room_not_found": 404,
    "session_not_found": 404,
    "participant_not_found": 404,
    "session_ended": 410,
    "session_limit_reached": 429,
    "session_opened_elsewhere": 409,  # (between gateway and host: a first join raced another; the gateway joins that one)
    "room_full": 409,
    "not_moderator": 403,
    "not_joined": 409,
    "invalid_sdp": 400,
    "publish_not_allowed": 403,
    "unsupported_codec": 400,
    # relayed (peer-to-peer) rooms
    "relayed_media": 409,  # a routed call in a relayed room
    "not_simulcast": 409,  # a layer asked of a track sent as one stream
    "routed_media": 409,  # a peer-to-peer call in a routed room
    "relayed_session_full": 409,  # past relayed_max_participants
    "not_publishing": 409,  # a link whose publisher sends nothing
    "not_in_your_room": 403,  # a link across breakout rooms
    # stage and media permissions
    "stage_full": 409,  # 6 participants are on screen already
    "speakers_full": 409,  # 4 speakers are on screen already
    "already_on_stage": 409,
    "not_on_stage": 409,
    "stage_request_pending": 409,
    "no_stage_request": 404,
    # chat and Q&A
    "message_empty": 422,
    "message_too_long": 422,
    "message_not_encrypted": 422,  # plain text in an end-to-end encrypted room
    "rate_limited": 429,
    "question_not_found": 404,
    "already_voted": 409,
    "question_closed": 409,
    # breakout rooms
    "too_many_breakouts": 409,
    "breakout_name_too_long": 422,
    "breakout_name_empty": 422,
    "breakout_name_taken": 409,
    "breakout_not_found": 404,
    "breakouts_open": 409,
    "breakouts_closed": 409,
    "no_breakouts": 409,
    # events with registration
    "event_not_found": 404,
    "host_not_found": 404,
    "slot_not_found": 404,
    "slot_overlap": 409,
    "host_session_limit": 409,
    "event_session_limit": 409,
    "slot_outside_window": 422,
    "slot_full": 409,
    "already_registered": 409,
    "session_not_started": 409,
    "too_early": 409,
    # people: users, groups, invite links
    "user_exists": 409,
    "user_not_found": 404,
    "group_not_found": 404,
    "invalid_credentials": 401,
    "not_group_member": 403,
    "not_group_leader": 403,
    "invite_invalid": 401,
    "invite_expired": 410,
    "invite_revoked": 410,
    "invite_used_up": 410,
    "session_not_live": 409,
    # archives
    "archive_not_found": 404,
    "archive_already_recording": 409,  # one archive records a session at a time
    "archive_not_recording": 409,  # stopping one that has stopped
    "archive_in_progress": 409,  # deleting or downloading one not ready yet
    "archive_requires_routed": 409,  # a relayed room's media never reaches the server
    "archive_not_allowed_e2ee": 409,  # the server cannot read end-to-end encrypted media
    "archive_file_not_found": 404,
    "archive_not_composed": 500,  # FFmpeg missing or failing on the recorder's node
    "unavailable": 503,
    "no_media_capacity": 503,  # every media worker is full or draining
    "internal": 500,
}


class MediaserverError(Exception):
    """A refusal with a stable code and a message a person can act on."""

    def __init__(self, code: str, message: str):
        if code not in STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(code, message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
