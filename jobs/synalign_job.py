"""Ray job entry point for the whole SynAlign job (`synalign run`), on a cluster or a laptop.

Cluster: ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/runtime_env.yaml \
             -- python jobs/synalign_job.py --config jobs/configs/queries_production.yaml [key=value ...]
Laptop:  python jobs/synalign_job.py --config jobs/configs/local.yaml   (starts a local Ray when none is running)
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# `ray job submit --working-dir .` puts the repo at the working directory; make the package importable from it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("synalign_ray.job")


def connect_ray() -> str:
    """Join the cluster this job was submitted to (or one `ray start` made here); otherwise start a local Ray."""
    import ray

    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "SYNALIGN_CACHE_DIR", "TOKENIZERS_PARALLELISM")
           if k in os.environ}
    try:
        ray.init(address="auto", runtime_env={"env_vars": env} if env else None)
        return "cluster"
    except ConnectionError:
        ray.init(runtime_env={"env_vars": env} if env else None, include_dashboard=False)
        return "local"


def main(argv: list[str] | None = None) -> int:
    from synalign_ray.cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        return cli_main(["run", "--help"])
    where = connect_ray()
    print(f"synalign job: connected to {where} Ray", flush=True)
    return cli_main(["run", *argv])


if __name__ == "__main__":
    sys.exit(main())
