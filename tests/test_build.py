"""build.py: the add-on zip (manifest, wheels, vendored shared/), the wheel cache, setup's stamp,
and the exit codes of `test` and `demo`."""
from __future__ import annotations

import os
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


def test_lint_fails_on_a_finding_of_either_checker_and_prints_it(monkeypatch, tmp_path, capfd):
    """`build.py lint` runs ruff and mypy with pyproject.toml's settings; a problem found by either one
    alone fails it (exit 1) and is printed with its code; clean code passes."""
    monkeypatch.setattr(build, "setup", lambda force=False: Path(sys.executable))
    clean = tmp_path / "clean.py"
    clean.write_text("def half(x: float) -> float:\n    return x / 2\n")
    assert build.run_lint(paths=[str(clean)]) == 0
    assert "ruff and mypy clean" in capfd.readouterr().out

    unused = tmp_path / "unused_import.py"          # ruff's F401; mypy has nothing to say
    unused.write_text("import os\n\n\ndef half(x: float) -> float:\n    return x / 2\n")
    assert build.run_lint(paths=[str(unused)]) == 1
    out = capfd.readouterr().out
    assert "F401" in out and "problems found by ruff (exit 1)" in out and "mypy" not in out.split("problems")[-1]

    wrong = tmp_path / "wrong_return.py"             # mypy's return-value; ruff has nothing to say
    wrong.write_text("def half(x: float) -> int:\n    return x / 2\n")
    assert build.run_lint(paths=[str(wrong)]) == 1
    out = capfd.readouterr().out
    assert "[return-value]" in out and "problems found by mypy (exit 1)" in out


# ------------------------------------------------------------------------------------------------
# blender_addon/shared: a symlink in the source tree, real files in the zip and the assembled add-on
# ------------------------------------------------------------------------------------------------

def test_source_tree_add_on_imports_resolve():
    """``blender_addon/shared`` is the relative link ``../shared``, so every ``from .shared.x import y``
    (and ``from ..shared.x``) of the add-on's source resolves to a file defining ``y``, as an editor or a
    type checker run on the source tree sees it."""
    import ast
    link = ROOT / "blender_addon" / "shared"
    assert link.is_symlink() and Path(os.readlink(link)) == Path("../shared")
    checked = 0
    for path in sorted((ROOT / "blender_addon").rglob("*.py")):
        rel = path.relative_to(ROOT / "blender_addon")
        if rel.parts[0] == "shared":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not node.level or not (node.module or "").startswith("shared"):
                continue
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            target = base.joinpath(*node.module.split("."))
            module = target.with_suffix(".py") if target.with_suffix(".py").is_file() else target / "__init__.py"
            assert module.is_file(), f"{rel}: {node.module} does not resolve in the source tree"
            defined = {n.id for n in ast.walk(ast.parse(module.read_text())) if isinstance(n, ast.Name)} | \
                {n.name for n in ast.walk(ast.parse(module.read_text()))
                 if isinstance(n, (ast.FunctionDef, ast.ClassDef))} | \
                {a.asname or a.name for n in ast.walk(ast.parse(module.read_text()))
                 if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
            for alias in node.names:
                assert alias.name in defined or (target / f"{alias.name}.py").is_file(), \
                    f"{rel}: {alias.name} not found in {node.module}"
                checked += 1
    assert checked >= 10


def _no_links(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_symlink()]


def test_assembled_add_on_has_real_shared_files(tmp_path):
    pkg = build.assemble_addon(tmp_path)
    assert _no_links(pkg) == []
    for src in sorted((ROOT / "shared").rglob("*.py")):
        rel = src.relative_to(ROOT / "shared")
        if "__pycache__" not in rel.parts:
            assert (pkg / "shared" / rel).read_bytes() == src.read_bytes(), rel


def test_zip_has_no_symlink(built_addon):
    with zipfile.ZipFile(built_addon) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos if (i.external_attr >> 16) & 0o170000 == 0o120000] == []
        assert zf.read("shared/jobspec.py") == (ROOT / "shared" / "jobspec.py").read_bytes()


def test_validation_catches_a_symlink_in_the_zip(built_addon, tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(built_addon) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info.filename))
        link = zipfile.ZipInfo("shared_link")
        link.external_attr = (0o120777 << 16)
        dst.writestr(link, "../shared")
    assert "symbolic links in the zip: ['shared_link']" in build.validate_addon_zip(bad)


