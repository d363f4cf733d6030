"""Mechanism groups, group swaps between two parameterisations, and exact Shapley attribution.

This module is model-agnostic. Two models of the same class (e.g. a mouse and a human preset) differ in many
parameters; the parameters are collected into named *mechanism groups*. A *coalition* `S` is a subset of the
groups; the coalition model takes the parameters of the groups in `S` from `model_b` and every other parameter
from `model_a`. For a scalar (or pytree-valued) output `f(model)` the *game* is `v(S) = f(coalition model)`, the
*total gap* is `v(all groups) - v(no group)`, and the exact Shapley value of group `i` is

    phi_i = sum over S not containing i of  |S|! (G - |S| - 1)! / G!  * (v(S + {i}) - v(S)).

All `2**G` coalition models are built as one batched pytree (per parameter leaf `where(mask, value_b, value_a)`)
and evaluated by `eqx.filter_vmap` under one `eqx.filter_jit`, in chunks of a fixed size (one compilation serves
any number of groups, coalitions and parameter samples); the Shapley values are then a fixed linear map of the
coalition values (a `(G, 2**G)` matrix in closed form), so efficiency (`sum_i phi_i = v(all) - v(none)`) holds
to floating-point round-off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core._custom_types import Array, Bool
from .._core._parameters import _getter, floats_to_arrays, parameters
from .._engine._batch import AbstractExperiment, batch_models, run_experiment
from .._engine._simulate import Engine, engine_of, resolve_solver

#: Largest number of groups (players) accepted: 2**16 = 65,536 coalitions.
MAX_GROUPS = 16


class MechanismGroup(eqx.Module):
    """A named set of model parameters that moves together in a swap (one Shapley player).

    **Fields:**

    - `name`: short label, e.g. `"G1 IgG clearance"`.
    - `parameters`: dotted parameter names (e.g. `("humoral.k_igg",)`), as in [`carkinetics.parameters`][].
    - `description`: one sentence saying what the mechanism is.
    - `gap`: an identifier of the gap mechanism the group stands for (e.g. `"G1"`), or `""`.

    **Example:**

    ```python
    import carkinetics as ck
    g = ck.MechanismGroup("clearance", ("cl",), description="drug clearance", gap="G0")
    assert g.parameters == ("cl",)
    ```
    """

    name: str = eqx.field(static=True)
    parameters: tuple[str, ...] = eqx.field(static=True)
    description: str = eqx.field(static=True, default="")
    gap: str = eqx.field(static=True, default="")

    def __check_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"A MechanismGroup needs a non-empty string `name`, got {self.name!r}.")
        if isinstance(self.parameters, str) or not all(isinstance(p, str) for p in self.parameters):
            raise ValueError(
                f"`parameters` of MechanismGroup {self.name!r} must be a sequence of dotted parameter names, got "
                f"{self.parameters!r}."
            )
        if len(set(self.parameters)) != len(self.parameters):
            raise ValueError(f"`parameters` of MechanismGroup {self.name!r} contains duplicates: {self.parameters!r}.")

    def __init__(self, name: str, parameters: Sequence[str], *, description: str = "", gap: str = ""):
        self.name = name
        if isinstance(parameters, str):
            raise ValueError(
                f"`parameters` of MechanismGroup {name!r} must be a sequence of names, got the single string "
                f"{parameters!r}; write ({parameters!r},)."
            )
        self.parameters = tuple(parameters)
        self.description = description
        self.gap = gap


def _check_groups(groups: Sequence[MechanismGroup], *models: Any) -> tuple[MechanismGroup, ...]:
    if isinstance(groups, MechanismGroup):
        groups = (groups,)
    groups = tuple(groups)
    for g in groups:
        if not isinstance(g, MechanismGroup):
            raise ValueError(f"`groups` must hold MechanismGroup objects, got {g!r}.")
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"Mechanism group names must be unique, got {names}.")
    seen: dict[str, str] = {}
    for g in groups:
        for p in g.parameters:
            if p in seen:
                raise ValueError(
                    f"Parameter {p!r} belongs to two mechanism groups ({seen[p]!r} and {g.name!r}); a parameter must "
                    "belong to at most one group."
                )
            seen[p] = g.name
    for model in models:
        known = parameters(model)
        for g in groups:
            for p in g.parameters:
                if p not in known:
                    raise ValueError(
                        f"Mechanism group {g.name!r} names the parameter {p!r}, which {type(model).__name__} does "
                        f"not have; known parameters are: {', '.join(sorted(known))}."
                    )
    return groups


def _check_pair(model_a: Any, model_b: Any) -> None:
    if type(model_a) is not type(model_b):
        raise ValueError(
            f"`model_a` and `model_b` must be of the same class, got {type(model_a).__name__} and "
            f"{type(model_b).__name__}."
        )
    sa = jax.tree_util.tree_structure(floats_to_arrays(model_a))
    sb = jax.tree_util.tree_structure(floats_to_arrays(model_b))
    if sa != sb:
        raise ValueError(
            "`model_a` and `model_b` differ in structure (static configuration or nested modules), so their "
            "parameters cannot be swapped group by group; only parameter values may differ."
        )


def swap(model_a: Any, model_b: Any, groups: Sequence[MechanismGroup]) -> Any:
    """`model_a` with the parameters of `groups` taken from `model_b`.

    **Arguments:**

    - `model_a`, `model_b`: two models of the same class and structure.
    - `groups`: the [`carkinetics.MechanismGroup`][]s to take from `model_b` (a single group is accepted).

    **Returns:** a copy of `model_a`.

    **Raises:** `ValueError` if the models differ in class or structure or a group names an unknown parameter.

    **Example:**

    ```python
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    mouse, human = OneCompartmentPK(cl=1.0, v=2.0), OneCompartmentPK(cl=5.0, v=50.0)
    m = ck.swap(mouse, human, [ck.MechanismGroup("clearance", ("cl",))])
    assert (float(m.cl), float(m.v)) == (5.0, 2.0)
    ```
    """
    _check_pair(model_a, model_b)
    groups = _check_groups(groups, model_a, model_b)
    names = [p for g in groups for p in g.parameters]
    if not names:
        return model_a
    return eqx.tree_at(
        lambda m: [_getter(n)(m) for n in names],
        model_a,
        [_getter(n)(model_b) for n in names],
        is_leaf=lambda x: x is None,
    )


# ----------------------------------------------------------------------------------------------------------------
# Coalitions and the Shapley matrix


def coalition_masks(n_groups: int) -> np.ndarray:
    """All `2**n_groups` coalitions as a boolean array of shape `(2**n_groups, n_groups)`.

    Row `k` is the binary expansion of `k` (group `i` is in coalition `k` when bit `i` of `k` is set), so row 0
    is the empty coalition and the last row is the grand coalition.
    """
    if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or not 1 <= n_groups <= MAX_GROUPS:
        raise ValueError(f"`n_groups` must be an int between 1 and {MAX_GROUPS}, got {n_groups!r}.")
    k = np.arange(2**n_groups)[:, None]
    return ((k >> np.arange(n_groups)[None, :]) & 1).astype(bool)


def shapley_matrix(n_groups: int) -> np.ndarray:
    """The `(G, 2**G)` matrix `W` with `phi = W @ v` for coalition values `v` ordered as [`coalition_masks`][].

    `W[i, S] = w(|S| - 1)` if `i` is in `S` and `-w(|S|)` otherwise, with `w(s) = s! (G - s - 1)! / G!`.
    """
    masks = coalition_masks(n_groups)
    g = n_groups
    size = masks.sum(axis=1)
    w = np.array([math.factorial(s) * math.factorial(g - s - 1) / math.factorial(g) for s in range(g)])
    plus = np.where(masks, w[np.clip(size - 1, 0, g - 1)][:, None], 0.0)
    minus = np.where(~masks, w[np.clip(size, 0, g - 1)][:, None], 0.0)
    return (plus - minus).T


def shapley_from_values(coalition_values: Any, n_groups: int) -> Any:
    """Exact Shapley values from the values of all `2**n_groups` coalitions.

    **Arguments:**

    - `coalition_values`: a pytree whose leaves have a leading axis of length `2**n_groups`, ordered as
      [`carkinetics.coalition_masks`][].
    - `n_groups`: the number of groups (players).

    **Returns:** the same pytree with the leading axis replaced by one of length `n_groups`.
    """
    w = jnp.asarray(shapley_matrix(n_groups))

    def one(v):
        v = jnp.asarray(v)
        if v.shape[:1] != (2**n_groups,):
            raise ValueError(
                f"Each leaf of `coalition_values` needs a leading axis of length 2**{n_groups} = {2**n_groups}, got "
                f"shape {v.shape}."
            )
        return jnp.tensordot(w.astype(jnp.result_type(v.dtype, float)), v, axes=1)

    return jax.tree_util.tree_map(one, coalition_values)


def _check_batch_size(batch_size: Any) -> int | None:
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}.")
    return int(batch_size)


@eqx.filter_jit
def _game_values(game, masks, batch_size):
    return jax.lax.map(game, masks, batch_size=batch_size)


class ShapleyResult(eqx.Module):
    """Exact Shapley attribution of the change of an output between two parameterisations.

    Every leaf of `coalition_values` has the coalition axis first, and every leaf of `values` the group axis
    first; any further axes are those of the output (with parameter samples, the sample axis comes second).

    **Fields:**

    - `group_names`: the players, in order.
    - `masks`: the evaluated coalitions, `(2**G, G)` booleans (see [`carkinetics.coalition_masks`][]).
    - `coalition_values`: the output for every coalition (pytree, leading axis `2**G`).
    - `values`: the Shapley values (pytree, leading axis `G`).
    - `ok`: per coalition (and sample), whether every output leaf is finite.
    - `engine`: what evaluated the coalitions: `"ensemble"` or `"vmap"` for an experiment (the engine it ran on),
      `"vmap"` for a plain function (vectorised with `jax.vmap`), `"game"` for [`carkinetics.shapley_values`][].

    **Properties / methods:** `base` (`v(none)`), `target` (`v(all)`), `total` (`target - base`),
    `forward_swaps()` (only group `i` taken from `model_b`: `v({i}) - v(none)`), `reverse_swaps()` (only group `i`
    left at `model_a`: `v(all) - v(all - {i})`), `efficiency_error()`.
    """

    group_names: tuple[str, ...] = eqx.field(static=True)
    masks: Bool[Array, "coalitions groups"]
    coalition_values: Any
    values: Any
    ok: Bool[Array, "coalitions ..."]
    engine: str = eqx.field(static=True, default="game")

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def coalition(self, members: Sequence[str]) -> Any:
        """The output of the coalition whose `members` (group names) are taken from `model_b`."""
        unknown = sorted(set(members) - set(self.group_names))
        if unknown:
            raise ValueError(f"Unknown group name(s) {unknown}; the groups are {list(self.group_names)}.")
        index = sum(1 << self.group_names.index(m) for m in set(members))
        return self._take(index)

    def _take(self, index: int) -> Any:
        return jax.tree_util.tree_map(lambda v: v[index], self.coalition_values)

    @property
    def base(self) -> Any:
        """`v(none)`: the output of `model_a`."""
        return self._take(0)

    @property
    def target(self) -> Any:
        """`v(all)`: the output with every group taken from `model_b`."""
        return self._take(2**self.n_groups - 1)

    @property
    def total(self) -> Any:
        """`v(all) - v(none)`: the gap being attributed."""
        return jax.tree_util.tree_map(jnp.subtract, self.target, self.base)

    def forward_swaps(self) -> Any:
        """Effect of taking only group `i` from `model_b` (`v({i}) - v(none)`), stacked over groups like `values`."""
        outs = [jax.tree_util.tree_map(jnp.subtract, self._take(1 << i), self.base) for i in range(self.n_groups)]
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)

    def reverse_swaps(self) -> Any:
        """Effect of group `i` measured from `model_b`: `v(all) - v(all - {i})`, stacked over groups."""
        full = 2**self.n_groups - 1
        outs = [
            jax.tree_util.tree_map(jnp.subtract, self.target, self._take(full & ~(1 << i)))
            for i in range(self.n_groups)
        ]
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)

    def efficiency_error(self) -> float:
        """Largest `|sum_i phi_i - total| / |total|` over all output entries with a non-zero total (a float)."""
        errs = [0.0]
        for phi, tot in zip(jax.tree_util.tree_leaves(self.values), jax.tree_util.tree_leaves(self.total)):
            s, t = np.asarray(jnp.sum(phi, axis=0)), np.asarray(tot)
            nz = np.abs(t) > 0
            if np.any(nz):
                errs.append(float(np.max(np.abs(s[nz] - t[nz]) / np.abs(t[nz]))))
            if np.any(~nz):
                errs.append(float(np.max(np.abs(s[~nz]))))
        return max(errs)


def engine_name(f: Any, template: Any, engine: Engine | None) -> Engine:
    """The engine that evaluates `f` on members like `template` (see `ShapleyResult.engine`)."""
    if isinstance(f, AbstractExperiment):
        return engine_of(resolve_solver(f.model(template), f.solver, engine))
    return "vmap"


def _result(group_names, masks, coalition_values, n_lead: int = 1, engine: str = "game") -> ShapleyResult:
    """Assemble a ShapleyResult; `n_lead` leading axes (coalition[, sample]) are shared by all output leaves."""
    g = len(group_names)
    values = shapley_from_values(coalition_values, g)
    leaves = jax.tree_util.tree_leaves(coalition_values)
    ok = jnp.ones(np.shape(leaves[0])[:n_lead] if leaves else (2**g,), dtype=bool)
    for v in leaves:
        ok = ok & jnp.all(jnp.isfinite(v), axis=tuple(range(n_lead, v.ndim)))
    return ShapleyResult(tuple(group_names), jnp.asarray(masks), coalition_values, values, ok, engine)


def shapley_values(
    game: Callable[[Bool[Array, " groups"]], Any],
    n_groups: int,
    *,
    group_names: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> ShapleyResult:
    """Exact Shapley values of a cooperative game given as a JAX function of a coalition mask.

    This is the low-level, model-free entry: [`carkinetics.shapley_attribution`][] builds the game from two
    models and a list of [`carkinetics.MechanismGroup`][]s.

    **Arguments:**

    - `game`: `game(mask) -> pytree of arrays`, where `mask` is a boolean array of shape `(n_groups,)` saying
      which players are in the coalition. It must be traceable by `jax.vmap`.
    - `n_groups`: number of players `G` (1 to 16); all `2**G` coalitions are evaluated.
    - `group_names`: labels of the players (default `"0"`, `"1"`, ...).
    - `batch_size`: coalitions evaluated per vectorised chunk (`jax.lax.map(..., batch_size=)`); `None`
      vectorises all of them at once. Use a chunk size that fits memory for expensive games.

    **Returns:** a [`carkinetics.ShapleyResult`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck

    def game(mask):                      # v(S) = 1 x0 + 2 x1 + 3 x0 x2 (x_i = 1 if i in S)
        x = mask.astype(float)
        return x[0] + 2.0 * x[1] + 3.0 * x[0] * x[2]

    res = ck.shapley_values(game, 3)
    # additive terms go to their player, the product term is split equally: [2.5, 2.0, 1.5]
    assert jnp.allclose(res.values, jnp.array([2.5, 2.0, 1.5]))
    ```
    """
    masks = coalition_masks(n_groups)
    if group_names is None:
        group_names = tuple(str(i) for i in range(n_groups))
    group_names = tuple(group_names)
    if len(group_names) != n_groups:
        raise ValueError(f"`group_names` has {len(group_names)} entries but `n_groups` is {n_groups}.")
    if not callable(game):
        raise ValueError(f"`game` must be a function of a boolean coalition mask, got {game!r}.")
    values = _game_values(game, jnp.asarray(masks), _check_batch_size(batch_size))
    return _result(group_names, masks, values)


@eqx.filter_jit
def _evaluate_batch(f, models, engine):
    if isinstance(f, AbstractExperiment):
        return run_experiment(f, models, engine=engine)[0]
    return eqx.filter_vmap(f)(models)


def evaluate_models(
    f: Callable[[Any], Any] | AbstractExperiment,
    model: Any,
    values: Mapping[str, Any],
    *,
    batch_size: int | None = None,
    engine: Engine | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
) -> Any:
    """Evaluate `f` on copies of `model` whose named parameters take the given batched values.

    **Arguments:**

    - `f`: an [`carkinetics.AbstractExperiment`][] (each chunk of members is solved with one engine call; failed
      members give NaN), or any function `f(model) -> pytree of arrays` traceable by `jax.vmap` (e.g. a closed form).
    - `model`: the template (a model, or any module of parameters an experiment's members are made of).
    - `values`: mapping from dotted parameter name to an array with a leading axis of common length `N`.
    - `batch_size`: members per call. Chunks are padded to exactly `batch_size`, so any `N` (and any choice of
      parameters) reuses one compilation per `f`, model structure and `batch_size`. `None`: one call with all `N`.
    - `engine`: for an experiment: `"ensemble"` (default) or `"vmap"` (see [`carkinetics.run_experiment`][]).
    - `progress`, `checkpoint`: for an experiment, the chunks run through [`carkinetics.sweep`][]: progress lines
      with an ETA on stderr, and each finished chunk written to the `checkpoint` folder so that a rerun with the
      same inputs resumes (a folder written by other inputs is refused), SIGINT/SIGTERM stopping cleanly after the
      chunk in progress ([`carkinetics.Interrupted`][]).

    **Returns:** the pytree of outputs with leading axis `N`.
    """
    batch_size = _check_batch_size(batch_size)
    names = tuple(values)
    arrays = {n: np.asarray(v) for n, v in values.items()}
    sizes = {n: a.shape[0] if a.ndim else None for n, a in arrays.items()}
    if any(v is None for v in sizes.values()) or len(set(sizes.values())) > 1:
        raise ValueError(
            f"All `values` need a leading axis of the same length, got shapes "
            f"{ {n: a.shape for n, a in arrays.items()} }."
        )
    if not names:
        raise ValueError("`values` must name at least one parameter to batch over.")
    n_total: int = arrays[names[0]].shape[0]  # all leading axes agree (checked above)
    chunk = n_total if batch_size is None else batch_size
    if isinstance(f, AbstractExperiment):
        from .._analysis._sweep import ParameterBatch, sweep

        pad = -n_total % chunk  # whole chunks of exactly `batch_size` (one compilation), padded with the last member
        padded = {n: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a for n, a in arrays.items()}
        fn = ParameterBatch(f, model, names, engine_name(f, model, engine))
        res = sweep(fn, padded, chunk_size=chunk, checkpoint=checkpoint, progress=progress, has_ok=True)
        return jax.tree_util.tree_map(lambda v: jnp.asarray(v[:n_total]), res.outputs)
    if checkpoint is not None:
        raise ValueError(
            "`checkpoint` needs an experiment `f` (an AbstractExperiment); a plain function is evaluated in one pass."
        )
    outs = []
    for start in range(0, n_total, chunk):
        idx = np.minimum(np.arange(start, start + chunk), n_total - 1)  # pad by repeating the last member
        batch = batch_models(model, {n: a[idx] for n, a in arrays.items()}, chunk, check_bounds=False)
        outs.append(_evaluate_batch(f, batch, engine))
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs)[:n_total], *outs)


def _n_samples(samples: Mapping[str, Any] | None, what: str) -> int | None:
    if samples is None:
        return None
    if not isinstance(samples, Mapping):
        raise ValueError(
            f"`{what}` must be a mapping from parameter name to an array of sampled values, got "
            f"{type(samples).__name__}."
        )
    sizes = {n: np.shape(v)[0] if np.ndim(v) else None for n, v in samples.items()}
    bad = {n: s for n, s in sizes.items() if s is None}
    if bad:
        raise ValueError(f"`{what}` values need a leading sample axis; got scalars for {sorted(bad)}.")
    distinct = set(sizes.values())
    if len(distinct) > 1:
        raise ValueError(f"All arrays in `{what}` must have the same number of samples, got {sizes}.")
    return distinct.pop() if distinct else None


def evaluate_coalitions(
    f: Callable[[Any], Any] | AbstractExperiment,
    model_a: Any,
    model_b: Any,
    groups: Sequence[MechanismGroup],
    masks: Any,
    *,
    samples_a: Mapping[str, Any] | None = None,
    samples_b: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    engine: Engine | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
) -> Any:
    """Evaluate `f` on the coalition models of the given `masks` in one jitted, chunked, vectorised batch.

    **Arguments:**

    - `f`: an [`carkinetics.AbstractExperiment`][] (coalitions solved in batches on the engine) or a function
      `f(model) -> pytree of arrays` traceable by `jax.vmap` (see [`carkinetics.evaluate_models`][]).
    - `model_a`, `model_b`: two models of the same class and structure.
    - `groups`: the [`carkinetics.MechanismGroup`][]s (players), in mask-column order.
    - `masks`: boolean array `(K, G)`: row `k` takes the groups with `True` from `model_b`.
    - `samples_a`, `samples_b`: optional parameter samples, mappings from dotted name to an array with a
      leading sample axis of common length `S` (see [`carkinetics.sample_parameters`][]). Sampled values
      replace the model's value in every coalition; a parameter outside every group is taken from `samples_a`.
    - `batch_size`: evaluations per vectorised call; chunks are padded to `batch_size` so that one compilation
      serves any number of groups, coalitions and samples (`None`: one call with all of them).
    - `progress`, `checkpoint`: progress lines and a checkpoint folder for an experiment `f` (see
      [`carkinetics.evaluate_models`][]).

    The coalition models are built as one batched pytree, per parameter leaf `where(mask, value_b, value_a)`,
    and evaluated by `eqx.filter_vmap(f)` under one `eqx.filter_jit` (see [`carkinetics.evaluate_models`][]).

    **Returns:** the pytree of outputs with leading axes `(K,)`, or `(K, S)` with samples.
    """
    _check_pair(model_a, model_b)
    groups = _check_groups(groups, model_a)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2 or masks.shape[1] != len(groups):
        raise ValueError(f"`masks` must have shape (K, {len(groups)}) for {len(groups)} groups, got {masks.shape}.")
    model_a = floats_to_arrays(model_a)
    model_b = floats_to_arrays(model_b)
    sa, sb = _n_samples(samples_a, "samples_a"), _n_samples(samples_b, "samples_b")
    if sa is not None and sb is not None and sa != sb:
        raise ValueError(f"`samples_a` has {sa} samples and `samples_b` has {sb}; they must match.")
    n_samples = sa or sb
    samples_a, samples_b = dict(samples_a or {}), dict(samples_b or {})
    known = parameters(model_a)
    grouped = {p: i for i, g in enumerate(groups) for p in g.parameters}
    for n in list(samples_a) + list(samples_b):
        if n not in known:
            raise ValueError(f"Sampled parameter {n!r} is not a parameter of {type(model_a).__name__}.")
    only_b = sorted(set(samples_b) - set(grouped))
    if only_b:
        raise ValueError(
            f"`samples_b` samples {only_b}, which belong to no group and are therefore always taken from "
            "`model_a`; sample them in `samples_a` instead."
        )
    names = tuple(dict.fromkeys([*grouped, *samples_a]))
    s = n_samples or 1
    k = masks.shape[0]
    flat_masks = np.repeat(masks, s, axis=0)  # evaluation e = coalition e // s, sample e % s
    flat_idx = np.tile(np.arange(s), k)

    def sampled(model, samples, n):
        v = np.asarray(samples[n]) if n in samples else np.asarray(_getter(n)(model))[None]
        return v[flat_idx] if n in samples else np.broadcast_to(v, (k * s, *v.shape[1:]))

    values = {}
    for n in names:
        a = sampled(model_a, samples_a, n)
        if n in grouped:
            b = sampled(model_b, samples_b, n)
            take_b = flat_masks[:, grouped[n]].reshape(-1, *([1] * (a.ndim - 1)))
            values[n] = np.where(take_b, b, a)
        else:
            values[n] = a
    if not names:  # no parameters at all: every coalition is model_a
        out = _evaluate_batch(f, batch_models(model_a, None, 1), engine)
        out = jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (k * s, *v.shape[1:])), out)
    else:
        out = evaluate_models(
            f, model_a, values, batch_size=batch_size, engine=engine, progress=progress, checkpoint=checkpoint
        )
    shape = (k,) if n_samples is None else (k, s)
    return jax.tree_util.tree_map(lambda v: v.reshape(*shape, *v.shape[1:]), out)


def shapley_attribution(
    f: Callable[[Any], Any] | AbstractExperiment,
    model_a: Any,
    model_b: Any,
    groups: Sequence[MechanismGroup],
    *,
    samples_a: Mapping[str, Any] | None = None,
    samples_b: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    engine: Engine | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
) -> ShapleyResult:
    """Exact Shapley attribution of `f(model_b-like) - f(model_a)` to mechanism groups.

    The coalition model of a subset `S` of `groups` takes the parameters of the groups in `S` from `model_b` and
    all others from `model_a`; all `2**G` coalition models are evaluated in one jitted batch (per parameter
    leaf the batch is `jnp.where(mask, value_b, value_a)`), and the Shapley values follow in closed form.
    The attributed gap is `v(all groups) - v(none)`; parameters that differ between the models but belong to
    no group are *not* swapped (put them in a group of their own to attribute them too).

    **Arguments:**

    - `f`: an [`carkinetics.AbstractExperiment`][] (the coalition models are solved in batches on the engine,
      default the batched ensemble solver) or a function `f(model) -> pytree of arrays` traceable by `jax.vmap`.
      Pass the same object on repeated calls to reuse the compiled batch.
    - `model_a`, `model_b`: two models of the same class and structure (e.g. mouse and human presets).
    - `groups`: the [`carkinetics.MechanismGroup`][]s (1 to 16).
    - `samples_a`, `samples_b`: optional parameter samples (see [`carkinetics.evaluate_coalitions`][]); the
      attribution is then computed per sample (sample axis second in every leaf).
    - `batch_size`: evaluations per vectorised chunk (`None`: all at once).
    - `engine`: for an experiment, `"ensemble"` (default) or `"vmap"`.
    - `progress`, `checkpoint`: progress lines with an ETA and a checkpoint folder to resume from, for an
      experiment `f` (see [`carkinetics.evaluate_models`][]).

    **Returns:** a [`carkinetics.ShapleyResult`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK

    mouse, human = OneCompartmentPK(cl=2.0, v=2.0), OneCompartmentPK(cl=10.0, v=50.0)
    groups = [ck.MechanismGroup("clearance", ("cl",)), ck.MechanismGroup("volume", ("v",))]
    half_life = lambda m: jnp.log(2.0) * m.v / m.cl          # days
    res = ck.shapley_attribution(half_life, mouse, human, groups)
    assert abs(float(res.values.sum() - res.total)) < 1e-12   # efficiency
    ```
    """
    groups = _check_groups(groups, model_a, model_b)
    if not groups:
        raise ValueError("`groups` must contain at least one MechanismGroup.")
    masks = coalition_masks(len(groups))
    cv = evaluate_coalitions(
        f,
        model_a,
        model_b,
        groups,
        masks,
        samples_a=samples_a,
        samples_b=samples_b,
        batch_size=batch_size,
        engine=engine,
        progress=progress,
        checkpoint=checkpoint,
    )
    return _result(
        tuple(g.name for g in groups),
        masks,
        cv,
        1 if samples_a is None and samples_b is None else 2,
        engine_name(f, model_a, engine),
    )


class GroupSwaps(eqx.Module):
    """One-group swaps in both directions (see [`carkinetics.one_group_swaps`][]).

    **Fields:** `group_names`; `base` (`f(model_a)`), `target` (all groups from `model_b`); `forward` (leading
    axis `G`: `f(a with group i from b) - f(a)`); `reverse` (`f(b) - f(b with group i from a)`).
    """

    group_names: tuple[str, ...] = eqx.field(static=True)
    base: Any
    target: Any
    forward: Any
    reverse: Any


def one_group_swaps(
    f: Callable[[Any], Any] | AbstractExperiment,
    model_a: Any,
    model_b: Any,
    groups: Sequence[MechanismGroup],
    *,
    batch_size: int | None = None,
    engine: Engine | None = None,
) -> GroupSwaps:
    """Swap one group at a time, in both directions, with `2 G + 2` evaluations (no Shapley sum).

    `forward[i] = f(model_a with group i from model_b) - f(model_a)` says how much of the gap one mechanism
    alone produces from the `model_a` side; `reverse[i] = f(all groups from b) - f(all from b except group i)`
    says how much the gap closes when only that mechanism is left at `model_a`. The two agree when the
    mechanisms act additively; their difference measures interactions, which the Shapley value averages.

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    a, b = OneCompartmentPK(cl=2.0, v=2.0), OneCompartmentPK(cl=10.0, v=50.0)
    groups = [ck.MechanismGroup("clearance", ("cl",)), ck.MechanismGroup("volume", ("v",))]
    sw = ck.one_group_swaps(lambda m: m.v / m.cl, a, b, groups)
    assert jnp.allclose(sw.forward, jnp.array([0.2 - 1.0, 25.0 - 1.0]))
    ```
    """
    groups = _check_groups(groups, model_a, model_b)
    g = len(groups)
    if not 1 <= g <= MAX_GROUPS:
        raise ValueError(f"`groups` must hold 1 to {MAX_GROUPS} MechanismGroups, got {g}.")
    eye = np.eye(g, dtype=bool)
    masks = np.concatenate([np.zeros((1, g), bool), np.ones((1, g), bool), eye, ~eye])
    cv = evaluate_coalitions(f, model_a, model_b, groups, masks, batch_size=batch_size, engine=engine)
    base = jax.tree_util.tree_map(lambda v: v[0], cv)
    target = jax.tree_util.tree_map(lambda v: v[1], cv)
    forward = jax.tree_util.tree_map(lambda v: v[2 : 2 + g] - v[0], cv)
    reverse = jax.tree_util.tree_map(lambda v: v[1] - v[2 + g :], cv)
    return GroupSwaps(tuple(gr.name for gr in groups), base, target, forward, reverse)
