"""Packaged Triton model directories: what is accepted, and every way out of the package refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from shared.errors import InvalidInput
from shared.lifecycle import packages
from tests.lifecycle_support import PY_CONFIG, package


def unpack(tmp_path: Path, data: bytes, limit: int = 10_000_000) -> packages.Package:
    archive = tmp_path / "p.tar.gz"
    archive.write_bytes(data)
    return packages.unpack(archive, tmp_path / "out", "mine", limit)


def test_a_package_at_the_root_or_in_one_folder_is_accepted(tmp_path: Path) -> None:
    for top in ("", "my_model"):
        folder = tmp_path / (top or "root")
        folder.mkdir()
        got = unpack(
            folder,
            package(
                {"config.pbtxt": PY_CONFIG, "7/model.py": "x = 1", "7/sub/w.bin": b"\0", "labels.txt": "a\nb\n"}, top
            ),
        )
        assert got.version_dir == "7" and got.version_files == ["model.py", "sub/w.bin"]
        assert set(got.model_files) == {"labels.txt"}
        assert 'name: "mine"' in got.config and "version_policy" not in got.config


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.REGTYPE:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        else:
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return out.getvalue()


@pytest.mark.parametrize(
    "data,words",
    [
        (tar_member("../x.py"), "escapes the package"),
        (tar_member("a/../../x.py"), "escapes the package"),
        (tar_member("/etc/x.py"), "escapes the package"),
        (tar_member("1/model.py", tarfile.SYMTYPE), "link or a special file"),
        (tar_member("1/model.py", tarfile.LNKTYPE), "link or a special file"),
        (tar_member("dev", tarfile.CHRTYPE), "link or a special file"),
        (package({"1/model.py": "x"}), "no config.pbtxt"),
        (package({"a/config.pbtxt": PY_CONFIG, "b/1/model.py": "x"}), "no config.pbtxt"),
        (package({"config.pbtxt": PY_CONFIG}), "exactly one numeric version folder"),
        (package({"config.pbtxt": 'name: "x"', "1/model.py": "x"}), "neither a backend nor a platform"),
        (b"\x1f\x8bnot really", "not a readable .tar.gz"),
    ],
)
def test_bad_packages_are_refused_with_the_reason(tmp_path: Path, data: bytes, words: str) -> None:
    with pytest.raises(InvalidInput) as err:
        unpack(tmp_path, data)
    assert words in err.value.message and err.value.field == "artifact"


def test_the_unpacked_size_is_bounded(tmp_path: Path) -> None:
    bomb = package({"config.pbtxt": PY_CONFIG, "1/zeros.bin": b"\0" * 2_000_000})
    assert len(bomb) < 20_000
    with pytest.raises(InvalidInput, match="unpacks to more than 1000000 bytes"):
        unpack(tmp_path, bomb, limit=1_000_000)


def _long_name_tar(claimed: int) -> bytes:
    """A small .tar.gz whose GNU long-name header claims ``claimed`` bytes (the data that follows is short)."""
    import gzip

    header = bytearray(512)
    header[0:13] = b"././@LongLink"
    header[100:108] = b"0000644\0"
    header[124:136] = f"{claimed:011o}\0".encode()
    header[156:157] = b"L"
    header[257:263] = b"ustar "
    header[148:156] = b" " * 8
    header[148:155] = f"{sum(header):06o}\0".encode()
    return gzip.compress(bytes(header) + b"a" * 512 * 4 + b"\0" * 1024)


def test_a_long_name_header_of_a_gib_is_refused_before_tarfile_reads_it(tmp_path: Path) -> None:
    """tarfile reads a GNU long name whole: a 1 MB package claiming a 1 GiB name took gigabytes."""
    data = _long_name_tar(2**30)
    assert len(data) < 10_000
    with pytest.raises(InvalidInput) as err:
        unpack(tmp_path, data, limit=10 * 2**30)
    assert "metadata entry" in err.value.message and str(2**30) in err.value.message


def test_ordinary_long_names_are_still_accepted(tmp_path: Path) -> None:
    long_name = "1/" + "w" * 200 + ".bin"
    got = unpack(tmp_path, package({"config.pbtxt": PY_CONFIG, "1/model.py": "x = 1", long_name: b"\0"}))
    assert "w" * 200 + ".bin" in got.version_files


SMUGGLED = PY_CONFIG.replace('backend: "python"', 'backend: "python"\nversion_policy: { all { } }')


@pytest.mark.parametrize(
    "extra,words",
    [
        ({"config.pbtxt.base": SMUGGLED}, "'config.pbtxt.base', a name it may not use"),
        ({"config.pbtxt.bak": SMUGGLED}, "'config.pbtxt.bak', a name it may not use"),
        ({"configs/h100.pbtxt": SMUGGLED}, "'configs/h100.pbtxt', a name it may not use"),
    ],
)
def test_a_package_cannot_bring_a_second_config(tmp_path: Path, extra: dict[str, str], words: str) -> None:
    # the agent keeps the checked config as config.pbtxt.base: a package file of that name replaced it
    with pytest.raises(InvalidInput) as err:
        unpack(tmp_path, package({"config.pbtxt": PY_CONFIG, "1/model.py": "x = 1", **extra}))
    assert words in err.value.message and err.value.field == "artifact"


def env_config(path: str) -> str:
    return PY_CONFIG + f'parameters: {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{path}" }} }}\n'


@pytest.mark.parametrize(
    "path",
    [
        "/opt/conda/envs/other.tar.gz",
        "$$TRITON_MODEL_DIRECTORY/../other_model/env.tar.gz",
        "$$TRITON_MODEL_DIRECTORY/envs/../../x.tar.gz",
        "$$TRITON_MODEL_DIRECTORY//etc/env.tar.gz",
        "$$TRITON_MODEL_DIRECTORY/",
        "$$TRITON_MODEL_DIRECTORY/1/env.tar.gz",
        "$$TRITON_MODEL_DIRECTORY/$$TRITON_MODEL_DIRECTORY/../env.tar.gz",
        "relative/env.tar.gz",
        "~/env.tar.gz",
    ],
)
def test_an_execution_env_outside_the_model_folder_is_refused(tmp_path: Path, path: str) -> None:
    files = {"config.pbtxt": env_config(path), "1/model.py": "x = 1", "env.tar.gz": b"\0"}
    with pytest.raises(InvalidInput) as err:
        unpack(tmp_path, package(files))
    assert "EXECUTION_ENV_PATH" in err.value.message and "inside the model's own folder" in err.value.message


def test_an_execution_env_inside_the_model_folder_is_accepted_when_the_package_holds_it(tmp_path: Path) -> None:
    files = {"config.pbtxt": env_config("$$TRITON_MODEL_DIRECTORY/envs/py311.tar.gz"), "1/model.py": "x = 1"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    got = unpack(tmp_path / "a", package({**files, "envs/py311.tar.gz": b"\0"}))
    assert "$$TRITON_MODEL_DIRECTORY/envs/py311.tar.gz" in got.config and set(got.model_files) == {"envs/py311.tar.gz"}
    with pytest.raises(InvalidInput) as err:
        unpack(tmp_path / "b", package(files))
    assert "which the package does not hold" in err.value.message
