"""pytest set-up: trial's mktemp() writes below a per-run temporary directory."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _work_in_temporary_directory(tmp_path_factory):
    """Run in a scratch directory, so trial's mktemp() leaves nothing in the checkout."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("serialproxy-tests"))
    yield
    os.chdir(previous)
