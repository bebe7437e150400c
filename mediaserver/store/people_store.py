"""Users, groups and invite links in the store."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from mediaserver.errors import MediaserverError
from mediaserver.ids import new_id
from mediaserver.store.schema import group_members, groups, invites, users

GROUP_ROLES = ("leader", "co_leader", "member")


class PeopleStore:
    engine: Any

    async def create_user(self, team_id: str, email: str, name: str, password_hash: str) -> dict:
        row = {
            "id": new_id("user"), "team_id": team_id, "email": email.lower(), "name": name,
            "password_hash": password_hash, "created_at": time.time(),
        }
        try:
            async with self.write() as conn:
                await conn.execute(users.insert().values(**row))
        except IntegrityError:
            raise MediaserverError("user_exists", f"there is a user with the e-mail {email} already")
        return row

    async def get_user(self, user_id: str) -> dict | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).mappings().first()
            return dict(row) if row else None

    async def user_by_email(self, email: str) -> dict | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.email == email.lower()))).mappings().first()
            return dict(row) if row else None

    async def create_group(self, team_id: str, name: str, key_id: str) -> dict:
        row = {"id": new_id("grp"), "team_id": team_id, "name": name, "key_id": key_id, "created_at": time.time()}
        async with self.write() as conn:
            await conn.execute(groups.insert().values(**row))
        return {**row, "members": []}

    async def get_group(self, group_id: str, team_id: str | None = None) -> dict | None:
        q = sa.select(groups).where(groups.c.id == group_id)
        if team_id is not None:
            q = q.where(groups.c.team_id == team_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).mappings().first()
            if row is None:
                return None
            members = (await conn.execute(
                sa.select(group_members.c.user_id, group_members.c.role, users.c.name, users.c.email)
                .join(users, users.c.id == group_members.c.user_id)
                .where(group_members.c.group_id == group_id).order_by(group_members.c.added_at)
            )).mappings()
            return {**dict(row), "members": [dict(m) for m in members]}

    async def set_member(self, group_id: str, user_id: str, role: str) -> None:
        if role not in GROUP_ROLES:
            raise MediaserverError("invalid_request", f"role is one of {', '.join(GROUP_ROLES)}")
        async with self.write() as conn:
            done = await conn.execute(
                group_members.update().where(group_members.c.group_id == group_id, group_members.c.user_id == user_id)
                .values(role=role)
            )
            if done.rowcount == 0:
                await conn.execute(group_members.insert().values(group_id=group_id, user_id=user_id, role=role, added_at=time.time()))

    async def member_role(self, group_id: str, user_id: str) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(
                sa.select(group_members.c.role).where(group_members.c.group_id == group_id, group_members.c.user_id == user_id)
            )).scalar_one_or_none()

    async def create_invite(self, room_id: str, key_id: str, role: str, ttl: float, max_uses: int | None = None) -> dict:
        now = time.time()
        row = {"id": new_id("inv"), "room_id": room_id, "key_id": key_id, "role": role, "created_at": now,
               "expires_at": now + ttl, "revoked_at": None, "max_uses": max_uses, "uses": 0}
        async with self.write() as conn:
            await conn.execute(invites.insert().values(**row))
        return row

    async def get_invite(self, invite_id: str) -> dict | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(invites).where(invites.c.id == invite_id))).mappings().first()
            return dict(row) if row else None

    async def list_invites(self, room_id: str) -> list[dict]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(invites).where(invites.c.room_id == room_id).order_by(invites.c.created_at))
            return [dict(r) for r in rows.mappings()]

    async def revoke_invite(self, room_id: str, invite_id: str) -> bool:
        async with self.write() as conn:
            done = await conn.execute(
                invites.update().where(invites.c.id == invite_id, invites.c.room_id == room_id, invites.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            return done.rowcount == 1

    async def use_invite(self, invite_id: str) -> dict:
        """Count one guest in through an invite link, if it has a use left: one conditional
        update, so a burst of guests cannot take more uses than it has."""
        async with self.write() as conn:
            done = await conn.execute(
                invites.update()
                .where(
                    invites.c.id == invite_id, invites.c.revoked_at.is_(None),
                    sa.or_(invites.c.max_uses.is_(None), invites.c.uses < invites.c.max_uses),
                )
                .values(uses=invites.c.uses + 1)
            )
            row = (await conn.execute(sa.select(invites).where(invites.c.id == invite_id))).mappings().first()
        if row is None:
            raise MediaserverError("invite_invalid", "this invite link is not valid")
        if done.rowcount == 1:
            return dict(row)
        if row["revoked_at"] is not None:
            raise MediaserverError("invite_revoked", "this invite link has been withdrawn")
        raise MediaserverError("invite_used_up", f"this invite link has been used {row['uses']} times, all it may be; ask for a new one")
