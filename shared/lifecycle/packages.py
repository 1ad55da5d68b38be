"""A packaged Triton model directory (``.tar.gz``): checked, then unpacked safely.

The archive holds ``config.pbtxt`` and exactly one numeric version folder (``1/model.py``,
``1/model.onnx``, ...), optionally under one top-level folder, plus any model-level files
(``labels.txt``). Only regular files and folders are accepted, every path must stay inside
the package (no absolute paths, no ``..``, no links), and the unpacked size and file count
are bounded (a small archive cannot unpack into a huge one). The version folder's number is
replaced by the Triton version Kinfer allocates.

``config.pbtxt`` is the only configuration: it is parsed, checked and normalised, and the agent
writes what Triton reads from it. Model-level files that Triton or the agent would read as a
configuration instead are refused (``reserved``): ``config.pbtxt.base`` (the agent's copy of the
stored config, which such a file would replace), the ``configs/`` folder (Triton's custom configs,
``--model-config-name``).
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from shared.errors import InvalidInput
from shared.lifecycle import tritonconfig

FIELD = "artifact"
MAX_FILES = 10_000
CONFIG = "config.pbtxt"


@dataclass
class Package:
    """An unpacked, checked package: its config and files (paths relative to the package root)."""

    root: Path
    config: str
    version_files: list[str] = field(default_factory=list)  # relative to the version folder
    version_dir: str = ""
    model_files: dict[str, str] = field(default_factory=dict)  # model-level file -> sha256


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def unpack(archive: Path, into: Path, triton_model: str, max_bytes: int) -> Package:
    """Check ``archive`` and unpack it under ``into``; InvalidInput saying what is wrong."""
    try:
        _check_headers(archive, max_bytes)
        with tarfile.open(archive, "r:gz") as tar:
            members = _checked_members(tar, max_bytes)
            for member in members:
                target = into / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise InvalidInput(f"package entry {member.name!r} cannot be read", field=FIELD)
                with source, open(target, "wb") as out:
                    while chunk := source.read(1024 * 1024):
                        out.write(chunk)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidInput(
            f"the artifact is not a readable .tar.gz package ({type(exc).__name__})", field=FIELD
        ) from None
    return _describe(_package_root(into), triton_model)


# GNU long names and links ("L", "K") and pax headers ("x", "g") are read whole by tarfile, before any
# check of ours: a 1 MB archive whose long-name header claims a GiB took gigabytes of memory.
META_TYPES = (b"L", b"K", b"x", b"g")
MAX_META_BYTES = 64 * 1024
BLOCK = 512


def _check_headers(archive: Path, max_bytes: int) -> None:
    """Walk the tar headers in a bounded pass (no member is read into memory): every metadata entry at most
    MAX_META_BYTES, and no more than ``max_bytes`` of entries in all, before tarfile parses anything."""
    import gzip

    total = 0
    with gzip.open(archive, "rb") as stream:
        while len(header := stream.read(BLOCK)) == BLOCK and header.strip(b"\0"):
            size = _header_size(header[124:136])
            if header[156:157] in META_TYPES and size > MAX_META_BYTES:
                raise InvalidInput(
                    f"the package has a tar metadata entry (long name or pax header) of {size} bytes; "
                    f"at most {MAX_META_BYTES} are accepted",
                    field=FIELD,
                )
            total += size
            if size < 0 or total > max_bytes:
                raise InvalidInput(
                    f"the package unpacks to more than {max_bytes} bytes (MAX_ARTIFACT_BYTES)", field=FIELD
                )
            left = -(-size // BLOCK) * BLOCK
            while left > 0:
                skipped = len(stream.read(min(left, 1024 * 1024)))
                if not skipped:
                    return  # truncated: tarfile says so below
                left -= skipped


def _header_size(field: bytes) -> int:
    """A tar header's size field: octal digits, or GNU's base-256 (first byte 0x80; 0xff is negative)."""
    if field[:1] in (b"\x80", b"\xff"):
        return -1 if field[:1] == b"\xff" else int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits or b"0", 8)
    except ValueError:
        raise InvalidInput("the package has a malformed tar header", field=FIELD) from None


def _checked_members(tar: tarfile.TarFile, max_bytes: int) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:
        if len(members) >= MAX_FILES:
            raise InvalidInput(f"the package holds more than {MAX_FILES} entries", field=FIELD)
        name = member.name
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
            raise InvalidInput(f"package path {name[:200]!r} escapes the package folder", field=FIELD)
        if not (member.isfile() or member.isdir()):
            raise InvalidInput(
                f"package entry {name[:200]!r} is a link or a special file; only regular "
                "files and folders are accepted",
                field=FIELD,
            )
        total += member.size
        if total > max_bytes:
            raise InvalidInput(f"the package unpacks to more than {max_bytes} bytes (MAX_ARTIFACT_BYTES)", field=FIELD)
        member.name = path.as_posix()  # "./a//b" -> "a/b"
        if member.name != ".":
            members.append(member)
    return members


def _package_root(into: Path) -> Path:
    """The folder holding config.pbtxt: the archive root, or its single top-level folder."""
    if (into / CONFIG).is_file():
        return into
    entries = [p for p in into.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / CONFIG).is_file():
        return entries[0]
    raise InvalidInput(
        "the package has no config.pbtxt; expected config.pbtxt and one version folder "
        "(e.g. 1/model.py) at its root or inside one top-level folder",
        field=FIELD,
    )


def reserved(rel: str) -> str | None:
    """Why the model-level file ``rel`` (relative to the model folder) may not come from a package; None if it may."""
    if rel.split("/", 1)[0] == "configs":
        return "configs/ holds Triton's custom model configurations, which would replace config.pbtxt"
    if rel.startswith(CONFIG) and rel != CONFIG:
        return f"the model agent keeps the checked {CONFIG} under that name"
    return None


def _describe(root: Path, triton_model: str) -> Package:
    config = tritonconfig.normalise((root / CONFIG).read_text(encoding="utf-8", errors="replace"), triton_model)
    versions = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()]
    if len(versions) != 1:
        found = ", ".join(sorted(p.name for p in versions)) or "none"
        raise InvalidInput(
            f"the package must hold exactly one numeric version folder (e.g. 1/); found: {found}", field=FIELD
        )
    version_dir = versions[0]
    files = sorted(p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*") if p.is_file())
    if not files:
        raise InvalidInput(f"the package's version folder {version_dir.name}/ is empty", field=FIELD)
    model_files = {
        p.relative_to(root).as_posix(): _sha256(p)
        for p in root.rglob("*")
        if p.is_file() and p != root / CONFIG and version_dir not in p.parents
    }
    for rel in model_files:
        if why := reserved(rel):
            raise InvalidInput(
                f"the package holds {rel[:200]!r}, a name it may not use ({why}); the only configuration "
                f"of a package is its {CONFIG}",
                field=FIELD,
            )
    _check_env_path(config, model_files)
    return Package(root=root, config=config, version_files=files, version_dir=version_dir.name, model_files=model_files)


def _check_env_path(config: str, model_files: dict[str, str]) -> None:
    """The conda-pack environment ``EXECUTION_ENV_PATH`` names must be a file or folder of the package."""
    env = tritonconfig.env_path(tritonconfig.parse(config))
    if env is not None and env not in model_files and not any(rel.startswith(env + "/") for rel in model_files):
        raise InvalidInput(
            f"config.pbtxt: {tritonconfig.ENV_PATH} names {env!r}, which the package does not hold beside {CONFIG}",
            field=FIELD,
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
