"""docs/errors.md names a test for every bad input; each named test must exist.

The table is the bad-input contract a user reads; a row whose test was renamed or removed would
claim a check that no longer runs. Rows name tests as ``FILE.py::test_name`` or, for the file of
the file the section's note names, a bare ``::test_name``; a ``[param]`` suffix names one case of a parametrised test.
"""
import ast
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, os.pardir, "docs", "errors.md")
SECTION_FILE = re.compile(r"Tests are in `tests/(test_\w+\.py)`")
REFERENCE = re.compile(r"`(?:(?:tests/)?(test_\w+\.py))?::(test_\w+)(?:\[[^\]]*\])?`")


def _test_functions(filename):
    with open(os.path.join(HERE, filename), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def _references():
    """``(file, test, line number)`` for every test a row of docs/errors.md names."""
    refs, section_file = [], None
    with open(DOC, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.startswith("## "):
                section_file = None
            match = SECTION_FILE.search(line)
            if match:
                section_file = match.group(1)
            if not line.startswith("|"):
                continue
            for filename, test in REFERENCE.findall(line):
                refs.append((filename or section_file, test, number))
    return refs


def test_every_row_names_a_test_that_exists():
    refs = _references()
    assert len(refs) >= 40, "docs/errors.md lost its rows"
    missing = []
    cache = {}
    for filename, test, number in refs:
        assert filename, f"docs/errors.md:{number}: {test} names no file and its section has none"
        if filename not in cache:
            cache[filename] = _test_functions(filename) if os.path.exists(os.path.join(HERE, filename)) else set()
        if test not in cache[filename]:
            missing.append(f"docs/errors.md:{number}: tests/{filename}::{test}")
    assert not missing, "tests named in docs/errors.md that do not exist:\n" + "\n".join(missing)
