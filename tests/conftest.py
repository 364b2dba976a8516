"""Shared test setup: quiet TensorFlow, deterministic seeds, the opt-in `slow` marker, and a
private KERAS_PRIORS_HOME (weights downloads, prepared-dataset cache) for the session."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# What `import keras_priors` sets before TensorFlow loads; test modules may import keras first.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
if "KERAS_PRIORS_HOME" not in os.environ:  # subprocesses of the tests inherit it
    os.environ["KERAS_PRIORS_HOME"] = tempfile.mkdtemp(prefix="keras-priors-tests-")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run full-size tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="full-size test; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
