"""launch/ and docker/: what can be checked without a cloud, a cluster or a Docker engine."""
from __future__ import annotations

import json
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
    for extra in ("minilm", "deepspeed", "qlora", "ray", "fewshot"):
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
    assert re.search(r'pip install -c pins(-cpu)?\.txt "\.\[minilm,deepspeed,qlora,ray,fewshot\]"', text)
    assert 'ENTRYPOINT ["tlscale"]' in text
    for copied in re.findall(r"^COPY (\S+)", text, flags=re.MULTILINE):
        assert (ROOT / copied).exists(), copied


def test_compose_brings_up_a_head_and_a_worker_sharing_runs():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    head, worker = compose["services"]["ray-head"], compose["services"]["ray-worker"]
    assert "ray start --head" in head["command"] and "--block" in head["command"]
    assert "--address=ray-head:6379" in worker["command"]
    assert any(port.endswith(":8265") for port in head["ports"])
    assert head["volumes"] == worker["volumes"] and any(v.startswith("runs:") for v in head["volumes"])
    assert head["image"] == worker["image"] == "tlscale:cpu"
    assert "runs" in compose["volumes"]
