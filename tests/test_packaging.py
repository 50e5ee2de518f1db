"""uds installs under one name: the roles are subpackages of `uds`, so a
user's own `wire.py` or `client.py` cannot shadow them, and nothing but the
`uds` package and the `uds` command lands in site-packages."""
import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
ROLES = ["master", "loadbalancer", "storage", "worker"]


def _run(args, cwd, timeout=60):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_roles_run_from_a_folder_with_modules_of_the_same_names(tmp_path):
    for name in ["wire", "client", *ROLES]:
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('the folder\\'s own {name}.py was imported')\n")
    result = _run(["-m", "uds.master", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--cluster" in result.stdout
    result = _run(["-c", "from uds import client; import uds.wire; "
                          "print(client.connect.__module__, uds.wire.encode.__module__)"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["uds.client.api", "uds.wire.codec"]


def test_the_wheel_holds_only_the_uds_package(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--wheel-dir", str(tmp_path), str(ROOT)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = tmp_path.glob("uds-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(name).decode() for name in names
                            if name.endswith(".dist-info/entry_points.txt"))
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"uds"}
    for role in ["client", "wire", *ROLES]:
        assert f"uds/{role}/__init__.py" in names
    assert any(name.startswith("uds/wire/_wire_cffi") for name in names)
    assert "uds = uds.client.cli:main" in entry_points


def test_every_role_runs_as_python_dash_m_uds_role_and_documents_its_options():
    for role in ROLES:
        result = _run(["-m", f"uds.{role}", "--help"], ROOT)
        assert result.returncode == 0, result.stderr
        assert "--cluster" in result.stdout and f"python -m uds.{role}" in result.stdout
    result = _run(["-m", "uds.client.cli", "--help"], ROOT)
    assert result.returncode == 0, result.stderr
    assert "keys" in result.stdout
