"""runtime.start, the one way in for the CLI, the API and the job entry point: a local Ray is sized by resources.*
and the workers get the driver's environment. In a fresh process, beside the session's Ray. (Joining a running
cluster is tests/e2e/test_run.py's job entry point test, against `ray start --head`.)"""

import json
import os
import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import json, os, ray
from synalign_ray.config import ResourcesConfig
from synalign_ray.runtime import start
where = start(ResourcesConfig(num_cpus=1, object_store_memory_mb=100))
env = ray.get(ray.remote(lambda: {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "SYNALIGN_CACHE_DIR")}).remote())
print(json.dumps({"where": where, "cpus": ray.cluster_resources().get("CPU"), "env": env}))
ray.shutdown()
"""


def test_a_local_ray_is_sized_by_resources_and_workers_see_the_driver_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HUB_OFFLINE="1", SYNALIGN_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["where"] == "local" and got["cpus"] == 1.0
    assert got["env"] == {"HF_HUB_OFFLINE": "1", "SYNALIGN_CACHE_DIR": str(tmp_path)}
