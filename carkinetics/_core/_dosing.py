"""Dosing events: bolus, zero-order infusion, fractional kill (e.g. irradiation), repeats, regimens.

Time is in **days** throughout carkinetics, with day 0 = CAR-T infusion; negative days are allowed (e.g.
lymphodepletion on days -5..-3). Amounts are in the unit of the target state.

Every numeric field is a JAX array leaf, so a regimen can be differentiated with respect to its amounts and
batched with `jax.vmap`/`eqx.filter_vmap` over regimens of the same structure (same dose types, states and
repeat counts). Structure (target state names, repeat counts) is static.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check(
    name: str, value: Any, *, nonneg: bool = False, positive: bool = False, le_one: bool = False, what: str = ""
) -> Any:
    """Validate a numeric argument: `ValueError` for concrete values, `eqx.error_if` for traced ones."""
    if value is None:
        raise ValueError(f"`{name}` is required{what}.")
    if _is_concrete(value):
        arr = np.asarray(value, dtype=float)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"`{name}` must be finite, got {value!r}{what}.")
        if nonneg and np.any(arr < 0):
            raise ValueError(f"`{name}` must be non-negative, got {value!r}{what}.")
        if positive and np.any(arr <= 0):
            raise ValueError(f"`{name}` must be positive, got {value!r}{what}.")
        if le_one and np.any(arr > 1):
            raise ValueError(f"`{name}` must be at most 1, got {value!r}{what}.")
        return jnp.asarray(arr)
    value = jnp.asarray(value)
    bad = ~jnp.isfinite(value)
    if nonneg:
        bad = bad | (value < 0)
    if positive:
        bad = bad | (value <= 0)
    if le_one:
        bad = bad | (value > 1)
    return eqx.error_if(value, bad, f"`{name}` is non-finite or out of range{what}.")


def _check_addl(addl: int) -> int:
    if isinstance(addl, bool) or not isinstance(addl, (int, np.integer)) or addl < 0:
        raise ValueError(f"`addl` (additional doses) must be a non-negative Python int, got {addl!r}.")
    return int(addl)


class AbstractDose(eqx.Module):
    """A dose event (or a series of repeats) acting on named states."""

    def _repeat_times(self, t, ii, addl):
        return t + ii * jnp.arange(addl + 1, dtype=jnp.result_type(t, ii, float))


class Bolus(AbstractDose):
    """Instantaneous dose: `amount` is added to `state` at `time` (and `addl` more times every `ii` days).

    **Arguments:**

    - `time`: day of the (first) dose.
    - `amount`: amount added, in the unit of `state` (>= 0).
    - `state`: name of the target state.
    - `ii`: interdose interval in days (NONMEM II), required > 0 when `addl > 0`.
    - `addl`: number of additional doses (NONMEM ADDL), a Python int.

    **Example:** `ck.Bolus(0.0, 100.0, "central", ii=1.0, addl=6)` is 100 units daily for 7 days.
    """

    time: Float[Array, ""]
    amount: Float[Array, ""]
    ii: Float[Array, ""]
    state: str = eqx.field(static=True)
    addl: int = eqx.field(static=True)

    def __init__(self, time, amount, state: str, *, ii=0.0, addl: int = 0):
        self.time = _check("time", time, what=" for a Bolus")
        self.amount = _check("amount", amount, nonneg=True, what=f" for a Bolus into {state!r}")
        self.addl = _check_addl(addl)
        self.ii = _check("ii", ii, nonneg=True, positive=self.addl > 0, what=" for a Bolus with addl > 0")
        if not isinstance(state, str):
            raise ValueError(f"`state` must be a state name (str), got {state!r}.")
        self.state = state

    def times(self) -> Float[Array, " n"]:
        return self._repeat_times(self.time, self.ii, self.addl)


class Infusion(AbstractDose):
    """Zero-order infusion into `state` from `start` for `duration` days at `rate` (or `amount` in total).

    Give exactly one of `rate` (state units per day) and `amount` (state units in total).

    **Example:** `ck.Infusion(-5.0, "flu_central", amount=45.0, duration=0.5 / 24)` is 45 mg over 30 min.
    """

    start: Float[Array, ""]
    rate: Float[Array, ""]
    duration: Float[Array, ""]
    ii: Float[Array, ""]
    state: str = eqx.field(static=True)
    addl: int = eqx.field(static=True)

    def __init__(self, start, state: str, *, duration, rate=None, amount=None, ii=0.0, addl: int = 0):
        where = f" for an Infusion into {state!r}"
        self.start = _check("start", start, what=where)
        self.duration = _check("duration", duration, positive=True, what=where)
        if (rate is None) == (amount is None):
            raise ValueError(f"Give exactly one of `rate` and `amount`{where}; got rate={rate!r}, amount={amount!r}.")
        if rate is not None:
            self.rate = _check("rate", rate, nonneg=True, what=where)
        else:
            self.rate = _check("amount", amount, nonneg=True, what=where) / self.duration
        self.addl = _check_addl(addl)
        self.ii = _check("ii", ii, nonneg=True, positive=self.addl > 0, what=where + " with addl > 0")
        if not isinstance(state, str):
            raise ValueError(f"`state` must be a state name (str), got {state!r}.")
        self.state = state

    @property
    def amount(self) -> Float[Array, ""]:
        return self.rate * self.duration

    def starts(self) -> Float[Array, " n"]:
        return self._repeat_times(self.start, self.ii, self.addl)


class FractionalKill(AbstractDose):
    """Instantaneous removal of a `fraction` of each named state at `time` (e.g. total-body irradiation).

    `y <- (1 - fraction) * y` for every state in `states`.
    """

    time: Float[Array, ""]
    fraction: Float[Array, ""]
    ii: Float[Array, ""]
    states: tuple[str, ...] = eqx.field(static=True)
    addl: int = eqx.field(static=True)

    def __init__(self, time, fraction, states: Sequence[str], *, ii=0.0, addl: int = 0):
        self.time = _check("time", time, what=" for a FractionalKill")
        self.fraction = _check("fraction", fraction, nonneg=True, le_one=True, what=" for a FractionalKill")
        self.addl = _check_addl(addl)
        self.ii = _check("ii", ii, nonneg=True, positive=self.addl > 0, what=" for a FractionalKill with addl > 0")
        if isinstance(states, str) or not all(isinstance(s, str) for s in states) or not states:
            raise ValueError(f"`states` must be a non-empty sequence of state names, got {states!r}.")
        self.states = tuple(states)

    def times(self) -> Float[Array, " n"]:
        return self._repeat_times(self.time, self.ii, self.addl)


class Regimen(eqx.Module):
    """An ordered collection of dose events. Regimens add: `flu_cy + car_t`.

    Events at the same time are applied in the order they appear. An empty regimen is allowed.
    """

    doses: tuple[AbstractDose, ...]

    def __init__(self, doses: Sequence[AbstractDose] = ()):
        if isinstance(doses, AbstractDose):
            doses = (doses,)
        for d in doses:
            if not isinstance(d, AbstractDose):
                raise ValueError(f"A Regimen holds Bolus, Infusion and FractionalKill events, got {d!r}.")
        self.doses = tuple(doses)

    def __add__(self, other: Regimen | AbstractDose) -> Regimen:
        if isinstance(other, AbstractDose):
            other = Regimen((other,))
        if not isinstance(other, Regimen):
            return NotImplemented
        return Regimen(self.doses + other.doses)

    def __len__(self) -> int:
        return len(self.doses)

    def state_names(self) -> set[str]:
        names: set[str] = set()
        for d in self.doses:
            names.update(d.states if isinstance(d, FractionalKill) else (cast(Bolus | Infusion, d).state,))
        return names

    def first_time(self) -> Float[Array, ""] | None:
        """Time of the earliest event, or `None` for an empty regimen."""
        ts = [
            jnp.min(d.starts() if isinstance(d, Infusion) else cast(Bolus | FractionalKill, d).times())
            for d in self.doses
        ]
        return jnp.min(jnp.stack(ts)) if ts else None


class ResolvedRegimen(NamedTuple):
    """A regimen compiled against a model's state order (arrays only; used inside JIT).

    - `jump_times` (E,), `jump_mult` (E, S), `jump_add` (E, S): at `jump_times[e]`, `y <- mult * y + add`.
    - `inf_start` (I,), `inf_end` (I,), `inf_rate` (I, S): zero-order inputs active on [start, end);
      `inf_amount` (I, S): the amounts they deliver (rate x duration), kept so that an engine working at a coarser
      time resolution still delivers them exactly.
    """

    jump_times: Float[Array, " E"]
    jump_mult: Float[Array, "E S"]
    jump_add: Float[Array, "E S"]
    inf_start: Float[Array, " I"]
    inf_end: Float[Array, " I"]
    inf_rate: Float[Array, "I S"]
    inf_amount: Float[Array, "I S"]


def resolve_regimen(regimen: Regimen, state_names: Sequence[str]) -> ResolvedRegimen:
    """Compile `regimen` against `state_names` (raises `ValueError` on an unknown state)."""
    state_names = tuple(state_names)
    n = len(state_names)

    def idx(s: str) -> int:
        if s not in state_names:
            raise ValueError(f"Unknown state {s!r} in the regimen; valid states are {list(state_names)}.")
        return state_names.index(s)

    jt, jm, ja, ist, ien, ira, iam = [], [], [], [], [], [], []
    for d in regimen.doses:
        if isinstance(d, Bolus):
            t = d.times()
            k = t.shape[0]
            jt.append(t)
            jm.append(jnp.ones((k, n)))
            ja.append(jnp.zeros((k, n)).at[:, idx(d.state)].set(d.amount))
        elif isinstance(d, FractionalKill):
            t = d.times()
            k = t.shape[0]
            mask = jnp.zeros((n,)).at[jnp.array([idx(s) for s in d.states])].set(1.0)
            jt.append(t)
            jm.append(jnp.broadcast_to(1.0 - d.fraction * mask, (k, n)))
            ja.append(jnp.zeros((k, n)))
        elif isinstance(d, Infusion):
            s = d.starts()
            k = s.shape[0]
            ist.append(s)
            ien.append(s + d.duration)
            ira.append(jnp.zeros((k, n)).at[:, idx(d.state)].set(d.rate))
            iam.append(jnp.zeros((k, n)).at[:, idx(d.state)].set(d.amount))
        else:  # pragma: no cover - Regimen.__init__ already rejects other types
            raise ValueError(f"Unsupported dose type {type(d).__name__}.")

    def cat(xs, shape):
        return jnp.concatenate(xs, axis=0) if xs else jnp.zeros(shape)

    return ResolvedRegimen(
        cat(jt, (0,)),
        cat(jm, (0, n)),
        cat(ja, (0, n)),
        cat(ist, (0,)),
        cat(ien, (0,)),
        cat(ira, (0, n)),
        cat(iam, (0, n)),
    )
