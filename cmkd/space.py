"""Search spaces of a sweep: YAML files, checked before any Ray work, run as Optuna define-by-run.

One file (in ``search_spaces/`` or anywhere) describes one family of trials::

    description: one line saying what this family explores   # optional
    metric: val_acc        # optional: val_acc (default), val_acc_teacher_head, val_ce
    mode: max              # optional; must agree with the metric (val_ce is minimised)
    fixed:                 # DistillConfig values every trial gets
      epochs: 10
      batch_size: 32
    params:                # searched, in this order (a `when` looks only at earlier ones)
      fa: {choice: [sinkhorn, mmd]}
      w_fa: {loguniform: [1.0e-3, 10]}
      epsilon: {loguniform: [0.01, 1.0], when: {fa: sinkhorn}}
      mmd_kernels: {int: [1, 7], when: {fa: mmd}}

Distributions: ``uniform: [low, high]`` and ``loguniform: [low, high]`` for float fields,
``int: [low, high]`` (inclusive, optional ``log: true``) for int or float fields, and
``choice: [v1, v2, ...]`` for any field. ``when: {earlier_param: value or [values]}`` suggests a
parameter only if every named earlier parameter was suggested in the same trial and took one of
the listed values; a parameter not suggested keeps its ``fixed`` value or DistillConfig's default.
Optuna samples; it does not run grids, so ``grid_search`` is refused: use ``choice``.
PyYAML reads ``1e-3`` as text; write ``1.0e-3``.

Instead of ``metric``/``mode`` a space may declare two objectives, a quality metric and a cost
of the student (``cmkd.pareto``), and search the student's size beside the rest::

    objectives:
      - {metric: val_acc, mode: max}
      - {metric: student_params, mode: min}      # or student_latency_ms
    params:
      student_width: {choice: [8, 32, 128]}

Every bound and every choice must itself be a valid value of its DistillConfig field, so a file
that loads yields only valid trials. Each problem is a :class:`SpaceError` naming the file and
the key path, e.g. ``x.yaml: params.epsilon.loguniform: low must be > 0 for a log range, got -1``.

With Ray, ``OptunaSearch(space=space.define_by_run, metric=space.metric, mode=space.mode)``
hands each trial a flat dict: the suggested values merged with the ``fixed`` dict that
:meth:`SearchSpace.define_by_run` returns. :meth:`SearchSpace.trial_config` turns that dict into
the complete, validated DistillConfig dict.
"""

from __future__ import annotations

import difflib
import math
import types
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import ValidationError

from cmkd.config import ConfigError, DistillConfig
from cmkd.pareto import COSTS, MAX_OBJECTIVES, QUALITY

METRICS = tuple(QUALITY)
"""Metrics a sweep can optimise (reported by every trial)."""
METRIC_MODES = QUALITY
SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
"""Where :func:`load_space` finds a space given by bare name."""

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
_TOP_KEYS = (
    "description", "metric", "mode", "objectives", "fixed", "params", "start", "finalists",
    "val_per_class",
)  # fmt: skip
SIZE_FIELDS = ("student_width", "student_depth")
"""The DistillConfig fields that change what a student costs (one must be searched for a cost
objective to vary)."""
FINALISTS = 3
"""Default number of top candidates retrained on fresh seeds at the end of a sweep."""
_PARAM_KEYS = (*DISTRIBUTIONS, "when", "log")
_GRID_KEYS = ("grid_search", "grid")


class SpaceError(ValueError):
    """A search-space problem; the message names the file, the key path and what is expected."""


