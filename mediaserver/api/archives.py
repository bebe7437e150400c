"""REST routes for archives: start and stop one, list them, read one, download its files, delete it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import zipfile
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from mediaserver.api.auth import Caller, api_key
from mediaserver.api.docs import AUTH, BODY, INPUT, errors
from mediaserver.api.models import Strict
from mediaserver.errors import MediaserverError

router = APIRouter(prefix="/v1", tags=["archives"])
Auth = Annotated[Caller, Depends(api_key)]
FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")  # what recorders name files (no path separators)


class ArchiveStart(Strict):
    name: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$",
                             description="default: the room's name and 'archive'")
    output: Literal["individual", "composed", "both"] = Field(
        "individual", description="individual: one file per track; composed: one MP4 of everyone; both")


class ArchiveFile(BaseModel):
    name: str
    kind: str = Field(description="track (one track segment: WebM for VP8 and Opus, Matroska for H264), manifest, or composed (MP4)")
    size: int


class Archive(BaseModel):
    id: str
    session_id: str
    room_id: str
    name: str
    output: str
    status: str = Field(description="recording, processing (files being finished or composed), ready, or failed")
    started_at: float
    started_by: str | None = Field(description="the moderator's participant id; null: the API or always mode")
    stopped_at: float | None
    stop_reason: str | None = Field(description="moderator, api, session_ended, max_duration or failed")
    files: list[ArchiveFile]
    size: int = Field(description="bytes, every file together")
    error: str | None

    @classmethod
    def from_row(cls, row: dict) -> "Archive":
        keys = cls.model_fields.keys()
        return cls(**{k: row.get(k) for k in keys})


class ArchiveList(BaseModel):
    archives: list[Archive]


def archive_dir(request: Request, archive_id: str) -> str:
    settings = request.app.state.settings
    return os.path.join(str(settings.archive_path), archive_id)


async def _archive(request: Request, caller: Caller, archive_id: str) -> dict:
    row = await request.app.state.store.get_archive(archive_id, caller.team_id)
    if row is None:
        raise MediaserverError("archive_not_found", f"no archive {archive_id!r} in your team")
    return row


@router.post("/sessions/{session_id}/archives", status_code=201, response_model=Archive,
             responses=errors(AUTH, BODY, "session_not_found", "session_ended", "archive_already_recording",
                              "archive_requires_routed", "archive_not_allowed_e2ee", "unavailable"))
async def start_archive(session_id: str, body: ArchiveStart, request: Request, caller: Auth) -> Archive:
    """Start recording a live session (at most one archive records a session at a time)."""
    row = await request.app.state.store.get_session(session_id, caller.team_id)
    if row is None:
        raise MediaserverError("session_not_found", f"no session {session_id!r} in your team")
    if row["status"] == "ended":
        raise MediaserverError("session_ended", "this session has ended: archives record live sessions")
    started = await request.app.state.control.call(session_id, "start_archive", None, body.name, body.output)
    return Archive.from_row(await _archive(request, caller, started["id"]))


@router.post("/archives/{archive_id}/stop", response_model=Archive,
             responses=errors(AUTH, "archive_not_found", "archive_not_recording", "unavailable"))
async def stop_archive(archive_id: str, request: Request, caller: Auth) -> Archive:
    """Stop recording; the archive is ``processing`` until its files are finished, then ``ready``."""
    row = await _archive(request, caller, archive_id)
    await request.app.state.control.call(row["session_id"], "stop_archive", None, archive_id)
    return Archive.from_row(await _archive(request, caller, archive_id))


@router.get("/archives", response_model=ArchiveList, responses=errors(AUTH, INPUT))
async def list_archives(
    request: Request, caller: Auth,
    session_id: Annotated[str | None, Query(max_length=40)] = None,
    room_id: Annotated[str | None, Query(max_length=40)] = None,
    status: Annotated[Literal["recording", "processing", "ready", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ArchiveList:
    """Your team's archives, newest first (by session, room or status)."""
    rows = await request.app.state.store.list_archives(caller.team_id, session_id=session_id, room_id=room_id,
                                                       status=status, limit=limit)
    return ArchiveList(archives=[Archive.from_row(r) for r in rows])


@router.get("/archives/{archive_id}", response_model=Archive, responses=errors(AUTH, "archive_not_found"))
async def get_archive(archive_id: str, request: Request, caller: Auth) -> Archive:
    return Archive.from_row(await _archive(request, caller, archive_id))


def _ready(row: dict) -> None:
    if row["status"] != "ready":
        raise MediaserverError("archive_in_progress", f"archive {row['id']} is {row['status']}: its files are not ready yet")


@router.get("/archives/{archive_id}/files/{name}", response_class=FileResponse,
            responses=errors(AUTH, "archive_not_found", "archive_in_progress", "archive_file_not_found"))
async def download_file(archive_id: str, name: str, request: Request, caller: Auth) -> FileResponse:
    """One file of a ready archive, as ``files`` lists it."""
    row = await _archive(request, caller, archive_id)
    _ready(row)
    if not FILE_NAME.match(name) or name not in {f["name"] for f in row["files"]}:
        raise MediaserverError("archive_file_not_found", f"archive {archive_id} has no file {name!r}")
    path = os.path.join(archive_dir(request, archive_id), name)
    if not os.path.isfile(path):
        raise MediaserverError("archive_file_not_found", f"the file {name!r} is not on this server's archive storage")
    media = {"webm": "video/webm", "mkv": "video/x-matroska", "mp4": "video/mp4", "json": "application/json"}.get(name.rsplit(".", 1)[-1])
    return FileResponse(path, media_type=media or "application/octet-stream", filename=name)


def _zip(directory: str, names: list[str]) -> str:
    fd, path = tempfile.mkstemp(suffix=".zip")
    with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:  # media is compressed already
        for name in names:
            z.write(os.path.join(directory, name), name)
    return path


@router.get("/archives/{archive_id}/zip", response_class=FileResponse,
            responses=errors(AUTH, "archive_not_found", "archive_in_progress", "archive_file_not_found"))
async def download_zip(archive_id: str, request: Request, caller: Auth) -> FileResponse:
    """Every file of a ready archive in one zip."""
    row = await _archive(request, caller, archive_id)
    _ready(row)
    directory = archive_dir(request, archive_id)
    names = [f["name"] for f in row["files"] if os.path.isfile(os.path.join(directory, f["name"]))]
    if len(names) != len(row["files"]):
        raise MediaserverError("archive_file_not_found", "some of the archive's files are not on this server's archive storage")
    path = await asyncio.to_thread(_zip, directory, names)
    return FileResponse(path, media_type="application/zip", filename=f"{archive_id}.zip",
                        background=BackgroundTask(os.remove, path))


@router.delete("/archives/{archive_id}", responses=errors(AUTH, "archive_not_found", "archive_in_progress"))
async def delete_archive(archive_id: str, request: Request, caller: Auth) -> dict:
    """Delete a ready (or failed) archive and its files."""
    await _archive(request, caller, archive_id)
    result = await request.app.state.store.delete_archive(archive_id, caller.team_id)
    await asyncio.to_thread(shutil.rmtree, archive_dir(request, archive_id), True)
    return result
