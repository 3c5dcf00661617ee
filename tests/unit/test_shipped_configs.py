"""Every shipped YAML is valid: job configs load into the strict config; cluster configs are well-formed and
provide the resources the job's actors ask for; entry points they name exist."""

import shlex
from pathlib import Path

import pytest
import yaml

from synalign_ray.config import DEFAULT_RUN_CONFIG, load_config

REPO = Path(__file__).resolve().parents[2]
JOB_CONFIGS = sorted((REPO / "jobs" / "configs").glob("*.yaml"))


def test_expected_configs_ship():
    names = {p.name for p in JOB_CONFIGS}
    assert {"local.yaml", "sst2.yaml", "agnews.yaml", "amazon.yaml", "queries_production.yaml"} <= names
    assert DEFAULT_RUN_CONFIG.is_file()


@pytest.mark.parametrize("path", JOB_CONFIGS + [DEFAULT_RUN_CONFIG], ids=lambda p: p.name)
def test_job_config_validates(path):
    cfg = load_config(path)
    assert cfg.data.path and cfg.output.path


def test_local_demo_runs_on_the_laptop_defaults():
    cfg = load_config(DEFAULT_RUN_CONFIG)
    assert cfg.generation.model == "SmolLM2-135M-Instruct" and cfg.embedding.model == "all-MiniLM-L6-v2"
    assert cfg.generation.num_gpus_per_generator == 0 and cfg.resources.ray_address is None
    assert not cfg.output.path.startswith("s3://")


def _gpu_demand(cfg):
    # The stages run one after the other: the encoder pool is gone before the generator pool starts.
    return max(cfg.generation.num_generators * cfg.generation.num_gpus_per_generator,
               cfg.embedding.num_actors * cfg.embedding.num_gpus_per_actor)


def _kuberay_groups(spec):
    head = spec["headGroupSpec"]
    workers = spec["workerGroupSpecs"]
    for group in [head, *workers]:
        container = group["template"]["spec"]["containers"][0]
        assert container["image"] and container["resources"]["limits"]
        params = group["rayStartParams"]
        limits = container["resources"]["limits"]
        if "num-gpus" in params:
            assert str(limits.get("nvidia.com/gpu")) == params["num-gpus"]
        assert float(params["num-cpus"]) <= float(limits["cpu"])
    return head, workers


def _check_cluster_fits(workers, cfg):
    gpus = sum(int(w["maxReplicas"]) * float(w["rayStartParams"].get("num-gpus", 0)) for w in workers)
    assert gpus >= _gpu_demand(cfg), f"cluster has {gpus} GPUs, the job asks for {_gpu_demand(cfg)}"
    per_pod_cpus = max(float(w["rayStartParams"]["num-cpus"]) for w in workers)
    assert per_pod_cpus >= cfg.generation.num_cpus_per_generator + cfg.embedding.num_cpus_per_actor


def test_kuberay_raycluster():
    doc = yaml.safe_load((REPO / "cluster/kuberay/raycluster.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    _, workers = _kuberay_groups(doc["spec"])
    _check_cluster_fits(workers, load_config(REPO / "jobs/configs/queries_production.yaml"))


def test_kuberay_rayjob_entrypoint_and_resources():
    doc = yaml.safe_load((REPO / "cluster/kuberay/rayjob.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python" and (REPO / argv[1]).is_file()
    cfg = load_config(REPO / argv[argv.index("--config") + 1])
    runtime_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert set(runtime_env) <= {"working_dir", "pip", "env_vars", "py_modules", "conda", "container"}
    _, workers = _kuberay_groups(doc["spec"]["rayClusterSpec"])
    _check_cluster_fits(workers, cfg)


def test_aws_cluster_launcher():
    doc = yaml.safe_load((REPO / "cluster/aws/cluster.yaml").read_text())
    assert doc["provider"]["type"] == "aws" and doc["head_node_type"] in doc["available_node_types"]
    gpu_nodes = [t for t in doc["available_node_types"].values() if t["resources"].get("GPU", 0) > 0]
    cfg = load_config(REPO / "jobs/configs/queries_production.yaml")
    gpus = sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_nodes)
    assert gpus >= _gpu_demand(cfg) and doc["max_workers"] >= max(t["max_workers"] for t in gpu_nodes)


def test_runtime_env():
    env = yaml.safe_load((REPO / "cluster/runtime_env.yaml").read_text())
    assert set(env) <= {"pip", "env_vars", "py_modules", "working_dir", "conda"}
    assert all(isinstance(v, str) for v in env["env_vars"].values())
