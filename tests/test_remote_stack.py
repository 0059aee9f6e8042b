"""The remote stack (zenml_config/remote/): registered, validated and compiled against, all offline.

No cluster, registry, bucket or MLflow server is contacted: the registration script's ``zenml`` commands
are recorded and replayed in-process into the temporary ZenML store (tests/conftest.py), the Kubernetes
context lives in a throw-away kubeconfig (the orchestrator's validator only reads that file), and each
pipeline is compiled with ``Compiler().compile(pipeline, stack, run_configuration)``: the same step
``pipeline.with_options(config_path=...)()`` takes before it builds images and submits.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from factory import require

# the remote flavors' implementations import these (pyproject.toml, extra `dev`): a failure under CI
for _module in ("kubernetes", "s3fs", "boto3"):
    require(_module, "pip install -e '.[dev]': the remote stack's flavors need it")

ROOT = Path(__file__).resolve().parents[1]
REMOTE = ROOT / "zenml_config" / "remote"
SCRIPT = REMOTE / "register_remote_stack.sh"
STACK = "medmerge_remote"
TRACKER = "medmerge_mlflow_remote"

# One line per pipeline: (module, pipeline object, its remote run config under zenml_config/remote/).
PIPELINES = [
    ("pipelines.merge_search", "merge_search", "merge_search_remote.yaml"),
    ("pipelines.finetune", "finetune", "finetune_remote.yaml"),
    ("pipelines.merge_search_parallel", "merge_search_parallel", "merge_search_parallel.yaml"),
]
# Steps that must land on a GPU node, in every pipeline above.
GPU_STEP = re.compile(r"evaluate_.+|sft_.+|baseline_.+")

SCRIPT_ENV = {
    "MEDMERGE_K8S_CONTEXT": "medmerge-test",
    "MEDMERGE_K8S_NAMESPACE": "medmerge",
    "MEDMERGE_ARTIFACT_URI": "s3://medmerge-test-bucket/medmerge",
    "MEDMERGE_REGISTRY_URI": "registry.example.com/medmerge",
    "MEDMERGE_MLFLOW_URI": "https://mlflow.example.com",
}
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: "https://127.0.0.1:9"}
contexts:
- name: medmerge-test
  context: {cluster: nowhere, user: nobody, namespace: medmerge}
current-context: medmerge-test
users:
- name: nobody
  user: {token: not-a-token}
"""
# Stands in for the zenml CLI: records its arguments; `stack describe` says "no such stack".
RECORDER = """\
import json, os, sys
with open(os.environ["ZENML_RECORD"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(1 if sys.argv[1:3] == ["stack", "describe"] else 0)
"""


def _script_env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDMERGE_")}
    env.update(PYTHON=sys.executable, KUBECONFIG=str(tmp / "kubeconfig"), **extra)
    return env


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """A kubeconfig naming the test context, and dummy values for the secrets the configs name."""
    tmp = tmp_path_factory.mktemp("remote")
    (tmp / "kubeconfig").write_text(KUBECONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", str(tmp / "kubeconfig"))
        # the kubernetes client reads $KUBECONFIG once, when it is imported
        from kubernetes.config import kube_config

        mp.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp / "kubeconfig"))
        from zenml.client import Client

        client = Client()
        for name, values in {"medmerge_mlflow": {"username": "ci", "password": "not-a-password"},
                             "medmerge_hf": {"HF_TOKEN": "hf_not_a_token"}}.items():
            try:
                client.get_secret(name)
            except KeyError:
                client.create_secret(name, values=values)
        yield tmp


@pytest.fixture(scope="module")
def recorded(offline) -> list[list[str]]:
    """The zenml commands the registration script runs."""
    recorder = offline / "zenml"
    recorder.write_text(f"#!{sys.executable}\n{RECORDER}")
    recorder.chmod(0o755)
    record = offline / "record.jsonl"
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=offline,
                         env=_script_env(offline, ZENML=str(recorder), ZENML_RECORD=str(record), **SCRIPT_ENV))
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.fixture(scope="module")
def remote_stack(recorded):
    """The script's registrations replayed through the real zenml CLI (in-process), then loaded and validated."""
    from click.testing import CliRunner
    from zenml.cli.cli import cli
    from zenml.client import Client
    from zenml.stack import Stack

    runner = CliRunner()
    for argv in recorded:
        if "register" in argv[:2]:
            result = runner.invoke(cli, argv, catch_exceptions=False)
            assert result.exit_code == 0, f"zenml {shlex.join(argv)}\n{result.output}"
    stack = Stack.from_model(Client().get_stack(STACK))
    # the checks ZenML makes before it submits a run (Stack.prepare_pipeline_submission): the components
    # fit together (the Kubernetes orchestrator wants a remote container registry, no local components,
    # a kubeconfig context that exists) and every secret the components reference exists
    stack.validate(fail_if_secrets_missing=True)
    return stack


