"""The native libraries are part of the product: a test that needs one fails when it is missing.

``make test`` always builds them, so a missing library means a broken build, which must not hide
behind a skip. Only a checkout that deliberately runs without them (``TFREC_KUAI_ALLOW_MISSING_NATIVE=1``)
turns those tests into skips.
"""
import os

import pytest


def missing_native(what):
    if os.environ.get("TFREC_KUAI_ALLOW_MISSING_NATIVE") == "1":
        pytest.skip(f"{what} not built (TFREC_KUAI_ALLOW_MISSING_NATIVE=1)")
    pytest.fail(f"{what} not built: run `make install` (pip install --no-build-isolation -e .)")
