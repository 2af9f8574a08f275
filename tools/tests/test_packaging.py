"""The six packages are real Python packages: declared, installed, runnable as files and modules."""
import os
import pathlib
import re
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("common", "simclr", "csimclr", "byol", "cbyol", "tools")


def test_each_pyproject_declares_every_subpackage_on_disk_and_pins_its_dependencies():
    for name in PACKAGES:
        project = tomllib.loads((ROOT / name / "pyproject.toml").read_text())
        declared = set(project["tool"]["setuptools"]["packages"])
        on_disk = {".".join((name,) + p.parent.relative_to(ROOT / name).parts)
                   for p in (ROOT / name).rglob("__init__.py")
                   if "tests" not in p.relative_to(ROOT / name).parts}
        assert declared == on_disk, (name, declared ^ on_disk)
        assert project["tool"]["setuptools"]["package-dir"] == {name: "."}
        for dep in project["project"]["dependencies"]:
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.]*", dep), (name, dep)
        if name in ("simclr", "csimclr", "byol", "cbyol"):
            assert project["project"]["dependencies"] == ["cvr-common==0.3.0"], name


def test_pinned_versions_agree_between_pyprojects_and_requirements():
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", (ROOT / "requirements.txt").read_text(),
                           re.M))
    for name in PACKAGES:
        project = tomllib.loads((ROOT / name / "pyproject.toml").read_text())
        deps = project["project"]["dependencies"] + sum(
            project["project"].get("optional-dependencies", {}).values(), [])
        for dep in deps:
            pkg, version = dep.split("==")
            if not pkg.startswith("cvr-"):
                assert pins.get(pkg) == version, (name, dep, pins.get(pkg))


def test_the_installed_packages_are_this_checkout_and_trainers_run_as_modules(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    code = "import common, cbyol, tools; print(common.__file__, cbyol.__file__, tools.__file__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for path in r.stdout.split():
        assert pathlib.Path(path).resolve().is_relative_to(ROOT), path
    for argv in (["-m", "cbyol.train"], [str(ROOT / "simclr" / "train.py")]):
        r = subprocess.run([sys.executable, *argv, "--print_config"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert '"preset":' in r.stdout
    for source in list(ROOT.glob("*/*.py")):
        assert "sys.path.insert" not in source.read_text() or source.parent.name == "tests", source
