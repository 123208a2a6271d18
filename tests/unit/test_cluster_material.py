"""launch/ and docker/: what can be checked without a cloud, a cluster or a Docker engine."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tlscale.spec import load_spec

LAUNCH, DOCKER = ROOT / "launch", ROOT / "docker"


def test_ray_cluster_yaml_follows_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    ray = pytest.importorskip("ray")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((LAUNCH / "ray-cluster-aws.yaml").read_text())
    jsonschema.validate(config, schema)
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["resources"]["GPU"] >= 1 and config["head_node_type"] in config["available_node_types"]
    assert "tlscale:cuda" in config["docker"]["image"]


def _tlscale_command(entrypoint: str) -> tuple[Path, list[str]]:
    words = shlex.split(entrypoint)
    assert words[:2] == ["tlscale", "train"], entrypoint
    return ROOT / words[2], [w for w in words[3:] if "=" in w and not w.startswith("-")]


def test_rayjob_runs_an_existing_config_with_the_ray_runner():
    job = yaml.safe_load((LAUNCH / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    config, overrides = _tlscale_command(job["spec"]["entrypoint"])
    assert config.is_file(), config
    spec = load_spec(config, overrides)  # the entrypoint's spec + overrides validate
    assert spec.runner == "ray" and spec.resources.use_gpu
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] >= spec.resources.num_workers
    gpus = workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) >= 1
    head_mounts = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    worker_mounts = workers["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(str(spec.output_dir).startswith(m["mountPath"]) for m in head_mounts)  # runs on shared storage
    assert {m["mountPath"] for m in head_mounts} == {m["mountPath"] for m in worker_mounts}


def test_slurm_script_parses_and_starts_head_workers_and_the_run():
    subprocess.run(["bash", "-n", str(LAUNCH / "slurm-ray.sbatch")], check=True)
    text = (LAUNCH / "slurm-ray.sbatch").read_text()
    assert "#SBATCH --nodes=" in text and "ray start --head" in text and "ray start --address" in text
    assert "runner=ray" in text and "ray stop" in text


@pytest.mark.parametrize("name", ["multi-gpu-ddp.yaml", "multi-gpu-deepspeed.yaml"])
def test_accelerate_configs_load_with_accelerate(name):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(LAUNCH / "accelerate" / name))
    assert config.num_processes == 8 and config.num_machines == 1
    assert config.distributed_type.value in ("MULTI_GPU", "DEEPSPEED")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "pins.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"\[.*\]", "", name).lower()] = version
    return pins


def test_image_pins_satisfy_pyproject():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in ("minilm", "deepspeed", "qlora", "ray", "fewshot", "service"):
        requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = _pins()
    for key in ("torch", "transformers", "accelerate", "deepspeed", "peft", "bitsandbytes", "ray"):
        assert key in pins, f"docker/pins.txt does not pin {key}"
    for requirement in requirements:
        name = requirement.name.lower()
        if name in pins:
            assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks pyproject's {requirement}"
    constraint = (ROOT / "constraints.txt").read_text()
    assert f"torch=={pins['torch']}" in constraint  # the image runs the torch CI tests with


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cuda", "Dockerfile.cpu"])
def test_images_install_the_pins_and_tlscale(dockerfile):
    text = (DOCKER / dockerfile).read_text()
    assert "COPY docker/pins.txt" in text and "--no-build-isolation" in text
    assert re.search(r'pip install -c pins(-cpu)?\.txt "\.\[minilm,deepspeed,qlora,ray,fewshot,service\]"', text)
    assert 'ENTRYPOINT ["tlscale"]' in text
    for copied in re.findall(r"^COPY (\S+)", text, flags=re.MULTILINE):
        assert (ROOT / copied).exists(), copied


def _serve_options(command: list[str], environment: dict[str, str]) -> dict:
    """The options `tlscale serve` takes from this command line and environment (parsed by the CLI itself)."""
    import typer.main

    from tlscale.cli import serve  # noqa: F401  (registers the command)
    from tlscale.cli.app import app

    assert command[:2] == ["tlscale", "serve"], command
    group = typer.main.get_command(app)
    saved = {key: os.environ.pop(key, None) for key in ("TLSCALE_DATABASE_URL", "TLSCALE_RAY_ADDRESS")}
    try:
        os.environ.update({k: v for k, v in environment.items() if k.startswith("TLSCALE_")})
        return group.commands["serve"].make_context("serve", command[2:]).params
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def test_compose_runs_the_service_in_front_of_a_head_and_a_worker_sharing_runs():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    head, worker = compose["services"]["ray-head"], compose["services"]["ray-worker"]
    assert "ray start --head" in head["command"] and "--block" in head["command"]
    assert "--address=ray-head:6379" in worker["command"]
    assert any(port.endswith(":8265") for port in head["ports"])
    assert head["volumes"] == worker["volumes"] and any(v.startswith("runs:") for v in head["volumes"])
    assert head["image"] == worker["image"] == "tlscale:cpu"
    assert "runs" in compose["volumes"]

    server = compose["services"]["tlscale-server"]
    environment = {k: str(v) for k, v in server["environment"].items()}
    options = _serve_options(shlex.split(server["command"]), environment)
    assert options["ray_address"] == "http://ray-head:8265" and options["host"] == "0.0.0.0"
    assert options["database_url"].startswith("postgresql://") and "@postgres:5432/" in options["database_url"]
    assert str(options["data_dir"]).startswith("/runs/") and server["volumes"] == head["volumes"]  # shared storage
    assert environment["RAY_AUTH_TOKEN"] == head["environment"]["RAY_AUTH_TOKEN"]  # the server holds the token
    assert server["ports"] == ["127.0.0.1:8000:8000"] and "postgres" in server["depends_on"]


def test_kuberay_service_puts_the_api_in_front_of_a_long_lived_cluster():
    cluster, deployment, service = yaml.safe_load_all((LAUNCH / "kuberay-service.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and deployment["kind"] == "Deployment" and service["kind"] == "Service"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    environment = {e["name"]: e.get("value", "") for e in container["env"]}
    options = _serve_options(container["command"], environment)
    assert options["ray_address"] == f"http://{cluster['metadata']['name']}-head-svc:8265"  # KubeRay's head service
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {"TLSCALE_DATABASE_URL": "database-url", "RAY_AUTH_TOKEN": "ray-token"}
    ray_pods = [cluster["spec"]["headGroupSpec"]["template"]["spec"]]
    ray_pods += [group["template"]["spec"] for group in cluster["spec"]["workerGroupSpecs"]]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    runs = next(m for m in container["volumeMounts"] if str(options["data_dir"]).startswith(m["mountPath"] + "/"))
    for ray_pod in ray_pods:  # every Ray pod sees the server's data dir at the same path, from the same claim
        mounts = {m["mountPath"]: m["name"] for m in ray_pod["containers"][0]["volumeMounts"]}
        ray_claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in ray_pod["volumes"]}
        assert ray_claims[mounts[runs["mountPath"]]] == claims[runs["name"]]
        ray_env = {e["name"]: e for e in ray_pod["containers"][0]["env"]}
        assert ray_env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "ray-token"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
