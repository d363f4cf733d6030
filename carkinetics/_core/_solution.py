"""The result of a simulation: `Solution` (named trajectories, status, step counts) and `RESULTS` (outcomes)."""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float, Int, Times


# pyright reads diffrax.RESULTS (an `eqxi.Enumeration`) as a final Enum; Enumerations are meant to be extended.
class RESULTS(diffrax.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Outcomes of a simulation: diffrax's solver outcomes (`successful`, `max_steps_reached`, `dt_min_reached`,
    ...) plus `invalid_parameters` for a member whose traced parameters were out of bounds (reported only with
    `throw=False`; such a member is not integrated)."""

    invalid_parameters = "A parameter was non-finite or outside its declared bounds, so the simulation was not run."


# Readable outcomes: `repr(sol.result)` is `carkinetics.RESULTS<successful>` (diffrax's success message is empty,
# which printed as `RESULTS<>`); only this subclass's own message table changes, not diffrax's.
RESULTS.__module__ = "carkinetics"
RESULTS._index_to_message[int(RESULTS.successful._value)] = "successful"


def result_names(result: Any) -> list[str]:
    """The `RESULTS` member names of a (batched) result, flattened (`["successful", "max_steps_reached", ...]`)."""
    names = {int(item._value): name for name, item in RESULTS._name_to_item.items()}
    return [names.get(int(v), "unknown") for v in np.asarray(result._value).ravel()]


class Solution(eqx.Module):
    """The result of [`carkinetics.simulate`][].

    **Fields / properties:**

    - `ts`: save times (days), shape `(T,)`.
    - `ys`: the model's `State` NamedTuple, each field an array of shape `(T,)` (e.g. `sol.ys.central`).
    - `observables`: the model's `Observables` NamedTuple, each field of shape `(T,)`.
    - `y_array`, `obs_array`: the same as `(T, n_states)` / `(T, n_observables)` arrays.
    - `result`: a `carkinetics.RESULTS` member (`RESULTS.successful` on success); `ok` is the boolean view.
    - `num_steps`, `num_accepted_steps`, `num_rejected_steps`: integrator step counts over all segments.
    - `state_units`, `observable_units`: units by name.

    Under `jax.vmap` every field gains a leading batch axis.
    """

    ts: Times
    y_array: Float[Array, "times states"]
    obs_array: Float[Array, "times observables"]
    result: Any
    num_steps: Int[Array, ""]
    num_accepted_steps: Int[Array, ""]
    num_rejected_steps: Int[Array, ""]
    model_class: type = eqx.field(static=True)

    @property
    def ys(self):
        return self.model_class.State(*jnp.moveaxis(self.y_array, -1, 0))

    @property
    def observables(self):
        return self.model_class.Observables(*jnp.moveaxis(self.obs_array, -1, 0))

    @property
    def ok(self) -> Array:
        return self.result == RESULTS.successful

    @property
    def message(self) -> str | list[str]:
        """The outcome in words: `"successful"` or the failure (a list, one per member, for a batch)."""
        values = np.asarray(self.result._value)
        messages = [RESULTS._index_to_message[int(v)] or "successful" for v in values.ravel()]
        return messages[0] if values.ndim == 0 else messages

    def __repr__(self) -> str:
        """One line: model, save times, outcome and steps (the field-by-field form under tracing)."""
        try:
            ts = np.asarray(self.ts)
            outcomes = result_names(self.result)
            steps = np.asarray(self.num_steps)
        except Exception:  # traced values (inside jit/vmap): no concrete numbers to show
            return eqx.tree_pformat(self, short_arrays=True)
        cls = self.model_class
        span = f"{ts.shape[-1]} save times {float(ts.min()):g} to {float(ts.max()):g} d" if ts.size else "no save times"
        ns, no = len(cls.state_names()), len(cls.observable_names())
        what = f"{ns} state{'s' * (ns != 1)}, {no} observable{'s' * (no != 1)}"
        if steps.ndim == 0:
            return f"Solution({cls.__name__}: {span}, {what}; {outcomes[0]}, {int(steps)} steps)"
        failed = [o for o in outcomes if o != "successful"]
        counts = ", ".join(f"{failed.count(o)} {o}" for o in sorted(set(failed)))
        status = f"{len(outcomes) - len(failed)} of {len(outcomes)} successful" + (f" ({counts})" if counts else "")
        lo, hi = int(steps.min()), int(steps.max())
        return (
            f"Solution({cls.__name__}, batch {tuple(steps.shape)}: {span}, {what}; {status}, "
            f"{lo if lo == hi else f'{lo} to {hi}'} steps)"
        )

    __str__ = __repr__

    @property
    def state_units(self):
        return dict(self.model_class.state_units)

    @property
    def observable_units(self):
        return dict(self.model_class.observable_units)

    def to_columns(self) -> dict[str, np.ndarray]:
        """Tidy columns (`time`, every state, every observable) as NumPy arrays, e.g. for CSV export."""
        cols = {"time": np.asarray(self.ts)}
        for i, n in enumerate(self.model_class.state_names()):
            cols[n] = np.asarray(self.y_array[..., i])
        for i, n in enumerate(self.model_class.observable_names()):
            cols[n] = np.asarray(self.obs_array[..., i])
        return cols
