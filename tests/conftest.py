"""Shared pytest setup: fixture modules, one per area, are loaded when present.

Each area keeps its (session-scoped, expensive) fixtures in ``tests/fixtures_<area>.py`` so that
the TensorFlow import, the op build, the simulated log and the trained tiny models are made once
per test session and shared.
"""
import os
import pathlib

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_HERE = pathlib.Path(__file__).parent
pytest_plugins = [
    f"tests.{name}"
    for name in ("fixtures_op", "fixtures_data", "fixtures_model", "fixtures_serving")
    if (_HERE / f"{name}.py").exists()
]
