"""``serving.readiness.wait_until_available``: ready means every reported version AVAILABLE; a
version that ended, a server that exited and a model that never loads are errors, not hangs."""
import os
import subprocess
import sys

import pytest

from serving.readiness import NotReady, wait_until_available
from serving.server import start_in_process
from tests.fixtures_serving import TOY_MODEL_NAME


def _serve(base, **flags):
    return start_in_process(port=0, model_name=TOY_MODEL_NAME, model_base_path=base,
                            file_system_poll_wait_seconds=0, **flags)


def test_a_loaded_model_is_ready_and_an_unknown_one_times_out(base):
    server = _serve(base)
    try:
        wait_until_available(f"127.0.0.1:{server.port}", [TOY_MODEL_NAME], timeout_s=60)
        with pytest.raises(NotReady, match="'nope' was not AVAILABLE within 1 s"):
            wait_until_available(f"127.0.0.1:{server.port}", ["nope"], timeout_s=1)
    finally:
        server.stop()


def test_a_version_that_ended_is_an_error_at_once(base):
    broken = os.path.join(base, "2")
    os.makedirs(broken)
    with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    server = _serve(base, max_num_load_retries=0)
    try:
        with pytest.raises(NotReady, match=f"'{TOY_MODEL_NAME}' version 2 did not load"):
            wait_until_available(f"127.0.0.1:{server.port}", [TOY_MODEL_NAME], timeout_s=60)
    finally:
        server.stop()


def test_a_server_process_that_exited_stops_the_wait():
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    process.wait()
    with pytest.raises(NotReady, match="exited with status 3"):
        wait_until_available("127.0.0.1:1", ["kuai"], process=process, timeout_s=60)
