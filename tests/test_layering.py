"""The imports run one way: logs → beam_pipelines → the model package → export → serving, with
the drivers of the whole system (the demo, the A/B test, the command line) on top.

A module that imports upward would tie a lower stage to a part that stands on it: the model
package to the server, the server to the A/B test. Read from the source, so it holds for
imports inside functions too.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The drivers: they may import every stage; no stage may import them.
DRIVERS = ("tfrec_kuai.online", "tfrec_kuai.demo", "tfrec_kuai.cli", "tfrec_kuai.commands")


def _modules(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        yield name, path


def _imports(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _under(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(package, forbidden, exempt=()):
    return [f"{name} imports {imported}" for name, path in _modules(package)
            if not _under(name, exempt) for imported in sorted(_imports(path)) if _under(imported, forbidden)]


def test_no_stage_imports_the_drivers():
    for package in ("beam_pipelines", "serving"):
        assert _violations(package, DRIVERS) == []
    assert _violations("tfrec_kuai", DRIVERS, exempt=DRIVERS) == []


def test_the_model_package_does_not_import_the_server():
    assert _violations("tfrec_kuai", ("serving",), exempt=DRIVERS) == []


def test_the_beam_job_imports_neither_the_model_nor_the_server():
    # Its one use of tfrec_kuai is the contract's names (schema) and the native history builder.
    allowed = ("tfrec_kuai.schema", "tfrec_kuai.quiet", "tfrec_kuai.data.history", "tfrec_kuai._native",
               "tfrec_kuai.errors")
    packages = ("tfrec_kuai", "tfrec_kuai.data")  # their __init__ load no TensorFlow (below)
    found = [v for v in _violations("beam_pipelines", ("tfrec_kuai", "serving"))
             if not _under(v.split(" imports ")[1], allowed) and v.split(" imports ")[1] not in packages]
    assert found == []


def test_the_packages_the_beam_job_passes_through_import_nothing_heavy():
    # Importing tfrec_kuai.data.history runs tfrec_kuai/__init__.py and tfrec_kuai/data/__init__.py:
    # neither may pull TensorFlow (or anything of the model) into a Beam worker.
    assert _imports(ROOT / "tfrec_kuai" / "data" / "__init__.py") == set()
    assert _imports(ROOT / "tfrec_kuai" / "__init__.py") == {"os"}


def test_the_package_root_holds_only_the_drivers_and_the_shared_names():
    # Every stage has its folder (sim, data, layers, models, train, evaluate, export, online); the
    # root keeps the drivers, the contract's names and what the native build writes beside ops.py.
    root = {p.stem for p in (ROOT / "tfrec_kuai").glob("*.py")}
    assert root == {"__init__", "cli", "demo", "config", "schema", "errors", "quiet", "ops"}


def test_serving_stands_on_the_op_and_the_examples_reader_not_on_the_model_code():
    # The server loads SavedModels (and the op they call); the client reads requests from an
    # examples folder through the one reader of it. Neither needs the models, training or export.
    allowed = ("tfrec_kuai.ops", "tfrec_kuai.quiet", "tfrec_kuai.errors", "tfrec_kuai.data.examples")
    found = [v for v in _violations("serving", ("tfrec_kuai",))
             if not _under(v.split(" imports ")[1], allowed) and v.split(" imports ")[1] not in ("tfrec_kuai",
                                                                                              "tfrec_kuai.data")]
    assert found == []
