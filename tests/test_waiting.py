"""The polling helper the tests wait with."""

import subprocess
import sys
import time

import pytest

from tests.waiting import process_alive, wait_until


def test_returns_the_first_truthy_value_and_times_out_with_the_message():
    calls = iter([0, None, "", 7, 8])
    assert wait_until(lambda: next(calls), 5, interval=0) == 7
    start = time.monotonic()
    with pytest.raises(AssertionError, match="never ready"):
        wait_until(lambda: False, 0.2, interval=0.01, message="never ready")
    assert 0.2 <= time.monotonic() - start < 5
    assert wait_until(lambda: [], 0.05, interval=0.01, required=False) == []


def test_process_alive_sees_a_process_end():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    assert process_alive(child.pid)
    child.kill()
    assert wait_until(lambda: not process_alive(child.pid), 10)
    child.wait()
