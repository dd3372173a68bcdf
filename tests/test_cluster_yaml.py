"""cluster.yaml: validated offline exactly as `ray up` does, plus what the schema lets pass.

No network, no cloud, no Ray cluster: `prepare_config` + `validate_config` are the checks
`ray up` runs before it talks to AWS.
"""

from __future__ import annotations

import copy
import re
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
PATH = ROOT / "cluster.yaml"

# Keys the AWS provider reads; anything else (a typo) is accepted silently by the schema.
# `aws_credentials` is left out on purpose: nodes get access from instance profiles.
AWS_PROVIDER_KEYS = {
    "type",
    "region",
    "availability_zone",
    "cache_stopped_nodes",
    "use_internal_ips",
    "use_external_head_ip",
    "security_group",
    "cloudwatch",
}

# Built from pieces so that this file does not match its own patterns.
SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    # A real secret access key is 40 characters of base64; "..." or a test server's
    # dummy value is none.
    "AWS secret key": re.compile(
        "aws_secret" + r"_access_key\s*[=:]\s*[\"']?[A-Za-z0-9/+=]{40}\b", re.IGNORECASE
    ),
    "private key": re.compile("-" * 5 + r"BEGIN ([A-Z0-9]+ )*PRIVATE KEY" + "-" * 5),
    "Ray auth token": re.compile(
        r"(RAY_AUTH_TOKEN|auth_token|Bearer)[\s\"'=:]{1,5}[0-9a-fA-F]{64}\b"
    ),
}


@pytest.fixture(scope="module")
def raw() -> dict:
    """The file as written."""
    return yaml.safe_load(PATH.read_text())


@pytest.fixture(scope="module")
def config(raw) -> dict:
    """The file after `ray up`'s own preparation (defaults filled in, commands merged)."""
    return prepare_config(copy.deepcopy(raw))


@pytest.fixture(scope="module")
def head(raw) -> dict:
    return raw["available_node_types"][raw["head_node_type"]]


@pytest.fixture(scope="module")
def workers(raw) -> dict:
    return {k: v for k, v in raw["available_node_types"].items() if k != raw["head_node_type"]}


def is_spot(node_type: dict) -> bool:
    market = node_type["node_config"].get("InstanceMarketOptions", {})
    return market.get("MarketType") == "spot"


def start_commands(raw: dict, key: str) -> list[str]:
    return [c for c in raw[key] if "ray start" in c]


# --- validation, as `ray up` does it -------------------------------------------------------


def test_validates_like_ray_up(config):
    validate_config(config)


@pytest.mark.parametrize(
    ("breakage", "error"),
    [
        (lambda c: c["available_node_types"]["gpu1_spot"]["resources"].update(GPU=0.5), None),
        (lambda c: c.update(head_node_type="no_such_type"), ValueError),
        (lambda c: c["available_node_types"]["gpu1_spot"].update(max_worker=3), None),
    ],
    ids=["fractional-gpu", "unknown-head-type", "misspelt-node-type-key"],
)
def test_validation_rejects_a_broken_copy(raw, breakage, error):
    broken = copy.deepcopy(raw)
    breakage(broken)
    with pytest.raises(error or jsonschema.ValidationError):
        validate_config(prepare_config(broken))


# --- provider, top level -------------------------------------------------------------------


def test_provider_is_aws_with_a_region_and_only_known_keys(raw):
    provider = raw["provider"]
    assert provider["type"] == "aws"
    assert re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", provider["region"])
    zones = provider["availability_zone"].split(",")
    assert zones and all(z.startswith(provider["region"]) for z in zones)
    unknown = set(provider) - AWS_PROVIDER_KEYS
    assert not unknown, f"provider keys the AWS provider never reads (typos?): {unknown}"
    # Spelled out: the default (True) stops nodes instead of terminating them.
    assert provider["cache_stopped_nodes"] is False


def test_autoscaling_settings_present(raw):
    assert raw["cluster_name"] == "raylab"
    assert raw["idle_timeout_minutes"] > 0
    assert raw["upscaling_speed"] > 0
    assert raw["max_workers"] > 0


# --- head ----------------------------------------------------------------------------------


def test_head_schedules_but_takes_no_gpu_work(raw, head):
    assert head["resources"]["GPU"] == 0
    assert head["min_workers"] == 0 and head["max_workers"] == 0
    (start,) = start_commands(raw, "head_start_ray_commands")
    assert "--head" in start
    assert "--num-gpus=0" in start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start


def test_dashboard_bound_to_loopback(raw):
    (start,) = start_commands(raw, "head_start_ray_commands")
    assert "--dashboard-host=127.0.0.1" in start
    assert "0.0.0.0" not in yaml.safe_dump(raw)


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_ray_starts_with_token_auth(raw, key):
    starts = start_commands(raw, key)
    assert starts, f"{key} starts no Ray"
    for command in starts:
        assert "RAY_AUTH_MODE=token" in command
        assert "RAY_AUTH_MODE=disabled" not in command
    assert raw[key][0] == "ray stop"


# --- node types ----------------------------------------------------------------------------


def test_gpu_trainer_types_with_one_and_eight_gpus(workers):
    gpus = {t["resources"].get("GPU", 0) for t in workers.values()}
    assert {1, 8} <= gpus
    for name, node_type in workers.items():
        if node_type["resources"].get("GPU", 0):
            assert node_type["resources"]["CPU"] > 0, name


