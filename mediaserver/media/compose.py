"""The composed file of an archive: the on-screen videos in a grid and the audio mixed, each
track at its offset, built by FFmpeg from the track files. The one place media is transcoded;
it runs after the archive stops, off the live path."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

CELL = (640, 360)
FPS = 25


def ffmpeg_path() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("ffmpeg is not installed on this node: composed archives need it (apt-get install ffmpeg)")
    return path


def command(directory: str, manifest: dict, out: str) -> list[str]:
    """The ffmpeg command line that composes ``manifest``'s segments into ``out`` (MP4)."""
    segments = [s for s in manifest.get("segments", []) if s.get("duration", 0) > 0]
    videos = [s for s in segments if s["kind"] == "video"]
    audios = [s for s in segments if s["kind"] == "audio"]
    cells = list(dict.fromkeys(s["track_id"] for s in videos))  # one cell per video track, in order of appearance
    cols = max(1, math.ceil(math.sqrt(len(cells))))
    rows = max(1, math.ceil(len(cells) / cols))
    width, height = cols * CELL[0], rows * CELL[1]
    duration = max((s["offset"] + s["duration"] for s in segments), default=0.0) or 1.0
    args = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y"]
    for s in videos + audios:
        args += ["-i", os.path.join(directory, s["file"])]
    graph = [f"color=c=black:s={width}x{height}:r={FPS}:d={duration:.3f}[base0]"]
    for i, s in enumerate(videos):
        x, y = (cells.index(s["track_id"]) % cols) * CELL[0], (cells.index(s["track_id"]) // cols) * CELL[1]
        graph.append(
            f"[{i}:v]setpts=PTS-STARTPTS+{s['offset']:.3f}/TB,fps={FPS},"
            f"scale={CELL[0]}:{CELL[1]}:force_original_aspect_ratio=decrease,"
            f"pad={CELL[0]}:{CELL[1]}:(ow-iw)/2:(oh-ih)/2[v{i}]"
        )
        graph.append(f"[base{i}][v{i}]overlay={x}:{y}:eof_action=pass[base{i + 1}]")
    maps = ["-map", f"[base{len(videos)}]"]
    if audios:
        for j, s in enumerate(audios):
            delay = int(s["offset"] * 1000)
            graph.append(f"[{len(videos) + j}:a]aresample=48000,adelay={delay}:all=1[a{j}]")
        inputs = "".join(f"[a{j}]" for j in range(len(audios)))
        graph.append(f"{inputs}amix=inputs={len(audios)}:duration=longest:normalize=0[aout]")
        maps += ["-map", "[aout]", "-c:a", "aac", "-b:a", "128k"]
    return [
        *args, "-filter_complex", ";".join(graph), *maps, "-c:v", "libx264", "-preset", "veryfast",
        "-pix_fmt", "yuv420p", "-t", f"{duration:.3f}", "-movflags", "+faststart", "-f", "mp4", out,
    ]


def archive_files(directory: str) -> list[dict]:
    """The whole files of an archive (never a ``.part``, nor the recorder's own hidden ones): name,
    kind (track, manifest, composed), size."""
    out = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.endswith(".part") or name.startswith("."):
            continue
        kind = "manifest" if name == "manifest.json" else "composed" if name.startswith("composed.") else "track"
        out.append({"name": name, "kind": kind, "size": os.path.getsize(os.path.join(directory, name))})
    return out


def compose_files(directory: str) -> list[dict]:
    """``compose``, then the archive's files; a failure is ``archive_not_composed``, saying why."""
    from mediaserver.errors import MediaserverError

    try:
        compose(directory)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        raise MediaserverError("archive_not_composed", str(e)[:400]) from None
    return archive_files(directory)


def compose(directory: str) -> str:
    """Write ``composed.mp4`` in the archive's directory (whole or not at all); its path."""
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    out = os.path.join(directory, "composed.mp4")
    done = subprocess.run(command(directory, manifest, out + ".part"), capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        if os.path.exists(out + ".part"):
            os.remove(out + ".part")
        raise RuntimeError(f"ffmpeg could not compose the archive: {done.stderr.strip()[-400:]}")
    os.replace(out + ".part", out)
    return out
