"""Submit a cmkd sweep to a Ray cluster's job server, and resume, watch or stop it by name.

    python cluster/submit.py submit -- --space sinkhorn --name sk1 --storage s3://bucket/sweeps
    python cluster/submit.py status sk1        # every attempt of sweep sk1 and its state
    python cluster/submit.py logs sk1 --follow # the latest attempt's output
    python cluster/submit.py stop sk1          # the sweep saves its state and stops
    python cluster/submit.py resume sk1        # the same command again: finished trials are kept

A sweep's jobs have deterministic submission ids: the first attempt is ``cmkd-NAME``, later ones
``cmkd-NAME-2``, ``cmkd-NAME-3``... (Ray's job server refuses a submission id it has seen, so a
resumed sweep needs a new one). Each job carries the sweep name in its metadata, which is how the
attempts of one sweep are found again. The entrypoint always ends in ``--name NAME --resume``:
``cmkd.tune`` continues the sweep when its storage holds one and starts it otherwise, so
submitting the same sweep again, on this cluster or a new one with the same s3:// / gs://
storage, continues it instead of starting over.

The job server is ``--address`` (default: ``RAY_ADDRESS``, else http://127.0.0.1:8265). The
runtime environment is ``cluster/runtime_env.yaml``; ``WANDB_API_KEY`` is taken from this
shell's environment at submission (never from a file) and is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

from cmkd import cli

REPO = Path(__file__).resolve().parent.parent
RUNTIME_ENV = REPO / "cluster" / "runtime_env.yaml"
ENTRYPOINT = ("python", "-m", "cmkd.tune")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def use_token_if_any() -> None:
    """`ray start` turns token authentication on when a token exists (~/.ray/auth_token or
    RAY_AUTH_TOKEN); the job client only sends it when RAY_AUTH_MODE says so. A token sent to a
    cluster without authentication is ignored, so send it whenever there is one. Called by
    :func:`main` only: importing this module changes nothing in the importer's environment."""
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").exists()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


class SubmitError(Exception):
    """A refusal with a message for the user (exit status 2)."""


def submission_id(name: str, attempt: int) -> str:
    """The job id of a sweep's attempt: ``cmkd-NAME``, then ``cmkd-NAME-2``, ``cmkd-NAME-3``..."""
    return f"cmkd-{name}" if attempt == 1 else f"cmkd-{name}-{attempt}"


def check_name(name: str) -> str:
    """A sweep name as cmkd.tune takes it (:data:`cmkd.cli.SWEEP_NAME`)."""
    if not cli.valid_sweep_name(name):
        raise SubmitError(
            f"sweep name {name!r}: expected letters, digits, '.', '_' and '-', starting with a "
            "letter or digit, no '..', at most 100 characters (it names a folder and a job id)"
        )
    return name


def _name_arg(text: str) -> str:
    try:
        return check_name(text)
    except SubmitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def entrypoint(tune_args: list[str], name: str) -> str:
    """The job's command, quoted for the shell the job server runs it in."""
    args = list(tune_args)
    # cmkd.tune reads the last --name; drop earlier ones so the command reads plainly.
    while "--name" in args:
        i = args.index("--name")
        del args[i : i + 2]
    args = [a for a in args if not a.startswith("--name=") and a != "--resume"]
    return shlex.join([*ENTRYPOINT, *args, "--name", name, "--resume"])


def tune_args_of(entry: str) -> list[str]:
    """The cmkd.tune arguments of an earlier attempt's entrypoint."""
    words = shlex.split(entry)
    if tuple(words[:3]) != ENTRYPOINT:
        raise SubmitError(f"not a cmkd sweep command: {entry}")
    return words[3:]


def sweep_name_of(tune_args: list[str]) -> str:
    """The sweep name cmkd.tune will use for these arguments (its own default when unnamed)."""
    from cmkd.config import ConfigError
    from cmkd.tune import check_flags, parse_args, sweep_name

    args = parse_args(tune_args)
    try:
        check_flags(args)  # the ranges cmkd.tune checks, before the job server is contacted
    except ConfigError as e:
        raise SubmitError(str(e)) from None
    return check_name(sweep_name(args))


