"""The sweep's searcher: Optuna's TPE behind Ray Tune's ``Searcher`` interface, warm-started.

Ray's own ``OptunaSearch`` tells Optuna a trial's *last* result and marks a trial ASHA stopped
as COMPLETE with its early value; it cannot add evaluated points to a define-by-run space, and
TPE samples at random until ``n_startup_trials`` trials have completed. This searcher uses
Optuna's ask-and-tell interface directly so that:

- the objective is one number everywhere: ``best_<metric>``, the best validation value up to
  the trial's latest epoch (ASHA's rungs, Optuna and the leaderboard read the same value);
- a trial ASHA stopped reaches Optuna as PRUNED, with its epochs as intermediate values (TPE
  ranks it below every finished trial, and among pruned ones by how far it got);
- the reference trials run first, and each whose config is a point of the space enters the
  study as an evaluated trial when it finishes; the space's ``start`` points are tried first;
- TPE's random start-up is sized for the budget (:func:`startup_trials`), the references count
  towards it, and its "good" set is the best quarter (:func:`good_share`), not the best tenth;
- a proposal that would train a run already trained or running (same config, same seed: the
  same numbers) is not run again: it is recorded as FAIL (so TPE does not weigh it twice) and
  the searcher asks again, falling back to a random proposal after a few repeats.

A space with two ``objectives`` (``cmkd.pareto``) makes it a multi-objective study: TPE with
one direction per objective, each trial told its two values (``best_<metric>`` and the cost
the trial reports), ``study.best_trials`` its Pareto front. Optuna keeps no intermediate values
for several objectives, so nothing is reported per epoch; the sweep stops no trial early.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from typing import Any

from ray.tune.search import Searcher

from cmkd.config import DistillConfig
from cmkd.pareto import result_key
from cmkd.space import SearchSpace

REPEATS_BEFORE_RANDOM = 3
"""Repeated proposals in a row after which the next one is drawn at random."""
MAX_ASKS = 30
"""Proposals tried per suggestion before a repeat is accepted (a space with few points)."""


def startup_trials(budget: int) -> int:
    """Random proposals before TPE models the results: about sqrt(budget), from 2 to 10.

    8 searched trials: 3; 30: 5; 100: 10. Evaluated references count towards it.
    """
    return int(min(10, max(2, round(math.sqrt(max(budget, 1))))))


def good_share(n: int) -> int:
    """TPE's split: the best quarter of the n finished trials model the "good" region.

    Optuna's default, ceil(0.1 n), leaves a single good trial until 15 have finished: with a
    budget of 12 and 2 at once its proposals were no closer to the optimum at the end than at
    the start (tests/test_searcher.py, 5 of 10 seeds; with a quarter, 10 of 10).
    """
    return min(max(1, math.ceil(0.25 * n)), 25)


def canonical(config: dict[str, Any]) -> str:
    """The run a config trains, as text: every DistillConfig field (defaults filled in)."""
    known = {k: v for k, v in config.items() if k in DistillConfig.model_fields}
    return json.dumps(DistillConfig.from_dict(known).model_dump(), sort_keys=True)


class TPESearch(Searcher):
    """Reference trials first, then the space's ``start`` points, then TPE's proposals."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int,
        budget: int,
        references: list[dict] = (),
        sampler: str = "tpe",
    ):
        import optuna

        super().__init__(metric="best_" + space.metric, mode=space.mode)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # group=True models each branch of a conditional space jointly (marked experimental).
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.space = space
        objectives = space.objectives or ((space.metric, space.mode),)
        self.keys = [result_key(m) for m, _ in objectives]
        """The result each objective is read from, in the study's order."""
        directions = ["maximize" if mode == "max" else "minimize" for _, mode in objectives]
        with warnings.catch_warnings():
            # Optuna marks `gamma` deprecated (4.9) with no replacement; pyproject pins optuna
            # below 6, and tests/test_searcher.py fails if the split stops concentrating.
            warnings.simplefilter("ignore", FutureWarning)
            tpe = optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                constant_liar=True,  # trials running in parallel are not proposed twice
                group=True,
                n_startup_trials=startup_trials(budget),
                gamma=good_share,
            )
        random = optuna.samplers.RandomSampler(seed=seed)
        self.study = optuna.create_study(
            directions=directions, sampler=tpe if sampler == "tpe" else random
        )
        # The same study (one storage) asked through a random sampler: the way out of repeats.
        self.random = optuna.create_study(
            storage=self.study._storage,
            study_name=self.study.study_name,
            sampler=optuna.samplers.RandomSampler(seed=seed + 1),
            load_if_exists=True,
        )
        for point in space.start if sampler == "tpe" else ():  # random search is plain
            self.study.enqueue_trial(point, skip_if_exists=True)
        self.pending = [dict(r) for r in references]
        self.references: dict[str, dict] = {}  # trial id -> config
        self.trials: dict[str, Any] = {}  # trial id -> (optuna trial, its epochs)
        self.seen: set[str] = {canonical(r) for r in self.pending}

    # -- Tune's Searcher interface ------------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is ours; Tune's own metric and mode are the same objective

    def suggest(self, trial_id: str) -> dict | None:
        if self.pending:
            config = self.pending.pop(0)
            self.references[trial_id] = config
            return config
        trial, config = self._propose()
        self.trials[trial_id] = (trial, int(config.get("epochs", DistillConfig().epochs)))
        return {**config, "role": "search"}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.space.pareto:  # Optuna keeps no intermediate values for several objectives
            return
        if trial_id in self.trials and self.metric in result and "epoch" in result:
            trial, _ = self.trials[trial_id]
            value = float(result[self.metric])
            if math.isfinite(value):
                with warnings.catch_warnings():  # an epoch re-reported after a resume
                    warnings.simplefilter("ignore")
                    trial.report(value, int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error=False) -> None:
        from optuna.trial import TrialState, create_trial

        values = [(result or {}).get(k) for k in self.keys]
        ok = not error and all(v is not None and math.isfinite(float(v)) for v in values)
        values = [float(v) for v in values] if ok else None
        if trial_id in self.references:
            config = self.references.pop(trial_id)
            point = self.space.encode(config)
            if ok and point is not None:  # a reference the space can express: a known point
                self.study.add_trial(
                    create_trial(
                        params=point,
                        distributions=self.space.distributions(point),
                        values=values,
                        user_attrs={"role": config.get("role", "reference")},
                    )
                )
            return
        if trial_id not in self.trials:
            return
        trial, epochs = self.trials.pop(trial_id)
        if not ok:
            self.study.tell(trial, state=TrialState.FAIL)
        elif int(result.get("epoch", epochs)) < epochs:  # stopped early (ASHA, time budget)
            if not self.space.pareto:
                with warnings.catch_warnings():  # the epoch may be reported already
                    warnings.simplefilter("ignore")
                    trial.report(values[0], int(result["epoch"]))
            self.study.tell(trial, state=TrialState.PRUNED)  # valued at its last epoch
        else:
            self.study.tell(trial, values)

    def save(self, checkpoint_path: str) -> None:
        # One file (Tune renames it atomically); the study and its storage travel inside.
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    # -- proposals ------------------------------------------------------------------------------

    def _propose(self) -> tuple[Any, dict]:
        """A new Optuna trial and its config, not a repeat of a run already trained or running
        (unless the space offers nothing new within :data:`MAX_ASKS` proposals)."""
        from optuna.trial import TrialState

        repeats = 0
        for _ in range(MAX_ASKS):
            asker = self.random if repeats >= REPEATS_BEFORE_RANDOM else self.study
            trial = asker.ask()
            fixed = self.space.define_by_run(trial)  # suggests every active parameter
            config = {**fixed, **trial.params}
            key = canonical(config)
            if key not in self.seen:
                self.seen.add(key)
                return trial, config
            repeats += 1
            trial.set_user_attr("repeat_of_a_trained_run", True)
            self.study.tell(trial, state=TrialState.FAIL)
        return trial, config  # the space is exhausted: a repeat it is

    def proposals(self) -> list[dict]:
        """Every searched parameter set Optuna proposed and ran, in order (for tests, reports)."""
        from optuna.trial import TrialState

        return [
            t.params
            for t in self.study.get_trials(deepcopy=False)
            if not (t.state == TrialState.FAIL and t.user_attrs.get("repeat_of_a_trained_run"))
            and "role" not in t.user_attrs
        ]


def make_searcher(
    space: SearchSpace, seed: int, budget: int, references: list[dict], sampler: str = "tpe"
) -> TPESearch:
    """The sweep's searcher (tests and benchmarks build it through here too). ``sampler``
    ``random`` is the baseline: random draws, no start points (references still run first)."""
    return TPESearch(space, seed=seed, budget=budget, references=references, sampler=sampler)