def test_decoder_type_advertises_one_decoder_unit_per_cpu(workers):
    decoders = {k: v for k, v in workers.items() if "decoder" in v["resources"]}
    assert decoders, "no node type advertises the `decoder` resource"
    for name, node_type in decoders.items():
        resources = node_type["resources"]
        assert resources["CPU"] > 0, name
        assert resources.get("GPU", 0) == 0, name
        assert resources["decoder"] == resources["CPU"], name
    # Only decoders have it, so decode tasks asking {"decoder": 1} never land on GPU nodes.
    others = [k for k, v in workers.items() if k not in decoders]
    assert all("decoder" not in workers[k]["resources"] for k in others)


def test_every_worker_type_scales_from_zero(workers):
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, name
        assert node_type["max_workers"] > 0, name


def test_workers_on_spot_with_an_on_demand_twin_per_shape(workers):
    spot = {k: v for k, v in workers.items() if is_spot(v)}
    on_demand = {k: v for k, v in workers.items() if not is_spot(v)}
    assert spot, "no spot worker type"

    def shape(t):
        return t["node_config"]["InstanceType"], tuple(sorted(t["resources"].items()))

    spot_shapes = {shape(t) for t in spot.values()}
    # Every on-demand type is the fallback of a spot type: same instance, same resources
    # (equal resources make them tie in the autoscaler, and `priority` then picks spot).
    for name, node_type in on_demand.items():
        assert shape(node_type) in spot_shapes, f"{name} is on demand with no spot twin"
    # Every GPU shape has an on-demand twin.
    on_demand_shapes = {shape(t) for t in on_demand.values()}
    for name, node_type in spot.items():
        if node_type["resources"].get("GPU", 0):
            assert shape(node_type) in on_demand_shapes, f"{name} has no on-demand fallback"
        twins = [t for t in on_demand.values() if shape(t) == shape(node_type)]
        for twin in twins:
            assert node_type.get("priority", 0) > twin.get("priority", 0), name


def test_nodes_use_a_pinned_image_and_instance_profiles(raw, workers, head):
    for name, node_type in raw["available_node_types"].items():
        node_config = node_type["node_config"]
        # Ray's built-in default AMI carries a CUDA 11 driver, too old for the torch build.
        assert node_config.get("ImageId"), name
        assert node_config.get("IamInstanceProfile"), f"{name}: no S3 access without a profile"
    assert "aws_credentials" not in raw["provider"]


def test_gpu_types_get_gpus_in_the_container(workers):
    for name, node_type in workers.items():
        if node_type["resources"].get("GPU", 0):
            options = node_type.get("docker", {}).get("worker_run_options", [])
            assert "--gpus all" in options, name


# --- software ------------------------------------------------------------------------------


def test_docker_image_matches_the_pins(raw):
    docker = raw["docker"]
    image = docker["image"]
    assert image.startswith("rayproject/ray:")
    assert docker["container_name"]
    assert docker["pull_before_run"] is True
    assert any("nofile" in option for option in docker["run_options"])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_pin = next(d for d in project["dependencies"] if d.startswith("ray["))
    ray_version, python_tag, build = re.fullmatch(
        r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d+)-(gpu|cu\d+)", image
    ).groups()
    low, high = re.search(r">=([\d.]+),<([\d.]+)", ray_pin).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= as_tuple(ray_version) < as_tuple(high)
    assert python_tag == "311" and "3.11" in project["requires-python"]


def test_setup_installs_cuda_torch_and_the_project(raw):
    commands = raw["setup_commands"]
    torch_pin = next(
        d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("torch")
    )
    torch_install = [c for c in commands if re.search(r"pip install .*\btorch==", c)]
    assert len(torch_install) == 1
    assert torch_pin in torch_install[0]  # torch==2.13.0, as pyproject pins it
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/cu\d+\b", torch_install[0])
    project_dir = next(remote for remote, local in raw["file_mounts"].items() if local == ".")
    assert f"pip install -e {project_dir}" in commands
    assert commands.index(torch_install[0]) < commands.index(f"pip install -e {project_dir}")
    # Spelled out, so no defaults (a nightly wheel, an extra pip install) are merged in.
    assert raw["head_setup_commands"] == []
    assert raw["worker_setup_commands"] == []


def test_file_sync_spelled_out(raw):
    assert raw["cluster_synced_files"] == []
    assert raw["file_mounts_sync_continuously"] is False
    for pattern in (".venv", ".git", "runs"):
        assert pattern in raw["rsync_exclude"]


# --- secrets -------------------------------------------------------------------------------


def test_auth_token_is_mounted_from_the_users_home(raw):
    mounts = raw["file_mounts"]
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token"
    text = PATH.read_text()
    assert not re.search(r"\b[0-9a-fA-F]{64}\b", text), "a token-like string is inlined"
    assert "RAY_AUTH_TOKEN" not in text


def repo_files() -> list[Path]:
    """Committed files, plus new ones git would commit (untracked, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_credentials_in_any_repository_file():
    files = repo_files()
    assert PATH in files
    found = []
    for path in files:
        if not path.is_file():  # deleted in the work tree
            continue
        assert path.name != "auth_token", f"{path} is a Ray token file"
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary
            continue
        text = data.decode("utf-8", errors="replace")
        for what, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not found, "credentials in the repository:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "leak",
    [
        "AKIA" + "ABCDEFGHIJKLMNOP",
        "aws_secret" + "_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfi" + "CYEXAMPLEKEY",
        "AWS_SECRET" + '_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG/bPxRfi' + 'CYEXAMPLEKEY"',
        "-" * 5 + "BEGIN OPENSSH PRIVATE KEY" + "-" * 5,
        "RAY_AUTH_TOKEN=" + "ab" * 32,
    ],
)
def test_secret_patterns_catch_a_leak(leak):
    assert any(p.search(f"x\n{leak}\n") for p in SECRET_PATTERNS.values())