def _compile(module: str, name: str, config: str, stack):
    from zenml.config.compiler import Compiler
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.utils import env_utils

    path = REMOTE / config
    raw = yaml.safe_load(path.read_text())
    pipe = getattr(importlib.import_module(module), name).with_options(config_path=str(path))
    pipe.prepare()  # runs the pipeline function: the step DAG, parameters validated (SearchConfig, ...)
    run_config = env_utils.substitute_env_variable_placeholders(PipelineRunConfiguration.model_validate(raw))
    snapshot = Compiler().compile(pipeline=pipe, stack=stack, run_configuration=run_config)
    return raw, pipe, snapshot


def _gib(quantity: str) -> float:
    """A Kubernetes (96Gi, 500Mi) or ZenML (96GiB, 16GB) memory quantity, in GiB."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]i?)B?", quantity)
    assert m, quantity
    scale = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(m[1]) * scale[m[2]] / 2**30


def _cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# ------------------------------------------------------------------------------------------------
# the registration script
# ------------------------------------------------------------------------------------------------
def test_register_script_registers_remote_flavors_with_secret_references(recorded):
    registers = {tuple(argv[:2]): argv[2:] for argv in recorded if "register" in argv[:2]}
    flavors = {kind: next(a.split("=", 1)[1] for a in args if a.startswith("--flavor="))
               for (kind, _), args in registers.items() if kind != "stack"}
    assert flavors == {"orchestrator": "kubernetes", "artifact-store": "s3", "container-registry": "default",
                       "image-builder": "local", "experiment-tracker": "mlflow", "model-registry": "mlflow"}
    tracker = registers[("experiment-tracker", "register")]
    assert "--tracking_uri=https://mlflow.example.com" in tracker
    assert "--tracking_username={{medmerge_mlflow.username}}" in tracker
    assert "--tracking_password={{medmerge_mlflow.password}}" in tracker
    assert "--kubernetes_context=medmerge-test" in registers[("orchestrator", "register")]
    # the secrets are checked before anything is registered, and the stack is not activated
    assert recorded[0] == ["secret", "get", "medmerge_mlflow"]
    assert not any("--set" in argv or argv[:2] == ["stack", "set"] for argv in recorded)
    # no credential on any command line: only {{secret.key}} references
    creds = [a for argv in recorded for a in argv if re.match(r"--(\w*password|\w*token|key|secret)=", a)]
    assert creds and all(re.fullmatch(r"--\w+=\{\{\w+\.\w+\}\}", a) for a in creds), creds


def test_register_script_explains_what_is_missing(offline):
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=offline,
                         env=_script_env(offline, ZENML="false"))
    assert out.returncode == 2 and "MEDMERGE_K8S_CONTEXT" in out.stderr
    env = {**SCRIPT_ENV, "MEDMERGE_ARTIFACT_URI": "/local/path"}
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=offline,
                         env=_script_env(offline, ZENML="false", **env))
    assert out.returncode == 2 and "s3://" in out.stderr


def test_remote_stack_components(remote_stack):
    from zenml.client import Client
    from zenml.enums import StackComponentType

    s = remote_stack
    assert (s.orchestrator.flavor, s.artifact_store.flavor, s.experiment_tracker.flavor) == \
        ("kubernetes", "s3", "mlflow")
    assert s.orchestrator.config.kubernetes_context == "medmerge-test" and not s.orchestrator.config.is_local
    assert s.artifact_store.path == "s3://medmerge-test-bucket/medmerge"
    assert s.container_registry.config.uri == "registry.example.com/medmerge"
    assert s.model_registry.flavor == "mlflow"
    stored = Client().get_stack_component(StackComponentType.EXPERIMENT_TRACKER, TRACKER).configuration
    assert stored["tracking_username"] == "{{medmerge_mlflow.username}}"  # the store holds the reference only
    # what the images get on top of the Dockerfile (install_stack_requirements)
    requirements = " ".join(s.requirements())
    assert "kubernetes" in requirements and "s3fs" in requirements and "mlflow" in requirements


# ------------------------------------------------------------------------------------------------
# every pipeline compiles against it
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module,name,config", PIPELINES, ids=[p[1] for p in PIPELINES])
def test_pipeline_compiles_against_remote_stack(remote_stack, module, name, config):
    from kubernetes import client as k8s
    from zenml.integrations.kubernetes import kube_utils
    from zenml.integrations.kubernetes.manifest_utils import build_pod_manifest
    from zenml.integrations.kubernetes.serialization_utils import deserialize_kubernetes_model

    raw, pipe, snapshot = _compile(module, name, config, remote_stack)
    steps = snapshot.step_configurations

    # every step compiled, and every `steps:` entry of the YAML names a real step (ZenML would only warn)
    assert set(steps) == set(pipe.invocations)
    assert set(raw.get("steps", {})) <= set(steps), set(raw.get("steps", {})) - set(steps)

    # nothing points into this checkout: the pods have only the image and the cache volume
    params = json.dumps(snapshot.pipeline_configuration.model_dump(mode="json")["parameters"])
    assert str(ROOT) not in params and "demo_out" not in params

    # one image for all steps, built from the repository's Dockerfile with the CUDA torch index
    docker = snapshot.pipeline_configuration.docker_settings
    assert docker.dockerfile == "Dockerfile" and docker.build_context_root == "."
    assert (ROOT / docker.build_context_root / docker.dockerfile).is_file()
    build_args = docker.parent_image_build_config.build_options.build_args
    assert re.search(r"download\.pytorch\.org/whl/cu\d+$", build_args["TORCH_INDEX"])
    builds = remote_stack.get_docker_builds(snapshot)
    assert [b.key for b in builds] == ["orchestrator"] and builds[0].step_name is None
    assert builds[0].settings.dockerfile == "Dockerfile"

    orchestrator = remote_stack.orchestrator
    assert f"orchestrator:{orchestrator.name}" in snapshot.pipeline_configuration.settings
    gpu_steps = []
    for step_name, step in steps.items():
        pod = orchestrator.get_settings(step).pod_settings  # what the orchestrator pod reads per step
        assert pod is not None, step_name
        # the pod settings are valid Kubernetes objects (camelCase keys)
        for kind, items in (("V1Volume", pod.volumes), ("V1VolumeMount", pod.volume_mounts),
                            ("V1Toleration", pod.tolerations)):
            for item in items:
                deserialize_kubernetes_model(item, kind)
        mounts = {m["mountPath"] for m in pod.volume_mounts}
        assert {"/cache", "/scratch"} <= mounts, step_name
        requests, limits = pod.resources.get("requests", {}), pod.resources.get("limits", {})

        res = step.config.resource_settings
        if GPU_STEP.fullmatch(step_name):
            gpu_steps.append(step_name)
            assert res.gpu_count and res.gpu_count >= 1, step_name
            assert requests.get("nvidia.com/gpu") == limits.get("nvidia.com/gpu") == str(res.gpu_count), step_name
            assert any(t.get("key") == "nvidia.com/gpu" for t in pod.tolerations), step_name
            assert pod.node_selectors, step_name
        else:
            assert not res.gpu_count and "nvidia.com/gpu" not in {**requests, **limits}, step_name
        # ResourceSettings and the pod's requests say the same (the Kubernetes orchestrator reads the latter)
        if res.cpu_count:
            assert _cpus(requests["cpu"]) == res.cpu_count, step_name
        if res.memory:
            assert _gib(requests["memory"]) == pytest.approx(_gib(res.memory)), step_name

        # the step pod exactly as the orchestrator pod builds it (no cluster involved)
        manifest = build_pod_manifest(
            pod_name=None, image_name="registry.example.com/medmerge:test", command=["python"], args=[],
            privileged=False, pod_settings=kube_utils.apply_default_resource_requests("400Mi", pod_settings=pod))
        spec = k8s.ApiClient().sanitize_for_serialization(manifest)["spec"]
        container = spec["containers"][0]
        assert {m["mountPath"] for m in container["volumeMounts"]} == mounts
        if GPU_STEP.fullmatch(step_name):
            assert container["resources"]["limits"]["nvidia.com/gpu"] == str(res.gpu_count)
            assert spec["tolerations"] and spec["nodeSelector"]

        # MLflow: steps that log get URI and credentials from the stack's tracker; secrets are resolved
        assert step.config.experiment_tracker in (None, TRACKER), step_name
        assert step.config.secrets, step_name
    assert gpu_steps, f"{name}: no step matches {GPU_STEP.pattern}"
    assert any(s.config.experiment_tracker == TRACKER for s in steps.values())
    if name == "finetune":
        _sft_launch_matches_its_pods(raw, steps, orchestrator)
    if name == "merge_search_parallel":
        _shards_run_side_by_side(raw, steps)


def _shards_run_side_by_side(raw: dict, steps: dict) -> None:
    """`workers: N` gives N evaluation steps (pods) that depend only on check_parents, so the orchestrator starts
    them together, each a different share of the candidates; gather_shards waits for all of them."""
    n = raw["parameters"]["config"]["workers"]
    shards = [f"evaluate_shard_{i}" for i in range(n)]
    assert n > 1 and sorted(s for s in steps if s.startswith("evaluate_shard_")) == sorted(shards)
    for i, s in enumerate(shards):
        assert steps[s].spec.upstream_steps == ["check_parents"], s
        assert (steps[s].config.parameters["shard"], steps[s].config.parameters["shards"]) == (i, n)
    assert set(shards) <= set(steps["gather_shards"].spec.upstream_steps)
    # the steps after the fan-in get the config without `workers` (their cache keys do not depend on N)
    assert steps["select_frontier"].config.parameters["config"]["workers"] == 1


def _sft_launch_matches_its_pods(raw: dict, steps: dict, orchestrator) -> None:
    """Each SFT pod asks for the GPUs `sft.num_gpus` names, and the step's `accelerate launch` (built by
    medmerge.finetune.sft, parsed by accelerate's own parser) starts one process per GPU with the sharding asked for."""
    from accelerate.commands.launch import launch_command_parser

    from medmerge.finetune import FinetuneConfig
    from medmerge.finetune.sft import accelerate_command

    sft = FinetuneConfig.model_validate(raw["parameters"]["config"]).sft
    assert sft.num_gpus > 1
    launch = launch_command_parser().parse_args(accelerate_command(sft, "/scratch/job.json", mixed_bf16=True)[3:])
    assert launch.num_processes == sft.num_gpus and launch.training_script == "medmerge.finetune.sft" and launch.module
    assert launch.use_fsdp if sft.distributed == "fsdp" else launch.use_deepspeed and launch.zero_stage == 3
    sft_steps = [n for n in steps if n.startswith("sft_")]
    assert sft_steps
    for step_name in sft_steps:
        assert steps[step_name].config.resource_settings.gpu_count == sft.num_gpus, step_name
        pod = orchestrator.get_settings(steps[step_name]).pod_settings
        assert pod.resources["limits"]["nvidia.com/gpu"] == str(sft.num_gpus), step_name


