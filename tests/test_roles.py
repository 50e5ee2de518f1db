"""Every role runs as `python -m ROLE` and documents its options."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("role", ["master", "loadbalancer", "storage", "worker"])
def test_role_help(role):
    result = subprocess.run([sys.executable, "-m", role, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--cluster" in result.stdout


def test_uds_help():
    result = subprocess.run([sys.executable, "-m", "client.cli", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "keys" in result.stdout
