"""Calibration: targets bound to a model, priors from confidence tags, and multistart optax optimisation.

The workflow:

1. Bind data to model outputs: [`carkinetics.TimeCourseData`][] (observations of one observable at given days)
   and [`carkinetics.SummaryData`][] (a published summary number compared with a differentiable statistic of a
   simulation, e.g. `TimeBelow("b_blood", 1.0)` vs "B-cell reappearance 110 ± 32 d"). The helpers
   [`carkinetics.summary_target`][] and [`carkinetics.timecourse_target`][] build them from validated target rows
   (unit conversion, spread -> error model).
2. Build a [`carkinetics.CalibrationProblem`][]: the model, the regimen, the targets, the names of the parameters
   to estimate (all others stay fixed), and priors from the confidence tags (see `PRIOR_SD`). The problem works in
   the unconstrained space of [`carkinetics.ParameterSpace`][] (log / logit transforms from the declared bounds);
   `problem.loss(z)` is the negative log posterior.
3. [`carkinetics.fit`][] runs Adam then L-BFGS from several starts in one compiled program - by default every
   iteration evaluates all starts in one batched ensemble solve (`engine="ensemble"`; `engine="vmap"` vmaps
   optax over `ck.simulate`) - and returns a [`carkinetics.FitResult`][] with per-start convergence information.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._analysis._checkpoint import Checkpoint, fingerprint, package_version
from .._analysis._interrupt import Interrupted, stop_on_signals
from .._core._custom_types import Array, Float
from .._core._model import AbstractKineticModel
from .._core._parameters import parameters
from .._engine._simulate import ENGINES, engine_of
from ._optimisers import _run_multistart, _run_multistart_ensemble
from ._problem import _Z_CLIP, CalibrationProblem


class FitResult(eqx.Module):
    """The outcome of [`carkinetics.fit`][].

    **Fields:** `problem`; `z` (best unconstrained vector) and `loss` (its negative log posterior); per start:
    `z_starts`, `z_final`, `losses`, `grad_norms`, `converged` and `history` (loss after every iteration,
    shape `(starts, iterations + 1)`); `best` (index of the best start); `gtol`, `ftol` (convergence criteria);
    `engine` (`"ensemble"` or `"vmap"`: the engine that ran, see [`carkinetics.fit`][]).

    **Properties / methods:** `model` (fitted model), `values()` (name -> value), `success` (the best start
    converged), `at_bounds()`, `parameter_table()`, `convergence_report()`, `n_agree` (starts within `ftol` of the
    best loss).
    """

    problem: CalibrationProblem
    z: Float[Array, " n"]
    loss: Array
    z_starts: Float[Array, "S n"]
    z_final: Float[Array, "S n"]
    losses: Float[Array, " S"]
    grad_norms: Float[Array, " S"]
    converged: Any
    history: Float[Array, "S K"]
    best: int = eqx.field(static=True)
    gtol: float = eqx.field(static=True)
    ftol: float = eqx.field(static=True)
    engine: str = eqx.field(static=True, default="vmap")

    @property
    def model(self) -> AbstractKineticModel:
        return self.problem.to_model(self.z)

    def values(self) -> dict[str, float]:
        """Fitted values (natural units) by parameter name."""
        return {n: float(v) for n, v in zip(self.problem.names, np.asarray(self.problem.values(self.z)))}

    @property
    def success(self) -> bool:
        """Whether the best start converged (see `converged`): a failed fit is never reported as converged."""
        return bool(np.asarray(self.converged)[self.best])

    def at_bounds(self) -> list[str]:
        """Parameters of the best start that ran to the edge of their transform (a bound or infinity)."""
        z = np.asarray(self.z)
        return [n for n, zi in zip(self.problem.names, z) if abs(zi) >= _Z_CLIP - 1.0]

    @property
    def n_agree(self) -> int:
        """Number of starts whose final loss is within `ftol * max(1, |best|)` of the best."""
        tol = self.ftol * max(1.0, abs(float(self.loss)))
        return int(np.sum(np.abs(np.asarray(self.losses) - float(self.loss)) <= tol))

    def parameter_table(self, sd_z: Any = None) -> str:
        """Markdown table: parameter, prior centre, fitted value, unit, prior tag (fitted values are tag F)."""
        allp = parameters(self.problem.model)
        start = np.asarray(self.problem.values(self.problem.z0))
        fitted = np.asarray(self.problem.values(self.z))
        head = (
            "| parameter | prior centre / default | fitted [F] | unit | tag of default | sd (z scale) |\n"
            "|---|---|---|---|---|---|"
        )
        rows = []
        for k, n in enumerate(self.problem.names):
            sd = "" if sd_z is None else f"{float(np.asarray(sd_z)[k]):.3g}"
            rows.append(f"| {n} | {start[k]:.5g} | {fitted[k]:.5g} | {allp[n].info.unit} | {allp[n].info.tag} | {sd} |")
        return "\n".join([head, *rows])

    def convergence_report(self) -> str:
        """Per-start final loss, gradient norm and convergence flag, plus the agreement of the starts."""
        lines = [
            f"multistart: {len(np.asarray(self.losses))} starts, best loss {float(self.loss):.6g} "
            f"(start {self.best}), "
            f"{self.n_agree} starts within ftol={self.ftol:g} of the best, "
            f"{int(np.sum(np.asarray(self.converged)))} converged (|grad| <= {self.gtol:g}, or relative loss "
            f"change <= {self.ftol:g} over the last 5 iterations with |grad| <= sqrt(ftol) max(1, |loss|); "
            "from a finite loss below the failure penalty, no worse than the start, no parameter at the edge of "
            "its range)"
            + ("" if self.success else "; THE FIT FAILED: the best start did not converge")
            + (f"; at a bound: {self.at_bounds()}" if self.at_bounds() else ""),
            "| start | final loss | grad norm | converged |",
            "|---|---|---|---|",
        ]
        for i, (loss, g, c) in enumerate(
            zip(np.asarray(self.losses), np.asarray(self.grad_norms), np.asarray(self.converged))
        ):
            lines.append(f"| {i}{' *' if i == self.best else ''} | {loss:.6g} | {g:.3g} | {bool(c)} |")
        return "\n".join(lines)


def make_starts(
    problem: CalibrationProblem, key: Any, n_starts: int, *, scale: float = 0.5, include_default: bool = True
) -> Float[Array, "S n"]:
    """Starting points: the prior centre (if `include_default`) plus normal perturbations of sd `scale` on the
    unconstrained scale (a factor ~e^±scale for log-transformed parameters)."""
    if isinstance(n_starts, bool) or not isinstance(n_starts, int) or n_starts < 1:
        raise ValueError(f"`n_starts` must be a positive int, got {n_starts!r}.")
    if not (isinstance(scale, (int, float)) and scale >= 0):
        raise ValueError(f"`scale` must be a non-negative number, got {scale!r}.")
    z0 = problem.z0
    noise = scale * jax.random.normal(key, (n_starts, z0.shape[0]), dtype=z0.dtype)
    if include_default:
        noise = noise.at[0].set(0.0)
    return z0[None, :] + noise


def _choose_engine(problem: CalibrationProblem, engine: str | None, linesearch: str) -> str:
    """The engine `fit` runs: `engine` if given (checked against the problem's solver and the line search), else
    the engine of the problem's solver, else "ensemble" ("vmap" for the zoom line search)."""
    own = None if problem.solver is None else engine_of(problem.solver)
    if engine is None:
        engine = own or ("vmap" if linesearch == "zoom" else "ensemble")
    if engine not in ENGINES:
        raise ValueError(f"`engine` must be one of {list(ENGINES)} or None, got {engine!r}.")
    if own is not None and own != engine:
        raise ValueError(
            f"`engine` = {engine!r} but the problem's solver {type(problem.solver).__name__} runs on the "
            f"{own!r} engine."
        )
    if engine == "ensemble" and linesearch != "backtracking":
        raise ValueError(
            "The zoom line search runs on the vmap engine only; use engine='vmap' or linesearch='backtracking'."
        )
    return engine


#: What each manifest entry of a fit checkpoint stands for (named when a checkpoint belongs to another fit).
_FIT_MEANING = {
    "model_sha256": "the model (its parameter values and structure)",
    "regimen_sha256": "the regimen",
    "targets_sha256": "the targets (data, times, error models)",
    "priors_sha256": "the priors",
    "bounds_sha256": "the estimated parameters and their bounds",
    "solver_sha256": "the solver settings (solver, tolerances, max_steps, t0, failure loss)",
    "optimiser": "the optimiser settings",
    "starts_sha256": "the start values",
    "n_starts": "the number of starts",
    "version": "the carkinetics version",
}


def fit_manifest(problem: CalibrationProblem, starts: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a fit checkpoint: one entry per ingredient of a start's result, so that a checkpoint written
    by another fit is refused with a message naming what differs."""
    return {
        "format": 1,
        "kind": "multistart fit",
        "model_sha256": fingerprint(problem.model),
        "regimen_sha256": fingerprint(problem.regimen),
        "targets_sha256": fingerprint(problem.targets, problem.ts, problem.obs_index),
        "priors_sha256": fingerprint(problem.prior_mean, problem.prior_weight),
        "bounds_sha256": fingerprint(problem.space),
        "solver_sha256": fingerprint(
            problem.solver, problem.rtol, problem.atol, problem.max_steps, problem.t0, problem.failure_loss
        ),
        "optimiser": settings,
        "starts_sha256": fingerprint(np.asarray(starts)),
        "n_starts": int(np.shape(starts)[0]),
        "version": package_version(),
    }


def _chunked_starts(
    problem: CalibrationProblem,
    starts: Any,
    chunk: int,
    run_chunk: Callable[[Any], tuple[Any, Any, Any, Any]],
    checkpoint: str | os.PathLike | None,
    settings: dict[str, Any],
) -> tuple[Any, Any, Any, Any]:
    """Optimise the starts `chunk` at a time (the last chunk padded with its last start, so that one program is
    compiled), each finished chunk written to `checkpoint`; SIGINT/SIGTERM stop between chunks."""
    n = int(starts.shape[0])
    n_chunks = -(-n // chunk)
    ckpt = None if checkpoint is None else Checkpoint(checkpoint, fit_manifest(problem, starts, settings), _FIT_MEANING)
    parts: list[list[np.ndarray] | None] = [None] * n_chunks
    if ckpt is not None:
        for i in range(n_chunks):
            loaded = ckpt.load(i, 4)
            if loaded is not None:
                lo, hi = i * chunk, min(n, (i + 1) * chunk)
                if any(len(x) != hi - lo for x in loaded[0]):
                    raise ValueError(
                        f"The checkpoint chunk {ckpt.file(i)!r} holds a different number of starts than chunk {i} "
                        f"has ({hi - lo}); delete that file and run again to recompute it."
                    )
                parts[i] = loaded[0]
    with stop_on_signals("fit", unit="chunk of starts") as stop:
        for i in range(n_chunks):
            if parts[i] is not None:
                continue
            if stop.signum is not None:
                done = sum(min(n, (j + 1) * chunk) - j * chunk for j in range(n_chunks) if parts[j] is not None)
                raise Interrupted(stop.signum, done, n, None if checkpoint is None else os.fspath(checkpoint), "starts")
            lo, hi = i * chunk, min(n, (i + 1) * chunk)
            z0s = starts[lo:hi]
            if hi - lo < chunk:
                z0s = jnp.concatenate([z0s, jnp.repeat(z0s[-1:], chunk - (hi - lo), axis=0)])
            out = [np.asarray(x)[: hi - lo] for x in run_chunk(z0s)]
            parts[i] = out
            if ckpt is not None:
                ckpt.save(i, out, np.ones(hi - lo, dtype=bool))
    assert all(p is not None for p in parts)
    return tuple(jnp.asarray(np.concatenate([p[k] for p in parts if p is not None])) for k in range(4))  # pyright: ignore[reportReturnType]


def fit(
    problem: CalibrationProblem,
    *,
    key: Any = None,
    n_starts: int = 8,
    starts: Any = None,
    start_scale: float = 0.5,
    adam_steps: int = 200,
    lbfgs_steps: int = 50,
    learning_rate: float = 0.05,
    gtol: float = 1e-3,
    ftol: float = 1e-6,
    linesearch: str = "backtracking",
    engine: str | None = None,
    slots: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    chunk_starts: int | None = None,
) -> FitResult:
    """Minimise `problem.loss` from several starts at once: Adam (cosine-decayed) then L-BFGS.

    **Arguments:**

    - `problem`: a [`carkinetics.CalibrationProblem`][].
    - `key`: PRNG key for the starts (default `jax.random.key(0)`); ignored if `starts` is given.
    - `n_starts`, `start_scale`: number of starts and their spread (see [`carkinetics.make_starts`][]).
    - `starts`: explicit unconstrained starting points, shape `(S, n)`.
    - `adam_steps`, `lbfgs_steps`, `learning_rate`: optimiser budget (fixed iteration counts, so that all starts
      run in one compiled program).
    - `engine`: how the starts are evaluated.
      `"ensemble"` (default): the losses and gradients of ALL starts come from one batched solve
      ([`carkinetics.CalibrationProblem.ensemble_losses`][], i.e. [`carkinetics.simulate_ensemble`][], reverse
      mode) per iteration, with the problem's ensemble method ([`carkinetics.default_solver`][] if it names
      none). Each start keeps its own optimiser: Adam with per-start gradient clipping
      (optax update vmapped over starts), then a batched L-BFGS (memory 10) with an Armijo backtracking line
      search that tries a step for every start at once (halving, at most 15 trials; a start whose search fails
      drops its memory, and failing again without memory it stops: its loss cannot be decreased measurably).
      `"vmap"`: optax Adam then `optax.lbfgs` per start, vmapped over starts, each loss a `ck.simulate` solve.
      Default (`None`): the engine of the problem's solver, else `"ensemble"` (`"vmap"` with
      `linesearch="zoom"`); `FitResult.engine` says which ran. The engines reach the same optimum to the solver
      tolerance but follow different paths (different line searches).
    - `linesearch`: L-BFGS line search of the vmap engine, `"backtracking"` (Armijo; default, faster to compile)
      or `"zoom"` (strong Wolfe; vmap engine only).
    - `slots`: members integrated at once by the ensemble engine (see `simulate_ensemble`; default: one per start,
      no member queue, the fastest for the reverse-mode gradients the fit takes).
    - `checkpoint`: a directory; each finished chunk of starts is written there (`chunk_<6 digits>.npz`, atomically)
      next to a `manifest.json` keyed on everything that determines a start's result: the model, the regimen, the
      targets (data and error models), the priors, the parameter bounds, the solver settings, the optimiser settings,
      the start values and the package version. Rerunning the same fit resumes from the finished chunks; a
      directory written by a different fit is refused with a `ValueError` that names what differs, a corrupt chunk
      with one that names the file to delete. SIGINT/SIGTERM stop the fit after the chunk in progress with
      [`carkinetics.Interrupted`][] (a second SIGINT aborts at once).
    - `chunk_starts`: starts optimised together in one compiled program (default: all of them, or one per chunk with
      a `checkpoint`). The starts are independent, so the result does not depend on it beyond rounding.
    - `gtol`, `ftol`: convergence criteria: a start has converged when its gradient norm (unconstrained scale) is
      at most `gtol`, or when its loss changed by at most `ftol` (relative) over the last 5 iterations with a
      gradient norm at most `sqrt(ftol) * max(1, |loss|)`; in both cases only from a finite loss below
      `failure_loss`, no worse than its start, with no parameter at the edge of its range. `FitResult.success` says
      whether the best start converged.

    **Raises:** `ValueError` when every start gives the failure penalty (the data cannot be fitted), naming the
    reason found at the first start (a failing simulation, non-positive predictions for log-scale data, ...).

    **Returns:** a [`carkinetics.FitResult`][].

    **Example:**

    ```python
    res = ck.fit(problem, n_starts=4, adam_steps=100, lbfgs_steps=30)
    print(res.convergence_report()); res.values()
    ```
    """
    for name, v in (("adam_steps", adam_steps), ("lbfgs_steps", lbfgs_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"`{name}` must be a non-negative int, got {v!r}.")
    if adam_steps + lbfgs_steps == 0:
        raise ValueError("`adam_steps + lbfgs_steps` must be positive.")
    if linesearch not in ("backtracking", "zoom"):
        raise ValueError(f"`linesearch` must be 'backtracking' or 'zoom', got {linesearch!r}.")
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"`learning_rate` must be positive, got {learning_rate!r}.")
    if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int) or slots < 1):
        raise ValueError(f"`slots` must be a positive int or None, got {slots!r}.")
    engine = _choose_engine(problem, engine, linesearch)
    if starts is None:
        starts = make_starts(problem, jax.random.key(0) if key is None else key, n_starts, scale=start_scale)
    starts = jnp.asarray(starts, dtype=problem.z0.dtype)
    if starts.ndim != 2 or starts.shape[1] != problem.z0.shape[0]:
        raise ValueError(f"`starts` must have shape (S, {problem.z0.shape[0]}), got {starts.shape}.")
    n_starts = int(starts.shape[0])
    if chunk_starts is None:
        chunk_starts = 1 if checkpoint is not None else n_starts
    if isinstance(chunk_starts, bool) or not isinstance(chunk_starts, int) or chunk_starts < 1:
        raise ValueError(f"`chunk_starts` must be a positive int or None, got {chunk_starts!r}.")
    chunk_starts = min(chunk_starts, n_starts)
    mask = jnp.ones_like(problem.z0)
    lr = jnp.asarray(learning_rate, problem.z0.dtype)

    def run_chunk(z0s):
        if engine == "ensemble":
            return _run_multistart_ensemble(problem, z0s, adam_steps, lbfgs_steps, lr, mask, slots)
        return _run_multistart(problem, z0s, adam_steps, lbfgs_steps, lr, mask, linesearch)

    if checkpoint is None and chunk_starts == n_starts:
        z_final, losses, gnorms, hist = run_chunk(starts)
    else:
        settings = {
            "adam_steps": adam_steps,
            "lbfgs_steps": lbfgs_steps,
            "learning_rate": float(learning_rate),
            "linesearch": linesearch,
            "engine": engine,
            "slots": slots,
            "chunk_starts": chunk_starts,
        }
        z_final, losses, gnorms, hist = _chunked_starts(problem, starts, chunk_starts, run_chunk, checkpoint, settings)
    start_losses = np.asarray(hist)[:, 0]  # the loss at each start, from the fit's own first evaluation
    if not np.any(np.isfinite(start_losses) & (start_losses < problem.failure_loss)):
        reasons = problem.diagnose(starts[0])
        raise ValueError(
            "The data cannot be fitted: every start gives the failure penalty. At the first start "
            + ("; ".join(reasons) if reasons else "the loss is not finite")
            + "."
        )
    losses_np = np.asarray(losses)
    best = int(np.nanargmin(np.where(np.isfinite(losses_np), losses_np, np.inf)))
    h = np.asarray(hist)
    tail = h[:, -6:]
    rel = np.abs(tail.max(axis=1) - tail.min(axis=1)) / np.maximum(1.0, np.abs(tail[:, -1]))
    final = np.asarray(losses)
    # A start has converged only if it met a criterion from a valid point: a finite loss below the failure penalty,
    # no worse than where it started, with no parameter run off to the edge of its transform (|z| at the clip).
    valid = np.isfinite(final) & (final < problem.failure_loss) & (final <= start_losses + 1e-12 * np.abs(start_losses))
    inside = np.all(np.abs(np.asarray(z_final)) < _Z_CLIP - 1.0, axis=1)
    # A stalled loss (rel <= ftol) counts only with a gradient small relative to the loss: an optimiser stuck on a
    # noisy or steep objective with a large gradient has not converged.
    g = np.asarray(gnorms)
    stalled_ok = (rel <= ftol) & (g <= np.maximum(gtol, np.sqrt(ftol) * np.maximum(1.0, np.abs(final))))
    converged = ((g <= gtol) | stalled_ok) & valid & inside
    return FitResult(
        problem,
        z_final[best],
        losses[best],
        starts,
        z_final,
        losses,
        gnorms,
        jnp.asarray(converged),
        hist,
        best,
        float(gtol),
        float(ftol),
        engine,
    )
