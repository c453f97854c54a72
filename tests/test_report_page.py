"""``tfrec-kuai report`` renders in headless Chromium with its figures (``tests/chromium.py``).

The report's content is checked end to end in ``tests/test_end_to_end.py``; this checks the page
as a browser shows it, on the tiny examples folder (the data section's two figures) with the
project's benchmark tables."""
import os
import pathlib

import pytest

from tests.chromium import check_page
from tfrec_kuai import cli

RESULTS_MD = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "RESULTS.md"


@pytest.mark.slow
def test_the_report_renders_in_chromium_with_its_figures(tiny_examples_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["report", "--examples", tiny_examples_dir, "--output", str(out),
                     "--benchmarks", str(RESULTS_MD)]) == 0
    page = out / "index.html"
    assert page.read_text(encoding="utf-8").count("<img ") == 2
    check_page(str(page), images=2, tmp=str(tmp_path))
    assert os.path.getsize(out / "data_by_duration.png") > 5000