# ------------------------------------------------------------------------------------------------
# the Dockerfile (parsed, not built)
# ------------------------------------------------------------------------------------------------
def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def _args() -> dict[str, str | None]:
    out = {}
    for op, rest in _dockerfile():
        if op == "ARG":
            name, _, default = rest.partition("=")
            out[name] = default or None
    return out


def test_dockerfile_cpu_default_cuda_by_build_arg():
    args, instructions = _args(), _dockerfile()
    assert args["TORCH_INDEX"].endswith("/whl/cpu")  # CPU unless the CUDA index is passed
    torch_install = [rest for op, rest in instructions if op == "RUN" and "torch==" in rest]
    assert torch_install and "--index-url ${TORCH_INDEX}" in torch_install[0]
    copied = {rest.split()[0] for op, rest in instructions if op == "COPY"}
    assert {"medmerge", "pipelines", "steps", "materializers", "pyproject.toml"} <= copied
    # ZenML copies the code into /app as well: the same place the Dockerfile puts it
    from zenml.utils.pipeline_docker_image_builder import DOCKER_IMAGE_WORKDIR

    assert ("WORKDIR", DOCKER_IMAGE_WORKDIR) in instructions
    for _, _, config in PIPELINES:
        build_args = yaml.safe_load((REMOTE / config).read_text())["settings"]["docker"][
            "parent_image_build_config"]["build_options"]["build_args"]
        assert "TORCH_INDEX" in args and "cu" in build_args["TORCH_INDEX"]