@dataclass(frozen=True)
class Param:
    """One searched DistillConfig field: its distribution and the condition for suggesting it."""

    name: str
    kind: Literal["uniform", "loguniform", "int", "choice"]
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple = ()
    log: bool = False
    when: dict[str, tuple] = field(default_factory=dict)
    """Earlier parameter -> the values it must have taken for this one to be suggested."""

    def active(self, sampled: dict[str, Any]) -> bool:
        """Whether every condition holds for the values ``sampled`` so far in this trial."""
        return all(
            name in sampled and any(_same(sampled[name], v) for v in values)
            for name, values in self.when.items()
        )

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial (or Ray's wrapper of one) for this parameter's value."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this parameter can take."""
        if self.kind == "choice":
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """The spec as written in a file."""
        spec: dict[str, Any] = {
            self.kind: list(self.choices) if self.kind == "choice" else [self.low, self.high]
        }
        if self.kind == "int" and self.log:
            spec["log"] = True
        if self.when:
            spec["when"] = {k: v[0] if len(v) == 1 else list(v) for k, v in self.when.items()}
        return spec


@dataclass(frozen=True)
class SearchSpace:
    """A validated family of trials: constants, searched parameters, and what to optimise."""

    path: str
    description: str
    metric: str
    mode: Literal["max", "min"]
    fixed: dict[str, Any]
    params: tuple[Param, ...]
    start: tuple[dict[str, Any], ...] = ()
    """Known-good points (searched parameters only) tried before the sampler's own proposals."""
    finalists: int = FINALISTS
    """Top candidates (references included) retrained on fresh seeds for the verdict."""
    val_per_class: int | None = None
    """Validation rows per class the sweep draws when --val-per-class is not given (None: the
    data default). A space whose gains are a few points needs enough rows to resolve them."""
    objectives: tuple[tuple[str, str], ...] = ()
    """(metric, mode) of each objective of a two-objective space (quality first, then the
    student's cost); empty for a single objective, ``metric``/``mode``. With two, ``metric`` and
    ``mode`` are the quality objective's."""

    @property
    def pareto(self) -> bool:
        """Whether the sweep searches a Pareto front of two objectives."""
        return bool(self.objectives)

    @property
    def cost(self) -> str | None:
        """The cost objective's metric (``student_params``, ``student_latency_ms``), or None."""
        return next((m for m, _ in self.objectives if m in COSTS), None)

    @property
    def names(self) -> tuple[str, ...]:
        """Searched parameter names, in suggestion order."""
        return tuple(p.name for p in self.params)

    @property
    def max_epochs(self) -> int:
        """The longest schedule a trial can have: the searched upper bound of ``epochs``, else
        its fixed value, else DistillConfig's default (ASHA's ``max_t``)."""
        for p in self.params:
            if p.name == "epochs":
                return int(max(p.choices) if p.kind == "choice" else p.high)
        return int(self.fixed.get("epochs", DistillConfig().epochs))

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms a trial of this space can run."""
        for p in self.params:
            if p.name == "algorithm":
                return tuple(p.choices) if p.kind == "choice" else ()
        return (self.fixed.get("algorithm", DistillConfig().algorithm),)

    def encode(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The searched parameters that express ``config`` as a point of this space, or None
        when no point of the space trains the same run (a value outside a range, a fixed value
        that differs). Keys that are not DistillConfig fields (``role``) are ignored."""
        known = {k: v for k, v in config.items() if k in DistillConfig.model_fields}
        try:
            full = DistillConfig.from_dict({**self.fixed, **known}).model_dump()
        except ConfigError:
            return None
        sampled: dict[str, Any] = {}
        for p in self.params:
            if p.active(sampled):
                if not p.contains(full[p.name]):
                    return None
                sampled[p.name] = full[p.name]
        if DistillConfig.from_dict({**self.fixed, **sampled}).model_dump() != full:
            return None
        return sampled

    def distributions(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Optuna distributions of the parameters in ``sampled`` (for ``create_trial``)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        out = {}
        for p in self.params:
            if p.name not in sampled:
                continue
            if p.kind == "choice":
                out[p.name] = CategoricalDistribution(list(p.choices))
            elif p.kind == "int":
                out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log)
            else:
                out[p.name] = FloatDistribution(p.low, p.high, log=p.log)
        return out

    def define_by_run(self, trial: Any) -> dict[str, Any]:
        """Suggest every active parameter in order; return the constants for Ray to merge in."""
        sampled: dict[str, Any] = {}
        for p in self.params:
            if p.active(sampled):
                sampled[p.name] = p.suggest(trial)
        return dict(self.fixed)

    def trial_config(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Every DistillConfig field of one trial: defaults, then ``fixed``, then ``sampled``.

        ``sampled`` may be Ray's trial config (suggested values already merged with ``fixed``).
        """
        merged = {**self.fixed, **sampled}
        return DistillConfig.from_dict(merged, source=f"{self.path} (trial)").model_dump()

    def to_dict(self) -> dict[str, Any]:
        """The space in file format (for logging, or writing next to a sweep's results)."""
        out = {
            "description": self.description,
            "metric": self.metric,
            "mode": self.mode,
            "fixed": dict(self.fixed),
            "params": {p.name: p.to_dict() for p in self.params},
            "finalists": self.finalists,
        }
        if self.val_per_class is not None:
            out["val_per_class"] = self.val_per_class
        if self.objectives:
            out["objectives"] = [{"metric": m, "mode": mode} for m, mode in self.objectives]
        if self.start:
            out["start"] = [dict(p) for p in self.start]
        return out


def available_spaces() -> list[str]:
    """Names of the spaces shipped in ``search_spaces/``."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(path_or_name: str | Path) -> SearchSpace:
    """Read and validate a search space: a YAML path, or a bare name from ``search_spaces/``."""
    path = _resolve(path_or_name)
    src = str(path)
    raw = _read(path, src)
    _check_top(raw, src)
    objectives = _parse_objectives(raw, src)
    metric, mode = objectives[0] if objectives else _parse_metric(raw, src)
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise SpaceError(f"{src}: description: expected one line of text, got {description!r}")
    fixed = _parse_fixed(raw.get("fixed"), src)
    params = _parse_params(raw.get("params"), fixed, src)
    finalists = raw.get("finalists", FINALISTS)
    if isinstance(finalists, bool) or not isinstance(finalists, int) or finalists < 1:
        raise SpaceError(
            f"{src}: finalists: expected a whole number >= 1 of candidates to retrain, "
            f"got {finalists!r}"
        )
    vpc = raw.get("val_per_class")
    if vpc is not None and (isinstance(vpc, bool) or not isinstance(vpc, int) or vpc < 1):
        raise SpaceError(
            f"{src}: val_per_class: expected a whole number >= 1 of validation rows per class, "
            f"got {vpc!r}"
        )
    if objectives and not any(n in SIZE_FIELDS for n in (p.name for p in params)):
        raise SpaceError(
            f"{src}: objectives: {objectives[1][0]} is the same for every trial unless the "
            f"student's size is searched; add {' or '.join(SIZE_FIELDS)} under params, e.g. "
            "student_width: {choice: [16, 64, 256]}"
        )
    space = SearchSpace(
        src, description, metric, mode, fixed, params, (), finalists, vpc, objectives
    )
    start = _parse_start(raw.get("start"), space, src)
    return replace(space, start=start)


def _parse_objectives(raw: dict, src: str) -> tuple[tuple[str, str], ...]:
    """``objectives``: exactly two ``{metric, mode}`` mappings, one quality metric (first, in
    the returned order) and one cost; ``mode`` may be left out but must agree with the metric."""
    if "objectives" not in raw:
        return ()
    objectives = raw["objectives"]
    for key in ("metric", "mode"):
        if key in raw:
            raise SpaceError(
                f"{src}: {key}: give either objectives or metric/mode, not both (with "
                "objectives, each one names its own metric and mode)"
            )
    example = "[{metric: val_acc, mode: max}, {metric: student_params, mode: min}]"
    if not isinstance(objectives, list):
        raise SpaceError(
            f"{src}: objectives: expected a list such as {example}, got {objectives!r}"
        )
    if len(objectives) != MAX_OBJECTIVES:
        more = len(objectives) > MAX_OBJECTIVES
        raise SpaceError(
            f"{src}: objectives: expected exactly {MAX_OBJECTIVES} objectives (a quality metric "
            f"and a cost of the student), got {len(objectives)}"
            + ("" if more else "; for one objective write metric: (and mode:) instead")
        )
    known = {**QUALITY, **COSTS}
    parsed = []
    for i, obj in enumerate(objectives):
        where = f"objectives[{i}]"
        if not isinstance(obj, dict):
            raise SpaceError(
                f"{src}: {where}: expected a mapping {{metric: ..., mode: ...}}, got {obj!r}"
            )
        for key in obj:
            if key not in ("metric", "mode"):
                raise SpaceError(
                    f"{src}: {where}: unknown key '{key}'{_hint(key, ('metric', 'mode'))}; "
                    "expected metric and mode"
                )
        if "metric" not in obj:
            raise SpaceError(f"{src}: {where}.metric: missing; expected one of {list(known)}")
        metric = obj["metric"]
        if metric not in known:
            raise SpaceError(
                f"{src}: {where}.metric: unknown metric {metric!r}{_hint(metric, known)}; "
                f"expected a quality metric {list(QUALITY)} or a cost {list(COSTS)}"
            )
        mode = _checked_mode(
            obj.get("mode", known[metric]), metric, known[metric], src, where + "."
        )
        parsed.append((metric, mode))
    kinds = [m in COSTS for m, _ in parsed]
    if kinds.count(True) != 1:
        which = "two costs" if all(kinds) else "two quality metrics"
        raise SpaceError(
            f"{src}: objectives: got {which} ({parsed[0][0]}, {parsed[1][0]}); expected one "
            f"quality metric {list(QUALITY)} and one cost of the student {list(COSTS)}"
        )
    return tuple(sorted(parsed, key=lambda o: o[0] in COSTS))


def _parse_start(start: Any, space: SearchSpace, src: str) -> tuple[dict[str, Any], ...]:
    """Known-good points: each a mapping of searched parameters to values the space holds,
    naming only parameters that are active at that point (others are sampled)."""
    if start is None:
        return ()
    if not isinstance(start, list):
        raise SpaceError(
            f"{src}: start: expected a list of points, e.g. [{{algorithm: ce}}], got {start!r}"
        )
    by_name = {p.name: p for p in space.params}
    points = []
    for i, point in enumerate(start):
        where = f"start[{i}]"
        if not isinstance(point, dict) or not point:
            raise SpaceError(f"{src}: {where}: expected a mapping of searched parameters to values")
        out: dict[str, Any] = {}
        for name, value in point.items():
            if name not in by_name:
                raise SpaceError(
                    f"{src}: {where}.{name}: not a searched parameter"
                    f"{_hint(name, list(by_name))}; expected some of {list(by_name)}"
                )
            value = _as_field_value(name, value, f"{where}.{name}", src)
            if not by_name[name].contains(value):
                raise SpaceError(
                    f"{src}: {where}.{name}: {value!r} is outside its distribution "
                    f"{by_name[name].to_dict()}"
                )
            out[name] = value
        for p in space.params:  # a named parameter must be active where the point puts it
            if p.name in out and not p.active(out):
                raise SpaceError(
                    f"{src}: {where}.{p.name}: not searched at this point (its condition "
                    f"when: {p.to_dict().get('when')} does not hold)"
                )
        points.append(out)
    return tuple(points)


def _resolve(path_or_name: str | Path) -> Path:
    text = str(path_or_name)
    is_name = isinstance(path_or_name, str) and not any(c in text for c in "/\\.")
    if not is_name:
        return Path(path_or_name)
    path = SPACES_DIR / f"{text}.yaml"
    if not path.is_file():
        names = available_spaces()
        raise SpaceError(
            f"{text}: no search space named '{text}'{_hint(text, names)} in {SPACES_DIR}; "
            f"available: {', '.join(names) or '(none)'}"
        )
    return path


def _read(path: Path, src: str) -> dict:
    if not path.is_file():
        raise SpaceError(
            f"{src}: search space file not found "
            f"(shipped spaces: {', '.join(available_spaces()) or '(none)'})"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpaceError(f"{src}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise SpaceError(
            f"{src}: (top level): expected a mapping with keys {list(_TOP_KEYS)}, got {got}"
        )
    return raw


def _check_top(raw: dict, src: str) -> None:
    for key in raw:
        if key not in _TOP_KEYS:
            if key in _GRID_KEYS:
                raise SpaceError(f"{src}: {key}: {_NO_GRIDS}")
            raise SpaceError(
                f"{src}: unknown top-level key '{key}'{_hint(key, _TOP_KEYS)}; "
                f"expected some of {list(_TOP_KEYS)}"
            )


def _parse_metric(raw: dict, src: str) -> tuple[str, str]:
    metric = raw.get("metric", "val_acc")
    if metric not in METRICS:
        raise SpaceError(
            f"{src}: metric: unknown metric {metric!r}{_hint(metric, METRICS)}; "
            f"expected one of {list(METRICS)}"
        )
    return metric, _checked_mode(
        raw.get("mode", METRIC_MODES[metric]), metric, METRIC_MODES[metric], src
    )


def _checked_mode(mode: Any, metric: str, expected: str, src: str, where: str = "") -> str:
    """A metric's mode as written, refused unless it is max or min and agrees with the metric;
    ``where`` prefixes the key in the message (``objectives[1].``)."""
    if mode not in ("max", "min"):
        raise SpaceError(f"{src}: {where}mode: expected max or min, got {mode!r}")
    if mode != expected:
        raise SpaceError(
            f"{src}: {where}mode: {metric} is to be {expected}imised; mode must be {expected} "
            f"(or left out), got {mode}"
        )
    return mode


def _parse_fixed(fixed: Any, src: str) -> dict[str, Any]:
    if fixed is None:
        return {}
    if not isinstance(fixed, dict):
        raise SpaceError(
            f"{src}: fixed: expected a mapping of DistillConfig keys to values, "
            f"got {type(fixed).__name__}"
        )
    try:
        cfg = DistillConfig.from_dict(fixed, source=src, prefix="fixed.")
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    return {k: getattr(cfg, k) for k in fixed}


def _parse_params(params: Any, fixed: dict, src: str) -> tuple[Param, ...]:
    if params is None or params == {} or params == []:
        raise SpaceError(
            f"{src}: params: empty search space; list at least one parameter to search "
            "(constants go under fixed)"
        )
    if not isinstance(params, dict):
        raise SpaceError(
            f"{src}: params: expected a mapping of parameter name to distribution, "
            f"got {type(params).__name__}"
        )
    fields = DistillConfig.model_fields
    names = list(params)
    parsed: dict[str, Param] = {}
    for name, spec in params.items():
        where = f"params.{name}"
        if name not in fields:
            raise SpaceError(
                f"{src}: {where}: '{name}' is not a DistillConfig field{_hint(name, fields)}"
            )
        if name in fixed:
            raise SpaceError(
                f"{src}: {where}: '{name}' is both fixed and searched; keep one of the two"
            )
        parsed[name] = _parse_param(name, spec, parsed, names, fixed, src)
    return tuple(parsed.values())


def _parse_param(
    name: str, spec: Any, earlier: dict[str, Param], names: list, fixed: dict, src: str
) -> Param:
    where = f"params.{name}"
    if not isinstance(spec, dict):
        raise SpaceError(
            f"{src}: {where}: expected a mapping such as {{choice: [a, b]}} or "
            f"{{loguniform: [low, high]}}, got {spec!r}"
        )
    for key in spec:
        if key in _GRID_KEYS:
            raise SpaceError(f"{src}: {where}.{key}: {_NO_GRIDS}")
        if key not in _PARAM_KEYS:
            raise SpaceError(
                f"{src}: {where}: unknown key '{key}'{_hint(key, _PARAM_KEYS)}; "
                f"expected one of {list(DISTRIBUTIONS)}, with optional when (and log for int)"
            )
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    if len(kinds) != 1:
        got = "none" if not kinds else ", ".join(kinds)
        raise SpaceError(
            f"{src}: {where}: expected exactly one distribution of {list(DISTRIBUTIONS)}, got {got}"
        )
    kind = kinds[0]
    where = f"{where}.{kind}"
    _check_field_accepts(name, kind, where, src)
    log = spec.get("log", False)
    if "log" in spec and kind != "int":
        raise SpaceError(
            f"{src}: params.{name}.log: log applies to int only; use loguniform for floats"
        )
    if not isinstance(log, bool):
        raise SpaceError(f"{src}: params.{name}.log: expected true or false, got {log!r}")
    when = _parse_when(name, spec.get("when"), earlier, names, fixed, src)
    if kind == "choice":
        return Param(name, kind, choices=_parse_choices(name, spec[kind], where, src), when=when)
    log = log or kind == "loguniform"
    low, high = _parse_bounds(name, kind, spec[kind], log, where, src)
    return Param(name, kind, low=low, high=high, log=log, when=when)


def _check_field_accepts(name: str, kind: str, where: str, src: str) -> None:
    field_type = _field_type(name)
    if kind in ("uniform", "loguniform") and field_type is not float:
        use = "int: [low, high]" if field_type is int else "choice: [...]"
        raise SpaceError(f"{src}: {where}: '{name}' is not a float field; use {use}")
    if kind == "int" and field_type not in (int, float):
        raise SpaceError(f"{src}: {where}: '{name}' is not a numeric field; use choice: [...]")


def _field_type(name: str) -> Any:
    """float or int for numeric DistillConfig fields (None allowed or not), else the annotation."""
    annotation = DistillConfig.model_fields[name].annotation
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _parse_bounds(
    name: str, kind: str, bounds: Any, log: bool, where: str, src: str
) -> tuple[float | int, float | int]:
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise SpaceError(f"{src}: {where}: expected [low, high], got {bounds!r}")
    for which, value in zip(("low", "high"), bounds, strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str) and _is_float_text(value):
                hint = " (YAML reads 1e-3 as text; write 1.0e-3)"
            raise SpaceError(f"{src}: {where}: {which} must be a number, got {value!r}{hint}")
        if not math.isfinite(value):
            raise SpaceError(f"{src}: {where}: {which} must be finite, got {value!r}")
        if kind == "int" and not isinstance(value, int):
            raise SpaceError(f"{src}: {where}: int bounds must be integers, {which} is {value!r}")
    low, high = bounds
    if low >= high:
        raise SpaceError(f"{src}: {where}: low must be < high, got low={low!r}, high={high!r}")
    if log and low <= 0:
        raise SpaceError(f"{src}: {where}: low must be > 0 for a log range, got {low!r}")
    for which, value in zip(("low", "high"), bounds, strict=True):
        _as_field_value(name, value, where, src, label=f"{which} ")
    if kind == "int":
        return low, high
    return float(low), float(high)


def _parse_choices(name: str, choices: Any, where: str, src: str) -> tuple:
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"{src}: {where}: expected a non-empty list of values, got {choices!r}")
    values = []
    for i, value in enumerate(choices):
        if isinstance(value, (list, dict)):
            raise SpaceError(f"{src}: {where}[{i}]: expected a single value, got {value!r}")
        value = _as_field_value(name, value, f"{where}[{i}]", src)
        if any(_same(value, v) for v in values):
            raise SpaceError(f"{src}: {where}[{i}]: {value!r} is listed twice")
        values.append(value)
    return tuple(values)


def _parse_when(
    name: str, when: Any, earlier: dict[str, Param], names: list, fixed: dict, src: str
) -> dict[str, tuple]:
    where = f"params.{name}.when"
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        raise SpaceError(
            f"{src}: {where}: expected a mapping of earlier parameter to value(s), got {when!r}"
        )
    conditions = {}
    for ref, values in when.items():
        at = f"{where}.{ref}"
        if ref == name:
            raise SpaceError(f"{src}: {at}: a parameter cannot depend on itself")
        if ref in fixed:
            raise SpaceError(
                f"{src}: {at}: '{ref}' is fixed to {fixed[ref]!r}, not searched; "
                "drop the condition or search it"
            )
        if ref in names and ref not in earlier:
            raise SpaceError(
                f"{src}: {at}: '{ref}' is searched after '{name}'; "
                "move it earlier (parameters are suggested in file order)"
            )
        if ref not in earlier:
            raise SpaceError(
                f"{src}: {at}: '{ref}' is not a searched parameter{_hint(ref, list(earlier))}; "
                f"expected one of the parameters before it: {list(earlier)}"
            )
        target = earlier[ref]
        if target.kind in ("uniform", "loguniform"):
            raise SpaceError(
                f"{src}: {at}: '{ref}' is continuous ({target.kind}); a condition can only "
                "test a choice or int parameter"
            )
        values = values if isinstance(values, list) else [values]
        if not values:
            raise SpaceError(f"{src}: {at}: expected a value or a non-empty list of values")
        kept = []
        for value in values:
            try:
                coerced = getattr(DistillConfig.model_validate({ref: value}), ref)
            except ValidationError:
                coerced = value
            if not target.contains(coerced):
                can = list(target.choices) if target.kind == "choice" else [target.low, target.high]
                what = "one of" if target.kind == "choice" else "an integer in"
                raise SpaceError(
                    f"{src}: {at}: '{ref}' can never be {value!r}; it takes {what} {can}"
                )
            kept.append(coerced)
        conditions[ref] = tuple(kept)
    return conditions


def _as_field_value(name: str, value: Any, where: str, src: str, label: str = "") -> Any:
    """``value`` as DistillConfig holds field ``name``; SpaceError at ``where`` if it is invalid."""
    try:
        return getattr(DistillConfig.model_validate({name: value}), name)
    except ValidationError as e:
        msg = " or ".join(dict.fromkeys(err["msg"] for err in e.errors()))
        raise SpaceError(f"{src}: {where}: {label}{value!r} is not a valid {name}: {msg}") from None


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; a condition on a bool field must not match an int, nor vice versa.
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _hint(word: Any, options: Any) -> str:
    near = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean '{near[0]}'?)" if near else ""


_NO_GRIDS = (
    "grid searches are not supported: Optuna samples rather than enumerating a grid; "
    "use choice: [v1, v2, ...]"
)
