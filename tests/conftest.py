import signal

import numpy as np
import pytest


@pytest.fixture
def rng():
    """Seeded generator: every test sees the same random data on every run."""
    return np.random.default_rng(0)


@pytest.fixture
def distinct_ids(rng):
    """distinct_ids(shape, E): random ids in 0..E-1, never one twice along the last axis (a
    token's k experts must differ: traces refuse repeats)."""

    def draw(shape, num_experts):
        return np.argsort(rng.random((*shape[:-1], num_experts)), axis=-1)[..., :shape[-1]]

    return draw


@pytest.fixture(autouse=True)
def _stop_handlers_restored():
    """The CLI's main() handles SIGTERM, and ignores a further Ctrl-C once interrupted, for its
    exit; tests call it in-process."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in handlers.items():
        signal.signal(s, handler)