def test_zenml_layer_builds_as_root_and_runs_as_medmerge():
    args = _args()
    for _, _, config in PIPELINES:
        docker = yaml.safe_load((REMOTE / config).read_text())["settings"]["docker"]
        build_args = docker["parent_image_build_config"]["build_options"]["build_args"]
        assert set(build_args) <= set(args), set(build_args) - set(args)  # every build arg is consumed
        users = [rest for op, rest in _dockerfile() if op == "USER"]
        values = {**args, **build_args}
        final = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m[1]) or "", users[-1]) if users else "root"
        assert final in ("root", "0"), f"the parent image ends as user {final!r}"
        assert docker["user"] == "medmerge"


def test_dockerignore_keeps_local_state_out():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", ".medmerge", "build", "demo_out"} <= ignored
    assert "*.egg-info" in ignored or "**/*.egg-info" in ignored


# ------------------------------------------------------------------------------------------------
# the real script against the real CLI (one zenml process per command: about a minute)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.integration
def test_register_script_end_to_end(offline, tmp_path):
    zenml = str(Path(sys.executable).parent / "zenml")
    env = _script_env(offline, ZENML_CONFIG_PATH=str(tmp_path / "zenml"), **SCRIPT_ENV)
    subprocess.run([zenml, "secret", "create", "medmerge_mlflow", "--username=ci", "--password=x"], env=env,
                   check=True, capture_output=True)
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "registered stack: medmerge_remote" in out.stdout
    described = subprocess.run([zenml, "stack", "describe", STACK], env=env, capture_output=True, text=True)
    assert "medmerge_k8s" in described.stdout + described.stderr
