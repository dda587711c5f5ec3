"""
The JavaScript client's unit tests (tests/js/), run by Node's own test runner
so that pytest, and so CI, runs them too.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_MAJOR_MIN = 20


def node_or_fail():
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not installed: the client's tests need Node.js "
            f"{NODE_MAJOR_MIN} or later (apt-get install -y nodejs)",
            pytrace=False,
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    if major < NODE_MAJOR_MIN:
        pytest.fail(
            f"node {version} is too old: the client's tests need "
            f"Node.js {NODE_MAJOR_MIN} or later",
            pytrace=False,
        )
    return node


def summary_count(output, name):
    """A count from the runner's TAP summary, such as ``# pass 12``."""
    match = re.search(rf"^# {name} (\d+)$", output, re.MULTILINE)
    assert match, f"no '# {name}' line in node's output:\n{output[-3000:]}"
    return int(match.group(1))


def test_js_client_unit_tests_pass():
    """node --test tests/js/ passes, and it ran tests at all."""
    node = node_or_fail()

    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    output = result.stdout + result.stderr

    assert result.returncode == 0, f"node --test failed:\n{output[-6000:]}"
    assert summary_count(output, "pass") > 0, output[-3000:]
    assert summary_count(output, "fail") == 0, output[-6000:]
