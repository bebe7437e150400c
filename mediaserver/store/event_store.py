"""Events with registration in the store: events, their hosts, the slots hosts pick, registrations.

The rules that need the database to hold (no overlapping slots for a host, a host's and the
event's session allowances, a slot's spots) are checked inside the write transaction that
writes, after locking the parent row (``lock_row``: the event, the host, the slot), so two
concurrent requests run one after the other and cannot both pass.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import sqlalchemy as sa

from mediaserver.errors import MediaserverError
from mediaserver.ids import new_id
from mediaserver.store.locking import lock_row
from mediaserver.store.schema import event_hosts, event_slots, registrations, rooms, scheduled_events


@functools.cache
def _slot() -> Any:
    """``slot_for_room``'s read of the slot, built once (a session's wake reads it)."""
    return sa.select(event_slots).where(event_slots.c.room_id == sa.bindparam("room_id"))


@functools.cache
def _registered() -> Any:
    """... and of its registered identities."""
    return sa.select(registrations.c.identity).where(registrations.c.slot_id == sa.bindparam("slot_id"))


class EventStore:
    engine: Any
    _rows: Any  # (Store's: a statement built once, run on SQLite's cursor there)

    async def create_event(
        self, team_id: str, name: str, starts_at: float, ends_at: float, hosts: list[dict], max_sessions: int | None = None
    ) -> dict:
        """An event; ``max_sessions`` caps the slots all its hosts pick together (None: no cap)."""
        now = time.time()
        event = {
            "id": new_id("evt"), "team_id": team_id, "name": name, "starts_at": starts_at, "ends_at": ends_at,
            "created_at": now, "max_sessions": max_sessions,
        }
        host_rows = [{"id": new_id("host"), "event_id": event["id"], **h} for h in hosts]
        async with self.write() as conn:
            await conn.execute(scheduled_events.insert().values(**event))
            if host_rows:
                await conn.execute(event_hosts.insert(), host_rows)
        return await self.get_event(event["id"], team_id)

    async def list_events(self, team_id: str) -> list[dict]:
        q = sa.select(scheduled_events).where(scheduled_events.c.team_id == team_id).order_by(scheduled_events.c.starts_at)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def get_event(self, event_id: str, team_id: str | None = None) -> dict | None:
        """An event with its hosts and slots (each slot with its registrations)."""
        q = sa.select(scheduled_events).where(scheduled_events.c.id == event_id)
        if team_id is not None:
            q = q.where(scheduled_events.c.team_id == team_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).mappings().first()
            if row is None:
                return None
            event = dict(row)
            event["hosts"] = [dict(r) for r in (await conn.execute(
                sa.select(event_hosts).where(event_hosts.c.event_id == event_id).order_by(event_hosts.c.identity)
            )).mappings()]
            slots = [dict(r) for r in (await conn.execute(
                sa.select(event_slots).where(event_slots.c.event_id == event_id).order_by(event_slots.c.starts_at)
            )).mappings()]
            regs = (await conn.execute(
                sa.select(registrations).join(event_slots, event_slots.c.id == registrations.c.slot_id)
                .where(event_slots.c.event_id == event_id).order_by(registrations.c.registered_at)
            )).mappings()
        by_slot: dict[str, list[dict]] = {}
        for r in regs:
            by_slot.setdefault(r["slot_id"], []).append(dict(r))
        for s in slots:
            s["registrations"] = by_slot.get(s["id"], [])
        event["slots"] = slots
        return event

    async def add_slot(self, event: dict, host: dict, starts_at: float, room_fields: dict) -> dict:
        """A host picks a time slot: a room for it and the slot, if it fits the host's allowance."""
        ends_at = starts_at + host["duration"]
        now = time.time()
        async with self.write() as conn:
            # The event first, then the host: every pick locks in the same order.
            locked_event = await lock_row(conn, scheduled_events, event["id"])
            await lock_row(conn, event_hosts, host["id"])
            limit = locked_event["max_sessions"] if locked_event else None
            if limit is not None:
                held = (await conn.execute(
                    sa.select(sa.func.count()).select_from(event_slots).where(event_slots.c.event_id == event["id"])
                )).scalar_one()
                if held >= limit:
                    raise MediaserverError(
                        "event_session_limit", f"all {limit} sessions of this event are taken; ask the organizer for more"
                    )
            taken = [dict(r) for r in (await conn.execute(
                sa.select(event_slots).where(event_slots.c.host_id == host["id"])
            )).mappings()]
            if len(taken) >= host["max_sessions"]:
                raise MediaserverError(
                    "host_session_limit", f"{host['name']} may hold {host['max_sessions']} session(s) in this event"
                )
            for other in taken:
                if starts_at < other["ends_at"] and other["starts_at"] < ends_at:
                    raise MediaserverError("slot_overlap", f"{host['name']} has a session then already")
            room = {
                "id": new_id("room"), "team_id": event["team_id"], "created_at": now, "updated_at": now,
                "capacity": host["spots"], **room_fields, "starts_at": starts_at, "ends_at": ends_at,
            }
            await conn.execute(rooms.insert().values(**room))
            slot = {
                "id": new_id("slot"), "event_id": event["id"], "host_id": host["id"], "room_id": room["id"],
                "starts_at": starts_at, "ends_at": ends_at, "spots": host["spots"], "created_at": now,
            }
            await conn.execute(event_slots.insert().values(**slot))
        return {**slot, "registrations": []}

    async def register(self, slot_id: str, identity: str, name: str) -> dict:
        """One-click registration while spots remain."""
        async with self.write() as conn:
            slot = await lock_row(conn, event_slots, slot_id)
            if slot is None:
                raise MediaserverError("slot_not_found", f"no slot {slot_id}")
            existing = (await conn.execute(
                sa.select(registrations.c.identity).where(registrations.c.slot_id == slot_id)
            )).scalars().all()
            if identity in existing:
                raise MediaserverError("already_registered", f"{identity} is registered for this session already")
            if len(existing) >= slot["spots"]:
                raise MediaserverError("slot_full", f"all {slot['spots']} spots of this session are taken")
            row = {"slot_id": slot_id, "identity": identity, "name": name, "registered_at": time.time()}
            await conn.execute(registrations.insert().values(**row))
        return row

    async def slot_for_room(self, room_id: str) -> dict | None:
        """The event slot a room was made for (with its registered identities), or None."""
        found = await self._rows(_slot(), {"room_id": room_id})
        if not found:
            return None
        slot = found[0]
        slot["registered"] = [r["identity"] for r in await self._rows(_registered(), {"slot_id": slot["id"]})]
        return slot
