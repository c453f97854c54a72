"""The suite's own scheduling (tests/conftest.py): a module that uses the export fixture must be in
its shared scheduling unit, or ``make test`` builds the two exports once more in another worker."""
import pathlib
import re

from tests.conftest import SHARED_FIXTURE_GROUPS, scheduling_unit

TESTS = pathlib.Path(__file__).parent


def test_modules_using_the_export_fixture_are_one_scheduling_unit():
    users = {path.stem for path in TESTS.glob("test_*.py")
             if path.name != pathlib.Path(__file__).name
             and re.search(r"\b(kuai_exports|export_model_dirs)\b", path.read_text())}
    assert users, "no test module uses the export fixture: the group below is stale"
    assert users == {module for module, group in SHARED_FIXTURE_GROUPS.items() if group == "kuai_exports"}
    assert {scheduling_unit(f"tests/{module}.py::test_x[a]") for module in users} == {"kuai_exports"}
    assert scheduling_unit("tests/test_ops.py::test_x") == "test_ops"
