"""Atomic writes: a reader (or a resumed run) never sees half a file or half a folder."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def cache_root() -> Path:
    """Where derived artefacts are kept between runs (tiny models, teacher outputs, synonym tables)."""
    return Path(os.environ.get("TLSCALE_CACHE", Path.home() / ".cache" / "tlscale"))


def write_json_atomic(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, rows) -> None:
    """One JSON object per line; a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, path)


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; an older folder of that name is removed only afterwards."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
