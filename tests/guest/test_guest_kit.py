"""Kit bookkeeping (manifest, up-to-date check) and the `pvhvm image` command, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pvhvm.cli.image import image
from pvhvm.guest import kit as kit_module
from pvhvm.guest.kit import OUTPUTS, Kit, build_kit, is_built, recipe_digest


def fake_kit(directory: Path) -> Kit:
    outputs = {}
    for name in OUTPUTS:
        (directory / name).write_bytes(name.encode())
        outputs[name] = {"size": len(name), "sha256": "-"}
    (directory / "manifest.json").write_text(json.dumps(
        {"recipe": recipe_digest(), "outputs": outputs}))
    return Kit(directory)


def test_is_built(tmp_path: Path) -> None:
    kit = fake_kit(tmp_path)
    assert is_built(kit)
    (tmp_path / "boot.img").write_bytes(b"changed size")
    assert not is_built(kit)


def test_stale_recipe_or_missing_manifest(tmp_path: Path) -> None:
    kit = fake_kit(tmp_path)
    manifest = json.loads(kit.manifest_path.read_text())
    manifest["recipe"] = "old"
    kit.manifest_path.write_text(json.dumps(manifest))
    assert not is_built(kit)
    kit.manifest_path.write_text("[]")
    assert not is_built(kit)
    kit.manifest_path.unlink()
    assert not is_built(kit)


def test_build_of_a_built_kit_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_kit(tmp_path)

    def no_build(*args: object) -> None:
        raise AssertionError("should not rebuild")

    monkeypatch.setattr(kit_module, "_build", no_build)
    messages: list[str] = []
    assert build_kit(tmp_path, progress=messages.append) == Kit(tmp_path.resolve())
    assert messages == ["kit is up to date"]


def test_cli_build_up_to_date(tmp_path: Path) -> None:
    fake_kit(tmp_path)
    result = CliRunner().invoke(image, ["build", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    assert "boot.img" in result.output


def test_cli_rejects_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    result = CliRunner().invoke(image, ["build", str(path)])
    assert result.exit_code == 1
    assert "not a directory" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_reports_build_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object) -> None:
        raise kit_module.GuestImageError("apt-get download failed")

    monkeypatch.setattr(kit_module, "_build", failing)
    result = CliRunner().invoke(image, ["build", str(tmp_path / "new"), "--force"])
    assert result.exit_code == 1
    assert "Error: apt-get download failed" in result.output
    assert isinstance(result.exception, SystemExit)
