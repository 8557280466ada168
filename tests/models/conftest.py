"""Shared fixtures of the model tests: a local Dask cluster (two worker processes)."""

import distributed
import pytest


@pytest.fixture(scope="module")
def client():
    """A ``LocalCluster`` of 2 single-thread worker processes (one per test module: the
    killed-worker tests take one down, and its nanny restarts it)."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=40,
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()
