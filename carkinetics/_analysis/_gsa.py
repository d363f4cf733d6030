"""Global sensitivity analysis problems: SALib-style factor definitions shared by Sobol and Morris, and the batch
function of a model (`model_function`), so that either design runs on the batched ensemble engine.

Problems are given SALib-style as `{"names": [...], "bounds": [[lo, hi], ...]}` (uniform inputs); sample layouts
and estimators match SALib's `sobol.analyze(calc_second_order=False)` and `morris.analyze`, so samples from either
library can be analysed by the other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from .._core._parameters import parameters
from .._engine._batch import Experiment
from .._engine._simulate import Engine, engine_of, resolve_solver
from ._sweep import ParameterBatch


@dataclasses.dataclass(frozen=True)
class GSAProblem:
    """Uniform input factors of a sensitivity analysis: `names` and `bounds` (`(d, 2)`, lower and upper).

    Build from a SALib-style dict with [`carkinetics.gsa_problem`][]; bounds are in the natural units of each
    factor (e.g. the parameter's unit when the names are model parameter names).
    """

    names: tuple[str, ...]
    bounds: tuple[tuple[float, float], ...]

    def __post_init__(self):
        if len(self.names) == 0:
            raise ValueError("A sensitivity problem needs at least one factor; `names` is empty.")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"`names` contains duplicates: {list(self.names)}.")
        if len(self.bounds) != len(self.names):
            raise ValueError(f"`bounds` has {len(self.bounds)} rows but there are {len(self.names)} names.")
        for n, (lo, hi) in zip(self.names, self.bounds):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"Bounds of factor {n!r} must be finite with lower < upper, got [{lo}, {hi}].")

    @property
    def num_vars(self) -> int:
        return len(self.names)

    def lower(self) -> np.ndarray:
        return np.array([b[0] for b in self.bounds], dtype=float)

    def width(self) -> np.ndarray:
        return np.array([b[1] - b[0] for b in self.bounds], dtype=float)

    def to_salib(self) -> dict:
        """The SALib problem dict."""
        return {"num_vars": self.num_vars, "names": list(self.names), "bounds": [list(b) for b in self.bounds]}


def gsa_problem(problem: Mapping[str, Any] | GSAProblem) -> GSAProblem:
    """A [`carkinetics.GSAProblem`][] from a SALib-style dict `{"names": [...], "bounds": [[lo, hi], ...]}`.

    `num_vars`, if present, must equal the number of names; SALib's `groups` (other than one group per factor)
    and non-uniform `dists` are not supported (all factors are independent uniforms).

    **Example:** `ck.gsa_problem({"names": ["car.rho", "car.k_exh"], "bounds": [[0.1, 1.0], [0.01, 0.1]]})`
    """
    if isinstance(problem, GSAProblem):
        return problem
    if not isinstance(problem, Mapping):
        raise ValueError(
            f"`problem` must be a dict with 'names' and 'bounds' or a GSAProblem, got {type(problem).__name__}."
        )
    for key in ("names", "bounds"):
        if key not in problem:
            raise ValueError(f"`problem` is missing the key {key!r}; SALib-style problems have 'names' and 'bounds'.")
    groups, dists = problem.get("groups"), problem.get("dists")
    if groups is not None and list(groups) != list(problem["names"]):
        raise ValueError("`problem['groups']` is not supported (factor groups); carkinetics GSA analyses each factor.")
    if dists is not None and any(dist != "unif" for dist in dists):
        raise ValueError(f"`problem['dists']` = {list(dists)} is not supported: factors must be uniform ('unif').")
    names = tuple(str(n) for n in problem["names"])
    bounds = np.asarray(problem["bounds"], dtype=float)
    if bounds.ndim != 2 or bounds.shape[1] != 2:
        raise ValueError(f"`problem['bounds']` must be a list of [lower, upper] pairs, got shape {bounds.shape}.")
    if "num_vars" in problem and int(problem["num_vars"]) != len(names):
        raise ValueError(f"`problem['num_vars']` = {problem['num_vars']} differs from the {len(names)} names.")
    return GSAProblem(names, tuple((float(lo), float(hi)) for lo, hi in bounds))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _check_confidence(confidence: float) -> float:
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"`confidence` must lie strictly between 0 and 1, got {confidence!r}.")
    return float(confidence)


def _has_ok(fn: Any, has_ok: bool | None) -> bool:
    return isinstance(fn, ParameterBatch) if has_ok is None else bool(has_ok)


def _analyse_tree(outputs: Any, analyse: Callable[[np.ndarray], Any]) -> Any:
    return jax.tree_util.tree_map(analyse, outputs, is_leaf=lambda x: isinstance(x, np.ndarray))


# ----------------------------------------------------------------------------------------------------------------
# models


def model_function(
    model: Any,
    regimen: Any,
    ts: Any,
    names: Sequence[str],
    metrics: Callable[[Any], Mapping[str, Any]],
    *,
    engine: Engine | None = None,
    solver: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 100_000,
    t0: float | None = None,
) -> ParameterBatch:
    """The batch function of a GSA of a model: rows `x (n, d)` of parameter values -> `(metrics, ok)`.

    Columns of `x` are the values (natural units) of the parameters `names` (dotted, as `problem["names"]`); each
    chunk of rows is integrated with one engine call (default: the batched ensemble engine; `engine="vmap"` for
    `jax.vmap` of the per-member diffrax engine) and reduced with `metrics(sol) -> dict`. Failed members are masked
    and dropped from the indices. The result is an `eqx.Module`, so new parameter values in `model` do not
    recompile.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    ts = jnp.linspace(0.0, 1.0, 11)
    f = ck.model_function(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), ts, ["cl", "v"],
                          lambda sol: {"auc": ck.metrics.auc(sol.ts, sol.observables.concentration)})
    prob = {"names": ["cl", "v"], "bounds": [[50.0, 200.0], [30.0, 60.0]]}
    idx, x, _ = ck.sobol_analysis(f, prob, 64, key=jax.random.key(0), progress=False)
    ```
    """
    allp = parameters(model)
    for n in names:
        if n not in allp:
            raise ValueError(f"Unknown parameter {n!r} in `names`; known parameters are {sorted(allp)}.")
    if metrics is None or not callable(metrics):
        raise ValueError(f"`metrics` must be a function of a Solution returning a dict, got {metrics!r}.")
    experiment = Experiment(regimen, ts, metrics, solver=solver, rtol=rtol, atol=atol, max_steps=max_steps, t0=t0)
    return ParameterBatch(experiment, model, tuple(names), engine_of(resolve_solver(model, solver, engine)))
