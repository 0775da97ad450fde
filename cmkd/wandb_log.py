"""One W&B run per sweep trial, written from the sweep's own process.

Ray's ``WandbLoggerCallback`` starts, for every trial, a logging actor (a Ray worker that imports
W&B), a queue actor feeding it and a ``wandb-core`` service of its own: about 0.2 GB per trial
that runs. Here every run lives in the driver, which already imports W&B: one ``wandb-core``
serves them all (W&B keeps several runs of one process apart with ``reinit="create_new"``).
The runs are the ones Ray's callback writes: id the trial id, name the trial, group the sweep,
the trial's config, every numeric result at step ``training_iteration``.
"""

from __future__ import annotations

import numbers
import threading

import numpy as np
from ray.tune.logger import LoggerCallback
from ray.tune.utils import flatten_dict

TO_CONFIG = ("trial_id", "experiment_tag", "node_ip", "experiment_id", "hostname", "pid", "date")
"""Result keys that describe the trial rather than measure it: kept in the run's config."""
NOT_LOGGED = ("done", "should_checkpoint", "config")
WAIT_S = 10.0
"""The longest W&B may hold the sweep: to start a run, and to finish one (its upload)."""


def _number(v) -> bool:
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.item()
    return isinstance(v, numbers.Number)


class WandbRuns(LoggerCallback):
    """Tune callback: one W&B run per trial, all in this process and one W&B service."""

    def __init__(self, project: str, group: str, mode: str, excludes: tuple[str, ...] = ()):
        self.project, self.group, self.mode = project, group, mode
        self.excludes = (*NOT_LOGGED, *excludes)
        self._runs: dict = {}
        self._warned: set[str] = set()

    def _warn_once(self, kind: str, text: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            print(f"warning: {text}", flush=True)

    def _skip(self, key: str) -> bool:
        return any(key == e or key.startswith(e + "/") for e in self.excludes)

    def log_trial_start(self, trial) -> None:
        if trial in self._runs:  # a trial restarted in this process keeps its run
            return
        import wandb

        config = {k: v for k, v in trial.config.items() if not self._skip(k)}

        def start(mode: str):
            return wandb.init(
                project=self.project,
                group=self.group,
                mode=mode,
                id=trial.trial_id,
                name=str(trial),
                config={**config, "trial_log_path": trial.local_path},
                allow_val_change=True,
                reinit="create_new",  # runs of concurrent trials side by side in one process
                # The driver's CPU and console say nothing about a trial: no system metrics, no
                # capture of the sweep's own output. A server that went away costs WAIT_S.
                settings=wandb.Settings(console="off", x_disable_stats=True, init_timeout=WAIT_S),
            )

        try:
            self._runs[trial] = start(self.mode)
        except Exception as e:  # noqa: BLE001 - logging never takes the sweep down
            if self.mode != "online":
                self._warn_once("init", f"W&B run of {trial} not started ({e}); the trial goes on")
                return
            self._warn_once(
                "online", f"W&B unreachable during the sweep ({e}); later runs are offline"
            )
            self.mode = "offline"
            self.log_trial_start(trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial not in self._runs:
            self.log_trial_start(trial)
        run = self._runs.get(trial)
        if run is None:  # its run could not start: warned once already
            return
        log, config = {}, {}
        for k, v in flatten_dict(result, delimiter="/").items():
            if self._skip(k):
                continue
            if k in TO_CONFIG:
                config[k] = v
            elif _number(v):
                log[k] = v
        if config:
            run.config.update(config, allow_val_change=True)
        run.log(log, step=result.get("training_iteration"))

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run = self._runs.pop(trial, None)
        if run is None:
            return
        # An upload that hangs (the server went away mid-sweep) must not hold the sweep: wait
        # WAIT_S, then go on; the run stays in the local W&B folder for `wandb sync`.
        done = threading.Thread(target=run.finish, kwargs={"exit_code": int(failed)}, daemon=True)
        done.start()
        done.join(WAIT_S)
        if done.is_alive():
            self._warn_once(
                "finish",
                f"W&B did not finish uploading {trial} within {WAIT_S:.0f} s; the sweep goes on "
                "and the run is kept in the sweep's wandb folder (`wandb sync` it later)",
            )

    def on_experiment_end(self, trials, **info) -> None:
        for trial in list(self._runs):  # trials Tune did not end (an interrupted sweep)
            self.log_trial_end(trial)