def test_a_shared_folder_of_its_own_is_refused(tmp_path, monkeypatch):
    addon = tmp_path / "blender_addon"
    (addon / "shared").mkdir(parents=True)
    (addon / "__init__.py").write_text("")
    monkeypatch.setattr(build, "ADDON_SRC", addon)
    with pytest.raises(build.BuildError, match="must be the symlink to ../shared"):
        build._addon_files()
    (addon / "shared").rmdir()
    (addon / "shared").symlink_to(tmp_path)
    with pytest.raises(build.BuildError, match="expected ../shared"):
        build._addon_files()
    (addon / "shared").unlink()
    (addon / "shared").symlink_to(Path("..") / ".." / "shared")
    monkeypatch.setattr(build, "SHARED_SRC", tmp_path.parent / "shared")
    (addon / "stray").symlink_to(addon / "__init__.py")
    with pytest.raises(build.BuildError, match="stray is a symbolic link"):
        build._addon_files()


# ------------------------------------------------------------------------------------------------
# compat selection by marker
# ------------------------------------------------------------------------------------------------

TORCH_MODULES = {"torch", "backend", "gsplat", "diffusers"}
# torch-free by their imports, yet not for the compat run (the reason each)
NOT_COMPAT = {
    "test_build.py": "builds the add-on zip with the main venv's Blender validator",
    "test_demo.py": "the demo trains splats (torch) in its backend",
    "test_e2e_train.py": "trains splats (torch) in its backend subprocess",
    "test_e2e_capture.py": "solves cameras (pycolmap) and trains splats (torch) in its backend subprocess",
    "test_backend_process.py": "starts `python -m backend serve` from the test's interpreter",
    "test_backend_install.py": "installs the backend's requirements with Blender's Python (this machine's local "
                               "CPU torch wheel is cp311: bpy 5.0.1's) and trains through it",
}


def _imports(path: Path, module_level_only: bool) -> set[str]:
    import ast
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            out |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            out.add(n.module.split(".")[0])
    return out


def _needs_torch(path: Path, seen: set[str] | None = None, top: bool = True) -> bool:
    """``path`` imports torch, the backend, gsplat or diffusers (anywhere in the test module itself;
    module-level imports of the tests/ modules it imports, transitively)."""
    seen = seen if seen is not None else set()
    names = _imports(path, module_level_only=not top)
    if names & TORCH_MODULES:
        return True
    for name in sorted(names):
        local = path.parent / f"{name}.py"
        if local.is_file() and name not in seen:
            seen.add(name)
            if _needs_torch(local, seen, top=False):
                return True
    return False


def _module_marked_torch(path: Path) -> bool:
    """The module's ``pytestmark`` says ``torch`` (the whole module declares it needs torch)."""
    import ast
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            return any(isinstance(n, ast.Attribute) and n.attr == "torch" for n in ast.walk(node.value))
    return False


def test_every_torch_free_test_module_is_in_the_compat_run():
    """A new test module that needs no torch is marked ``bpy_only`` (or ``torch`` as a whole, or listed in
    NOT_COMPAT with a reason), so `build.py compat` cannot silently leave it out."""
    marked = {p.name for p in build.marked_test_files()}
    missing = [p.name for p in sorted((ROOT / "tests").glob("test_*.py"))
               if p.name not in marked and p.name not in NOT_COMPAT and not _needs_torch(p)
               and not _module_marked_torch(p)]
    assert missing == [], f"torch-free test modules without the bpy_only marker: {missing}"
    assert not marked & set(NOT_COMPAT)
    assert {"test_addon_install.py", "test_spec_props.py", "test_render_math.py", "test_jobspec.py"} <= marked
    assert _needs_torch(ROOT / "tests" / "test_e2e_generate.py")           # via tiny_models
    assert not _needs_torch(ROOT / "tests" / "test_capture.py")            # helpers imports test_server lazily
    assert _module_marked_torch(ROOT / "tests" / "test_split_by_object.py")
    assert not _module_marked_torch(ROOT / "tests" / "test_final_render.py")   # only some of its tests


def test_compat_selects_by_marker(tmp_path):
    (tmp_path / "test_a.py").write_text("import pytest\npytestmark = pytest.mark.bpy_only\n")
    (tmp_path / "test_b.py").write_text("import pytest\n\n@pytest.mark.bpy_only\ndef test_x():\n    pass\n")
    (tmp_path / "test_c.py").write_text("import torch\n# bpy_only in a comment is not a marker\n")
    assert [p.name for p in build.marked_test_files(tests=tmp_path)] == ["test_a.py", "test_b.py"]
