"""Shared fixtures. Models load once per session; tests never touch the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"  # the bundled real data (UD English EWT dev, BLiMP), see data/README.md


def _load(name):
    import probekit

    return probekit.load_model(name, device="cpu")


@pytest.fixture(scope="session")
def tiny_llama():
    return _load("tiny-llama")


@pytest.fixture(scope="session")
def tiny_bert():
    return _load("tiny-bert")


@pytest.fixture(scope="session", params=["tiny-llama", "tiny-bert"])
def tiny_model(request):
    return request.getfixturevalue(request.param.replace("-", "_"))


@pytest.fixture(scope="session")
def smollm():
    return _load("smollm2-135m")


@pytest.fixture(scope="session")
def minilm():
    return _load("minilm-l6")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The repository's bundled real data folder (``data/``); it always exists in a checkout."""
    return DATA


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    return tmp_path / "capture-cache"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the whole module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models gain nothing from a second thread, and on a shared machine it costs a lot."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _stored(cap) -> dict:
    import numpy as np

    out = {f"{h}.{layer}": np.array(cap.resid(h, layer)) for h, layer in map(tuple, cap.meta["hooks"])}
    if cap.attn_layers:
        out["attention"] = np.array(cap._array("attention"))
        out["special_mass"] = np.array(cap._array("special_mass"))
    return out


@pytest.fixture(scope="session")
def stored_arrays():
    """``stored_arrays(cap)``: every array a capture stored, by file name (``resid_post.3``,
    ``attention``, ...), copied out of the memory maps: what bit-identity tests compare."""
    return _stored
