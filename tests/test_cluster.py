"""The cluster files: launcher configs against Ray's own schema, KubeRay manifests, runtime env,
and the submit script's job ids and commands (no cluster needed)."""

import importlib.util
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
RAY_VERSION = "2.60.0"


def load(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def submit():
    spec = importlib.util.spec_from_file_location("cmkd_cluster_submit", CLUSTER / "submit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def schema():
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_ray_is_the_pinned_version():
    assert ray.__version__ == RAY_VERSION


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_validates_against_rays_schema(name, schema):
    config = load(CLUSTER / name)
    jsonschema.validate(config, schema)
    # and the schema would notice a mistake: a misspelt key is refused
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "max_worker": 3}, schema)


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_has_the_node_groups_a_sweep_needs(name):
    config = load(CLUSTER / name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    cpu = [t for n, t in types.items() if n != config["head_node_type"] and t not in gpu]
    assert len(gpu) == 1 and len(cpu) == 1
    # drivers: only where the custom resource is, never on the (preemptible) GPU nodes
    assert head["resources"].get("cmkd_driver", 0) > 0
    assert cpu[0]["resources"].get("cmkd_driver", 0) > 0
    assert "cmkd_driver" not in gpu[0]["resources"]
    assert gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] > 0
    node = json.dumps(gpu[0]["node_config"])
    assert ("spot" in node) or ("SPOT" in node)  # spot/preemptible capacity
    assert "spot" not in json.dumps(cpu[0]["node_config"]).lower()  # drivers on-demand
    images = [config["docker"]["image"], config["docker"]["head_image"]]
    images += [t.get("docker", {}).get("worker_image") for t in types.values()]
    assert all(i.startswith(f"rayproject/ray:{RAY_VERSION}-") for i in images if i)
    assert any("pip install" in c and "cmkd" in c for c in config["setup_commands"])


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_every_key_of_the_launcher_config_is_commented(name):
    """Every key down to those of each node group has a comment above it or beside it."""
    lines = (CLUSTER / name).read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if indent > 4 or not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        assert lines[j].lstrip().startswith("#") or line.split("#")[1:], f"{name}:{i + 1} {line}"


def kuberay_cluster_spec_ok(spec: dict) -> None:
    """The fields the KubeRay operator requires of a RayCluster spec (ray.io/v1)."""
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    (container,) = head["template"]["spec"]["containers"]
    assert container["name"] and container["image"]
    assert {p["containerPort"] for p in container["ports"]} >= {6379, 8265}
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups) == 2
    for g in groups:
        assert isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
        assert all(c["name"] and c["image"] for c in g["template"]["spec"]["containers"])
    gpu = [g for g in groups if "nvidia.com/gpu" in json.dumps(g)]
    assert len(gpu) == 1 and gpu[0]["minReplicas"] == 0
    assert "cmkd_driver" not in json.dumps(gpu[0]["rayStartParams"])
    for params in [head["rayStartParams"], *(g["rayStartParams"] for g in groups if g not in gpu)]:
        assert "cmkd_driver" in json.loads(json.loads(params["resources"]))  # KubeRay's quoting
    # W&B's key only from a Secret
    text = json.dumps(spec)
    assert "WANDB_API_KEY" in text and "secretKeyRef" in text


def test_kuberay_raycluster_parses_and_has_the_required_fields():
    (doc,) = list(yaml.safe_load_all((CLUSTER / "kuberay" / "raycluster.yaml").read_text()))
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"]
    kuberay_cluster_spec_ok(doc["spec"])


