"""build.py: the add-on zip (manifest, wheels, vendored shared/), the wheel cache, setup's stamp,
and the exit codes of `test` and `demo`."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

import build

ROOT = Path(build.__file__).resolve().parent
BLENDER_PLATFORM = {  # manifest platform -> sysconfig.get_platform() of that Blender
    "linux-x64": "linux-x86_64",
    "windows-x64": "win-amd64",
    "macos-arm64": "macosx-11.0-arm64",
    "macos-x64": "macosx-11.0-x86_64",
}


def _manifest(zip_path: Path) -> dict:
    with zipfile.ZipFile(zip_path) as zf:
        return tomllib.loads(zf.read("blender_manifest.toml").decode("utf-8"))


def test_zip_name_and_manifest_fields(built_addon):
    source = tomllib.loads((ROOT / "blender_addon" / "blender_manifest.toml").read_text())
    m = _manifest(built_addon)
    assert built_addon.name == f"splatbridge-{source['version']}.zip"
    assert m["schema_version"] == "1.0.0"
    assert m["id"] == "splatbridge" and m["type"] == "add-on"
    assert m["version"] == source["version"]
    assert m["blender_version_min"] == "4.2.0"
    assert set(m["permissions"]) >= {"network", "files"}
    assert all(not reason.endswith(".") for reason in m["permissions"].values())
    assert sorted(m["platforms"]) == sorted(["linux-x64", "windows-x64", "macos-arm64", "macos-x64"])


def test_every_listed_wheel_is_in_the_zip_and_none_unlisted(built_addon):
    m = _manifest(built_addon)
    with zipfile.ZipFile(built_addon) as zf:
        in_zip = {n for n in zf.namelist() if n.endswith(".whl")}
        for name in in_zip:  # each wheel is a readable zip itself
            with zf.open(name) as fh, zipfile.ZipFile(fh) as inner:
                assert any(p.endswith(".dist-info/WHEEL") for p in inner.namelist()), name
    listed = {w.removeprefix("./") for w in m["wheels"]}
    assert listed == in_zip
    assert all(w.startswith("./wheels/") for w in m["wheels"])


@pytest.mark.parametrize("python", [(3, 11), (3, 13)])
@pytest.mark.parametrize("platform", list(BLENDER_PLATFORM))
def test_blender_picks_one_wheel_of_each_package(built_addon, monkeypatch, platform, python):
    """Blender's own install-time filter (bl_pkg), run as that platform and Python, finds exactly
    one pyzmq, one msgpack and one zstandard wheel: cp311 for Blender 4.2-5.0, cp313 (or abi3) for 5.1+."""
    import bpy  # noqa: F401  (puts Blender's bundled add-ons on sys.path)
    import bl_pkg.bl_extension_ops as ext_ops
    m = _manifest(built_addon)
    monkeypatch.setattr(sysconfig, "get_platform", lambda: BLENDER_PLATFORM[platform])
    monkeypatch.setattr(sys, "version_info", python + (0, "final", 0))
    chosen = ext_ops._extensions_wheel_filter_for_this_system(m["wheels"])
    monkeypatch.undo()
    names = sorted(w.rsplit("/", 1)[-1].split("-")[0].lower() for w in chosen)
    assert names == ["msgpack", "pyzmq", "zstandard"], (platform, python, chosen)
    # build.py's own check agrees with Blender's filter on every wheel
    for wheel in m["wheels"]:
        parsed = build.WheelName.parse(wheel.rsplit("/", 1)[-1])
        assert parsed.installs_on(platform, "%d.%d" % python) == (wheel in chosen), wheel


def test_shared_package_and_addon_code_are_inside(built_addon):
    with zipfile.ZipFile(built_addon) as zf:
        names = set(zf.namelist())
        info = zf.read("build_info.json").decode()
    for path in sorted((ROOT / "shared").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if "__pycache__" not in rel:
            assert rel in names, f"{rel} missing from the zip"
    for path in sorted((ROOT / "blender_addon").glob("*.py")):
        assert path.name in names
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert str(ROOT) in info  # where the local backend's source is found by default


def test_backend_source_is_inside_byte_for_byte(built_addon):
    """The extension carries the backend's source for Install Local Backend: backend/, shared/, the pinned
    requirements and pyproject.toml, under backend_source/, each file equal to the repository's."""
    expected = [p for d in ("backend", "shared") for p in sorted((ROOT / d).rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    expected += [ROOT / "requirements-backend.txt", ROOT / "pyproject.toml", ROOT / "README.md"]
    with zipfile.ZipFile(built_addon) as zf:
        inside = {n for n in zf.namelist() if n.startswith("backend_source/")}
        for path in expected:
            name = "backend_source/" + path.relative_to(ROOT).as_posix()
            assert zf.read(name) == path.read_bytes(), f"{name} differs from the repository's"
    assert inside == {"backend_source/" + p.relative_to(ROOT).as_posix() for p in expected}


def test_requirements_include_the_backend_pins(tmp_path, monkeypatch):
    """requirements.txt includes requirements-backend.txt (-r): its pins count for setup and the wheels,
    and a change there redoes setup."""
    for name in ("requirements.txt", "requirements-backend.txt"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    monkeypatch.setattr(build, "REQUIREMENTS", tmp_path / "requirements.txt")
    assert build.requirement_files() == [tmp_path / "requirements.txt", tmp_path / "requirements-backend.txt"]
    pins = build.pinned_versions()
    assert {"torch", "gsplat", "pyzmq", "msgpack", "bpy", "pytest"} <= set(pins)
    before = build.requirements_hash()
    backend = tmp_path / "requirements-backend.txt"
    backend.write_text(backend.read_text().replace(f"msgpack=={pins['msgpack']}", "msgpack==0.0.1"))
    assert build.pinned_versions()["msgpack"] == "0.0.1"
    assert build.requirements_hash() != before


def test_blender_validator_accepts_the_zip(built_addon):
    script = build.blender_ext_script()
    assert script is not None, "bpy's blender_ext.py not found in the venv"
    proc = subprocess.run([sys.executable, str(script), "validate", str(built_addon)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_validation_catches_a_missing_wheel(built_addon, tmp_path):
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(built_addon) as src, zipfile.ZipFile(broken, "w") as dst:
        dropped = next(n for n in src.namelist() if n.startswith("wheels/pyzmq-") and "win_amd64" in n)
        for item in src.infolist():
            if item.filename != dropped:
                dst.writestr(item, src.read(item))
    problems = build.validate_addon_zip(broken)
    assert any(f"listed wheel ./{dropped} is not in the zip" in p for p in problems), problems


def test_rebuild_is_offline(built_addon, tmp_path):
    """The wheel cache makes a second build need no pip and no network (--offline fails rather
    than download)."""
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "addon", "--offline", "--dist", str(tmp_path),
                           "--wheel-cache", str(ROOT / "dist" / "wheel-cache")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "downloading" not in proc.stdout
    assert _manifest(tmp_path / built_addon.name)["wheels"] == _manifest(built_addon)["wheels"]


def test_offline_build_with_empty_cache_names_the_missing_wheel(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "addon", "--offline", "--dist", str(tmp_path),
                           "--wheel-cache", str(tmp_path / "empty-cache")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "offline build, but the wheel cache" in proc.stderr and "pyzmq==" in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("*.zip"))


def test_manifest_with_replaces_lists_before_the_first_table():
    text = ('id = "x"\nwheels = [\n  "./wheels/old.whl",\n]\nplatforms = ["linux-x64"]\n'
            'license = [\n  "SPDX:GPL-3.0-or-later",\n]\n\n[permissions]\nfiles = "Read files"\n')
    out = build.manifest_with(text, ["linux-x64", "windows-x64"], ["./wheels/a.whl", "./wheels/b.whl"])
    parsed = tomllib.loads(out)
    assert parsed["wheels"] == ["./wheels/a.whl", "./wheels/b.whl"]
    assert parsed["platforms"] == ["linux-x64", "windows-x64"]
    assert parsed["license"] == ["SPDX:GPL-3.0-or-later"] and parsed["permissions"] == {"files": "Read files"}
    assert "old.whl" not in out


# -- setup / test / demo -------------------------------------------------------------------


def _fake_venv(tmp_path: Path, monkeypatch) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setenv("SPLATBRIDGE_VENV", str(venv))
    return venv


def test_setup_is_a_no_op_when_the_stamp_matches(tmp_path, monkeypatch):
    venv = _fake_venv(tmp_path, monkeypatch)
    (venv / build.STAMP_NAME).write_text(build.requirements_hash() + "\n")

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"setup ran {args[0]} although the stamp matches")
    monkeypatch.setattr(build.subprocess, "run", no_subprocess)
    assert build.setup() == venv / "bin" / "python"


def test_setup_installs_requirements_with_a_local_cpu_torch(tmp_path, monkeypatch):
    # pip is not run: a real install of requirements.txt (CPU torch alone is ~200 MB) takes
    # minutes on 2 cores and needs the network; the test checks the commands setup() would run.
    venv = _fake_venv(tmp_path, monkeypatch)
    (venv / build.STAMP_NAME).write_text("stale\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    torch_version = build.pinned_versions()["torch"]
    (wheels / f"torch-{torch_version}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    monkeypatch.setattr(build, "_pip_find_links", lambda: [wheels])
    monkeypatch.setattr(build, "_installed_version", lambda python, dist: None)
    calls = []

    def fake_run(cmd, *args, **kwargs):
        if "-c" in cmd and "pip" in cmd:
            calls.append((list(cmd), Path(cmd[cmd.index("-c") + 1]).read_text()))
        else:
            calls.append((list(cmd), None))
        stdout = "3.11\n" if "sys.version_info" in " ".join(map(str, cmd)) else ""
        return subprocess.CompletedProcess(cmd, 0, stdout, "")
    monkeypatch.setattr(build.subprocess, "run", fake_run)
    build.setup()
    pip = [c for c in calls if "pip" in c[0] and "install" in c[0]]
    assert len(pip) == 1
    cmd, constraint = pip[0]
    assert cmd[:4] == [str(venv / "bin" / "python"), "-m", "pip", "install"]
    assert str(build.REQUIREMENTS) in cmd
    assert constraint == f"torch=={torch_version}+cpu\n"
    assert (venv / build.STAMP_NAME).read_text().strip() == build.requirements_hash()


# In the test/demo command tests below, setup() (which creates or updates the venv: minutes of
# pip) is replaced by the interpreter running these tests, which has everything installed.


def _pytest_args(tmp_path: Path, test_file: str, body: str) -> list[str]:
    """Arguments for a pytest run of one small file, isolated from the repo's config and conftest."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / test_file).write_text(body)
    return ["-q", "-p", "no:cacheprovider", "--noconftest", "-c", str(tmp_path / "pytest.ini"),
            "--rootdir", str(tmp_path), str(tmp_path / test_file)]


def test_test_command_treats_no_tests_as_failure(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(build, "setup", lambda force=False: Path(sys.executable))
    assert build.run_tests(_pytest_args(tmp_path, "test_none.py", "x = 1\n")) == 1
    assert "no tests" in capsys.readouterr().out


def test_test_command_passes_pytest_exit_code_through(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "setup", lambda force=False: Path(sys.executable))
    assert build.run_tests(_pytest_args(tmp_path, "test_fails.py", "def test_fails():\n    assert 1 == 2\n")) == 1
    assert build.run_tests(_pytest_args(tmp_path, "test_passes.py", "def test_passes():\n    pass\n")) == 0


def test_demo_without_a_demo_script_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(build, "setup", lambda force=False: Path(sys.executable))
    monkeypatch.setattr(build, "DEMO_SCRIPT", ROOT / "demo" / "no_such_demo.py")
    assert build.run_demo([]) == 2
    assert "does not exist" in capsys.readouterr().err