def runtime_env(path: Path = RUNTIME_ENV) -> dict:
    """The runtime environment file, its working_dir made absolute, W&B's key from the shell."""
    import yaml

    env = yaml.safe_load(path.read_text()) or {}
    if "working_dir" in env and "://" not in env["working_dir"]:
        env["working_dir"] = str((REPO / env["working_dir"]).resolve())
    env_vars = {k: str(v) for k, v in (env.get("env_vars") or {}).items()}
    # The entrypoint always resumes; the first attempt has nothing to resume and starts it.
    env_vars["CMKD_START_IF_MISSING"] = "1"
    if os.environ.get("WANDB_API_KEY"):
        env_vars["WANDB_API_KEY"] = os.environ["WANDB_API_KEY"]
    env["env_vars"] = env_vars
    return env


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    return JobSubmissionClient(address)


def attempts(jobs, name: str) -> list:
    """The jobs of one sweep, oldest attempt first."""
    mine = [j for j in jobs if (j.metadata or {}).get("cmkd_sweep") == name]
    return sorted(mine, key=lambda j: int(j.metadata.get("cmkd_attempt", "1")))


def latest(c, name: str):
    found = attempts(c.list_jobs(), name)
    if not found:
        raise SubmitError(f"no job of sweep {name!r} on this cluster")
    return found[-1]


def submit(c, tune_args: list[str], wait: bool, driver_resource: str | None) -> int:
    """Submit the next attempt of the sweep these arguments name, unless it runs or is done."""
    name = sweep_name_of(tune_args)
    jobs = c.list_jobs()
    before = attempts(jobs, name)
    if before:
        last, status = before[-1], str(before[-1].status)
        if status not in TERMINAL:
            print(
                f"sweep {name!r} is already {status.lower()} as job {last.submission_id}; "
                f"watch it with: python cluster/submit.py logs {name} --follow"
            )
            return 1
        if status == "SUCCEEDED":
            print(
                f"sweep {name!r} already finished (job {last.submission_id}); its results are "
                "in its storage folder. Pass another --name for a new sweep."
            )
            return 0
    attempt = 1 + max((int(j.metadata.get("cmkd_attempt", "1")) for j in before), default=0)
    job_id = submission_id(name, attempt)
    taken = {j.submission_id for j in jobs}
    if job_id in taken:
        raise SubmitError(f"job id {job_id} is taken by a job of another sweep; rename the sweep")
    command = entrypoint(tune_args, name)
    resources = {"entrypoint_resources": {driver_resource: 1}} if driver_resource else {}
    dead = [j.job_id for j in before if j.job_id]
    if dead and f"{job_id}-release" not in taken:  # once per attempt
        release(c, dead, f"{job_id}-release", resources)
    c.submit_job(
        entrypoint=command,
        submission_id=job_id,
        runtime_env=runtime_env(),
        metadata={"cmkd_sweep": name, "cmkd_attempt": str(attempt)},
        **resources,
    )
    verb = "resuming" if before else "submitted"
    print(f"{verb} sweep {name!r} as job {job_id}: {command}", flush=True)
    if not wait:
        print(f"watch it with: python cluster/submit.py logs {name} --follow")
        return 0
    return follow(c, job_id)


def release(c, dead_jobs: list[str], job_id: str, resources: dict) -> None:
    """Free what earlier attempts still hold, before the next one starts.

    A sweep stopped while a trial was starting its Ray Train workers can leave that worker
    group's placement group behind after its job has ended (seen with Ray 2.60): its CPUs or
    GPUs stay reserved and the resumed sweep's trials time out waiting for them. Removing a
    placement group needs a Ray driver on the cluster, so this runs as a small job of its own.
    """
    c.submit_job(
        entrypoint=shlex.join(["python", "cluster/submit.py", "release", *dead_jobs]),
        submission_id=job_id,
        runtime_env=runtime_env(),
        **resources,
    )
    status = wait_terminal(c, job_id, timeout=300)
    out = c.get_job_logs(job_id).strip().splitlines()
    if status == "SUCCEEDED" and out:
        print(out[-1], flush=True)
    else:  # the sweep may still start; say why nothing was released
        print(f"job {job_id}: {status}\n" + "\n".join(out[-15:]), flush=True)