def test_kuberay_rayjob_runs_the_sweep_and_shuts_down_after_it():
    (doc,) = list(yaml.safe_load_all((CLUSTER / "kuberay" / "rayjob.yaml").read_text()))
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    words = shlex.split(spec["entrypoint"])
    assert words[:3] == ["python", "-m", "cmkd.tune"] and "--resume" in words
    storage = words[words.index("--storage") + 1]
    assert storage.startswith(("gs://", "s3://"))  # the cluster is deleted after the job
    from cmkd.tune import parse_args

    parse_args(words[3:])  # every argument is one cmkd.tune knows
    assert spec["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert env["env_vars"]["RAY_JOB_STOP_SIGNAL"] == "SIGINT"
    assert "WANDB_API_KEY" not in env["env_vars"]
    kuberay_cluster_spec_ok(spec["rayClusterSpec"])


def test_runtime_env_excludes_data_outputs_and_secrets():
    env = load(CLUSTER / "runtime_env.yaml")
    assert env["working_dir"] == "."
    excludes = set(env["excludes"])
    assert {
        ".venv/",
        "data/",
        "runs/",
        "wandb/",
        "*.parquet",
        ".git/",
        ".env",
        ".netrc",
    } <= excludes
    assert not any("WANDB_API_KEY" in k or "KEY" in k for k in env["env_vars"])
    assert env["env_vars"]["RAY_JOB_STOP_SIGNAL"] == "SIGINT"  # stop = Ctrl-C: state is saved
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray wants strings


def test_runtime_env_excludes_are_what_ray_uploads(tmp_path):
    """Ray's own packaging of the working dir, with these excludes, leaves data, outputs and
    secrets out (a repo without a .gitignore: the excludes alone must do it)."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    env = load(CLUSTER / "runtime_env.yaml")
    repo = tmp_path / "repo"
    files = [
        "cmkd/tune.py", "search_spaces/smoke.yaml", "data/synth/train.parquet",
        "runs/s/results.json", ".venv/bin/python", "wandb/run/x.wandb", "x/table.parquet",
        ".env", ".netrc", "cmkd/__pycache__/tune.cpython-311.pyc", ".git/config", "k.pem",
    ]  # fmt: skip
    for f in files:
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_text("x")
    package = tmp_path / "pkg.zip"
    create_package(str(repo), package, include_gitignore=True, excludes=env["excludes"])
    kept = sorted(n for n in zipfile.ZipFile(package).namelist() if not n.endswith("/"))
    assert kept == ["cmkd/tune.py", "search_spaces/smoke.yaml"]


def test_importing_the_submit_script_leaves_the_environment_alone(submit, monkeypatch):
    import os

    # Set, then deleted: monkeypatch then removes what the code under test sets. A RAY_AUTH_MODE
    # left behind would make every later ray.init of this process start a GCS it cannot reach.
    monkeypatch.setenv("RAY_AUTH_MODE", "unset-by-the-test")
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 32)
    before = dict(os.environ)
    spec = importlib.util.spec_from_file_location("cmkd_cluster_submit2", CLUSTER / "submit.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert dict(os.environ) == before  # a later ray.init in the same process must not change
    submit.use_token_if_any()
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_submit_ids_are_deterministic_per_sweep_and_attempt(submit):
    assert submit.submission_id("avd", 1) == "cmkd-avd"
    assert submit.submission_id("avd", 3) == "cmkd-avd-3"
    with pytest.raises(submit.SubmitError, match="sweep name"):
        submit.check_name("a b")
    with pytest.raises(submit.SubmitError):
        submit.check_name("../up")


def test_submit_quotes_the_command_and_always_resumes(submit):
    args = ["--space", "my space.yaml", "--name", "old", "--storage", "s3://b/x; rm -rf ~"]
    cmd = submit.entrypoint(args, "new")
    words = shlex.split(cmd)  # what the job server's shell will see
    assert words == [
        "python", "-m", "cmkd.tune", "--space", "my space.yaml", "--storage",
        "s3://b/x; rm -rf ~", "--name", "new", "--resume",
    ]  # fmt: skip
    assert submit.tune_args_of(cmd) == words[3:]  # resume reads the arguments back
    with pytest.raises(submit.SubmitError):
        submit.tune_args_of("rm -rf /")


def test_submit_finds_the_default_sweep_name_as_cmkd_tune_does(submit):
    from cmkd.tune import parse_args, sweep_name

    args = ["--space", "smoke", "--benchmark", "synth", "--seed", "3"]
    assert submit.sweep_name_of(args) == sweep_name(parse_args(args)) == "synth-smoke-5lpc-s3"


def test_wandb_key_comes_from_the_environment_only(submit, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    env = submit.runtime_env()
    assert "WANDB_API_KEY" not in env["env_vars"]
    assert Path(env["working_dir"]) == REPO
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert submit.runtime_env()["env_vars"]["WANDB_API_KEY"] == "k" * 40
    for path in CLUSTER.rglob("*"):  # no key in any cluster file
        if path.is_file():
            assert "k" * 40 not in path.read_text(errors="ignore")


def test_attempts_of_a_sweep_are_found_by_metadata_oldest_first(submit):
    class Job:
        def __init__(self, sid, sweep, attempt, status="STOPPED"):
            self.submission_id, self.status = sid, status
            self.metadata = {"cmkd_sweep": sweep, "cmkd_attempt": str(attempt)} if sweep else {}

    jobs = [
        Job("cmkd-a-10", "a", 10),
        Job("cmkd-a", "a", 1),
        Job("cmkd-a-2", "a", 2),
        Job("cmkd-a-b", "a-b", 1),
        Job("raysubmit_x", None, 0),
    ]
    assert [j.submission_id for j in submit.attempts(jobs, "a")] == [
        "cmkd-a",
        "cmkd-a-2",
        "cmkd-a-10",
    ]
