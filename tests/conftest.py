"""Shared pytest setup: the fixture modules, one per area.

Each area keeps its (session-scoped, expensive) fixtures in ``tests/fixtures_<area>.py`` so that
the simulated log, the examples folder, the trained tiny models and the exports are made once per
test session and shared.

``make test`` runs the suite on every core (``pytest -n auto --dist loadfile``, pytest-xdist):
each worker process is its own test session, so a session fixture is built once per worker that
needs it. A test module runs whole in one worker, and modules that share an expensive fixture are
scheduled as one unit (``SHARED_FIXTURE_GROUPS``) so that it is not built twice.
"""
import os
import pathlib

import pytest

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = ["tests.fixtures_data", "tests.fixtures_model", "tests.fixtures_serving"]

# Fixtures that take tens of seconds to build (trained models, exports): a test using one is slow
# (``make test-fast`` leaves it out; ``make test`` and CI run it).
SLOW_FIXTURES = {"kuai_exports", "export_model_dirs", "tiny_ranking_model_dir", "tiny_retrieval_model_dir"}

# Modules that share an expensive session fixture (``kuai_exports``: two exports of trained models,
# about 2 minutes on 2 cores) are one scheduling unit.
SHARED_FIXTURE_GROUPS = {"test_export": "kuai_exports", "test_serving_export": "kuai_exports",
                         "test_abtest": "kuai_exports", "test_abtest_served": "kuai_exports",
                         "test_feed_rules": "kuai_exports", "test_blend": "kuai_exports",
                         "test_request_logging": "kuai_exports"}


@pytest.hookimpl(tryfirst=True)   # before ``-m "not slow"`` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.slow)


def scheduling_unit(nodeid):
    """The unit a worker runs whole: the test's module, or its shared-fixture group."""
    module = pathlib.Path(nodeid.split("::", 1)[0]).stem
    return SHARED_FIXTURE_GROUPS.get(module, module)


@pytest.hookimpl(optionalhook=True)   # a pytest-xdist hook: absent when the suite runs without it
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the groups above (xdist's own ``loadgroup`` marks have no effect
    with pytest 9, which no longer lets xdist rename the node ids it groups by)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFixtureScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid):
            return scheduling_unit(nodeid)

    return SharedFixtureScheduling(config, log)