def release_placement_groups(dead_jobs: list[str]) -> int:
    """Inside the cluster: remove the placement groups that these ended jobs created."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_placement_groups

    if not ray.is_initialized():
        ray.init(logging_level="ERROR", log_to_driver=False)
    left = [
        p
        for p in list_placement_groups(limit=10_000, raise_on_missing_output=False)
        if p.creator_job_id in dead_jobs and p.state != "REMOVED"
    ]
    for p in left:
        remove_placement_group(
            PlacementGroup(ray.PlacementGroupID(bytes.fromhex(p.placement_group_id)))
        )
    print(f"released {len(left)} placement group(s) left by the earlier attempts")
    return 0


def follow(c, job_id: str) -> int:
    """Print the job's output until it ends; 0 when it succeeded."""

    async def tail():
        async for lines in c.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} goes on (stop it with the stop command)")
        return 130
    status = wait_terminal(c, job_id, timeout=60)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def wait_terminal(c, job_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = str(c.get_job_status(job_id))
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(1)


def resume(c, name: str, wait: bool, driver_resource: str | None) -> int:
    """Submit the latest attempt's command again (same arguments, a new attempt id)."""
    last = latest(c, check_name(name))
    return submit(c, tune_args_of(last.entrypoint), wait, driver_resource)


def status(c, name: str) -> int:
    found = attempts(c.list_jobs(), check_name(name))
    if not found:
        raise SubmitError(f"no job of sweep {name!r} on this cluster")
    for j in found:
        msg = (j.message or "").splitlines()[0][:120] if j.message else ""
        print(f"{j.submission_id}\t{j.status}\t{msg}")
    print(f"sweep {name}: {found[-1].status}")
    return 0


def logs(c, name: str, follow_: bool) -> int:
    job_id = latest(c, check_name(name)).submission_id
    if follow_:
        return follow(c, job_id)
    print(c.get_job_logs(job_id), end="")
    return 0


def stop(c, name: str, timeout: float = 120) -> int:
    """Ask the sweep to stop (SIGINT, see runtime_env.yaml) and wait until it has."""
    job_id = latest(c, check_name(name)).submission_id
    if not c.stop_job(job_id):
        print(f"job {job_id} was not running: {c.get_job_status(job_id)}")
        return 0
    final = wait_terminal(c, job_id, timeout)
    print(f"job {job_id}: {final}; continue it with: python cluster/submit.py resume {name}")
    return 0 if final in TERMINAL else 1


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the command line, contacting nothing: a bad value exits 2 (cmkd.cli)."""
    p = cli.parser("python cluster/submit.py", __doc__)
    p.add_argument("--address", help="job server (default: RAY_ADDRESS or http://127.0.0.1:8265)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit", help="submit (or continue) a sweep: submit [options] -- TUNE ARGS")
    r = sub.add_parser("resume", help="submit a stopped or failed sweep again, same arguments")
    for q in (s, r):
        q.add_argument("--no-wait", action="store_true", help="return once submitted")
        q.add_argument(
            "--driver-resource",
            default=os.environ.get("CMKD_DRIVER_RESOURCE") or None,
            help="custom resource the sweep driver needs (cluster/*.yaml: cmkd_driver); default: "
            "the head node",
        )
    s.add_argument("tune_args", nargs=argparse.REMAINDER, help="arguments of python -m cmkd.tune")
    named = [r, sub.add_parser("status", help="the sweep's attempts and their states")]
    lg = sub.add_parser("logs", help="the latest attempt's output")
    lg.add_argument("--follow", action="store_true", help="until the job ends")
    named += [lg, sub.add_parser("stop", help="stop the running attempt; resume continues it")]
    for q in named:
        q.add_argument("name", type=_name_arg, metavar="NAME", help="the sweep's name")
    rel = sub.add_parser("release", help="(runs on the cluster) free ended jobs' placement groups")
    rel.add_argument("job_ids", nargs="+")
    args = p.parse_args(argv)
    if args.command == "submit":
        args.tune_args = args.tune_args[1:] if args.tune_args[:1] == ["--"] else args.tune_args
        try:
            sweep_name_of(args.tune_args)  # cmkd.tune's parser checks its own arguments
        except SubmitError as e:
            cli.fail(str(e))
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # a bad argument, already said on stderr (or --help)
        return e.code
    use_token_if_any()
    if args.command == "release":
        return release_placement_groups(args.job_ids)
    try:
        c = client(args.address)
        if args.command == "submit":
            return submit(c, args.tune_args, not args.no_wait, args.driver_resource)
        if args.command == "resume":
            return resume(c, args.name, not args.no_wait, args.driver_resource)
        if args.command == "status":
            return status(c, args.name)
        if args.command == "logs":
            return logs(c, args.name, args.follow)
        return stop(c, args.name)
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ConnectionError as e:
        print(f"error: cannot reach the job server: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
