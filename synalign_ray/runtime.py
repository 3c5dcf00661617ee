"""The one way synalign starts or joins Ray: the CLI, the Python API and the Ray job entry point all come here, so
workers see the same environment and `resources.*` applies wherever Ray is started.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

from synalign_ray.config import ResourcesConfig

log = logging.getLogger(__name__)

# Variables the workers must see as the driver does (offline hub, model cache, vLLM CPU settings, S3 endpoint).
PROPAGATED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SYNALIGN_CACHE_DIR", "HF_HOME", "TOKENIZERS_PARALLELISM",
                  "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")


def worker_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in PROPAGATED_ENV if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def start(resources: ResourcesConfig, join_running: bool = False) -> str:
    """Initialise Ray once for this process; returns "cluster" or "local".

    `resources.ray_address` set: join that cluster. Otherwise, with `join_running` (the job entry point, where
    `ray job submit` or `ray start` provides a cluster), join the running one if there is one; else start a local
    Ray sized by `resources.num_cpus` and `resources.object_store_memory_mb`.
    """
    import ray

    base: dict[str, Any] = {"runtime_env": {"env_vars": worker_env()}, "include_dashboard": False}
    if resources.ray_address:
        ray.init(address=resources.ray_address, **base)
        return "cluster"
    if join_running:
        try:
            ray.init(address="auto", **base)
            return "cluster"
        except ConnectionError:
            log.info("no running Ray cluster found; starting a local one")
    local = dict(base)
    if resources.num_cpus:
        local["num_cpus"] = resources.num_cpus
    if resources.object_store_memory_mb:
        local["object_store_memory"] = resources.object_store_memory_mb * 1024 * 1024
    ray.init(**local)
    return "local"


def _node_of(_actor) -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def node_ids(handles: list) -> list[str]:
    """The Ray node each of these actors runs on (what a run reports, so a user sees where its work went)."""
    import ray

    return ray.get([h.__ray_call__.remote(_node_of) for h in handles])


def raise_original(err: BaseException) -> None:
    """Raise, as itself and in one line, the SynAlignError a Ray task or actor method raised (the driver sees it
    wrapped in a RayTaskError, and Ray Data appends its retry advice to the message); return if there is none."""
    from synalign_ray.errors import SynAlignError

    while err is not None:
        cause = getattr(err, "cause", None)
        if isinstance(err, SynAlignError) and not isinstance(cause, BaseException):
            raise type(err)(str(err).splitlines()[0]) from None
        err = cause if isinstance(cause, BaseException) else err.__cause__


@contextlib.contextmanager
def ray_session(resources: ResourcesConfig) -> Iterator[Any]:
    """Ray for the duration of a command: reuse one already initialised in this process (the job entry point's,
    a notebook's, a test session's) and leave it running; otherwise start one and shut it down afterwards."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    start(resources)
    try:
        yield ray
    finally:
        ray.shutdown()
