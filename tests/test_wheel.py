"""The built wheel, installed in a fresh virtual environment, runs outside the source tree.

An editable install hides packaging mistakes (the source tree is on the path), and a Dataflow
worker installs the package from ``--setup_file``, so this builds the real wheel
(``pip wheel --no-deps --no-build-isolation .``: ``cc/`` compiled by CMake, reusing
``build/cmake``), installs it into a new virtual environment and, from a folder outside the
source tree, runs ``tfrec-kuai simulate`` (which reads the packaged KuaiRand-Pure tables), the Beam
job, a few training steps of both stages (the packaged default configs) and the fused export
(the packaged op library), then serves the export with ``python -m serving.server`` and gets a
recommendation over gRPC.

The new environment gets the pinned dependencies of the project's ``.venv`` without its editable
tfrec-kuai: a ``.pth`` file adds a folder of links to every entry of ``.venv``'s site-packages
except tfrec-kuai's own (its ``__editable__`` finder and ``.pth``, its dist-info). Installing them
again from an index would need the network and minutes, and would test pip, not this package.
"""
import glob
import json
import os
import subprocess
import sys
import sysconfig

import pytest

from tests.test_logs_only import quiet_env
from tfrec_kuai import demo

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN = ("tfrec_kuai", "tfrec-kuai", "__editable__", "beam_pipelines", "serving")


def dependencies_without_this_package(folder):
    """A folder of links to the entries of this environment's site-packages, tfrec-kuai's left out."""
    site = sysconfig.get_paths()["purelib"]
    os.makedirs(folder)
    for name in os.listdir(site):
        if name.startswith(OWN) or name.endswith(".pth") or name == "__pycache__":
            continue
        os.symlink(os.path.join(site, name), os.path.join(folder, name))
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv folder, wheel build output) with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", ".",
                            "-w", str(root / "dist")], cwd=ROOT, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = glob.glob(str(root / "dist" / "tfrec_kuai-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    new_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(new_site, "_project_dependencies.pth"), "w") as f:
        f.write(dependencies_without_this_package(str(root / "dependencies")) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                    wheels[0]], check=True, capture_output=True)
    return venv, new_site, build.stdout + build.stderr, wheels[0]


def clean_env():
    env = quiet_env()
    env.pop("PYTHONPATH", None)
    return env


def test_the_build_lists_every_package_and_ships_the_data(installed):
    import zipfile
    _venv, _site, log, wheel = installed
    assert "is absent from the `packages` configuration" not in log
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("tfrec_kuai/configs/ranking.json", "tfrec_kuai/configs/retrieval.json",
                 "tfrec_kuai/data/kuairand_pure/video_features_basic_pure.csv",
                 "tfrec_kuai/data/kuairand_pure/user_features_pure.csv", "serving/configs/models.config",
                 "tfrec_kuai/_fwa_ops.so"):
        assert path in names, path


def test_the_installed_package_runs_outside_the_source_tree(installed, tmp_path):
    venv, new_site, _log, _wheel = installed
    python, env = str(venv / "bin" / "python"), clean_env()
    where = subprocess.run(
        [python, "-c", "import json, os, sys, tfrec_kuai, serving, beam_pipelines, tfrec_kuai.data.examples;"
                       "print(json.dumps([os.path.realpath(p) for p in sys.path]));"
                       "[print(m.__file__) for m in (tfrec_kuai, serving, beam_pipelines, tfrec_kuai.data.examples)]"],
        cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout.splitlines()
    assert not [p for p in json.loads(where[0]) if p.startswith(ROOT + os.sep) or p == ROOT], where[0]
    for module_file in where[1:]:
        assert module_file.startswith(new_site), module_file

    steps = demo.pipeline_steps(str(tmp_path / "run"), impressions=400, seed=2, epochs=1, history_length=10,
                                python=python, cli=[str(venv / "bin" / "tfrec-kuai")],
                                simulate_args=("--users", "8", "--days", "3", "--no_progress"),
                                beam_args=("--eval_days", "1"),
                                train_args=("--steps_per_epoch", "1", "--batch_size", "32"))
    wanted = [(title, command) for title, command in steps
              if not title.startswith("evaluate") and "portable" not in title]
    assert len(wanted) == 5
    for title, command in wanted:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{title}:\n{done.stderr[-3000:]}"
    run = tmp_path / "run"
    with demo.ServerProcess(str(run / "serving" / "kuai"), python=python, cwd=str(tmp_path), env=env) as server:
        server.wait_available()
        (_, outputs), = demo.recommend_for_users(server.port, str(run / "examples"), users=1, show=3)
    assert outputs["video_id"].shape[1] > 0
