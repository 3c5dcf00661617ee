"""Ray job entry point for the whole SynAlign job (`synalign run`), on a cluster or a laptop.

Cluster: ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/runtime_env.yaml \
             -- python jobs/synalign_job.py --config jobs/configs/queries_production.yaml [key=value ...]
Laptop:  python jobs/synalign_job.py --config jobs/configs/local.yaml   (starts a local Ray when none is running)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# `ray job submit --working-dir .` puts the repo at the working directory; make the package importable from it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("synalign_ray.job")


def connect_ray(argv: list[str]) -> str:
    """Join the cluster this job was submitted to (or one `ray start` made here); otherwise start a local Ray sized
    by the config's `resources.*`. Same environment for the workers as `synalign run` gives them (runtime.py)."""
    from synalign_ray.cli import build_parser
    from synalign_ray.config import DEFAULT_RUN_CONFIG, load_config
    from synalign_ray.runtime import start

    args = build_parser()[0].parse_args(["run", *argv])
    cfg = load_config(args.config or DEFAULT_RUN_CONFIG, list(args.overrides))
    return start(cfg.resources, join_running=True)


def main(argv: list[str] | None = None) -> int:
    from synalign_ray.cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        return cli_main(["run", "--help"])
    from synalign_ray.errors import SynAlignError

    try:
        where = connect_ray(argv)
    except SynAlignError as err:  # a bad config is reported as `synalign run` reports it
        print(f"synalign run: error: {err}", file=sys.stderr)
        return 2
    print(f"synalign job: connected to {where} Ray", flush=True)
    return cli_main(["run", *argv])


if __name__ == "__main__":
    sys.exit(main())
