"""A real Ray cluster for the tests of `--engine ray` (index and import): a head and a worker node, two raylets
bound to 127.0.0.1, with token auth as Ray 2.60 heads have it. One per test session, shared by every test
module: tests/conftest.py registers the fixture `ray_cluster` ((cluster, env for driver processes)).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from parts import unavailable

ROOT = Path(__file__).resolve().parents[1]
NODE = dict(num_cpus=2, object_store_memory=200_000_000)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A head and a worker node (two raylets, both bound to 127.0.0.1) with token auth; yields
    (cluster, env for drivers). Stopped by the processes' own ids at the end."""
    token = tmp_path_factory.mktemp("ray") / "auth_token"
    token.write_text(secrets.token_hex(32))
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "PYTHONPATH")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                      PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [saved["PYTHONPATH"]] if p]))
    try:
        from ray._raylet import Config
        from ray.cluster_utils import Cluster
    except ImportError:
        _restore(saved)
        unavailable("ray", 'ray is not installed: pip install -e ".[ray]"')
    Config.initialize("")  # Ray read RAY_AUTH_MODE when first imported; the nodes started here use the token
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args=dict(NODE, include_dashboard=False))
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
    except Exception as exc:
        if cluster is not None:
            cluster.shutdown()
        _restore(saved)
        unavailable("ray", f"a Ray cluster could not start here: {type(exc).__name__}: {exc}")
    env = dict(os.environ)
    env.pop("RAY_AUTH_MODE")  # the CLI sets it itself when given --ray-address
    try:
        yield cluster, env
    finally:
        cluster.shutdown()
        _restore(saved)


def _restore(saved: dict) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
