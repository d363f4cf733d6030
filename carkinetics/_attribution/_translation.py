"""The mouse-to-human translation map: which mechanism explains how much of each species gap.

`translation_map(f, model_a, model_b, groups)` evaluates named outputs (metrics) `f(model)` for two
parameterisations of the same model (e.g. a mouse preset `a` and a human preset `b`), and attributes the gap
`f(b) - f(a)` of every metric to mechanism groups by exact Shapley values over all `2**G` group subsets
([`carkinetics.shapley_attribution`][]), with the one-group swaps in both directions alongside. Uncertainty:
the whole attribution is repeated over parameter samples drawn around both presets, with the spread of each value
set by its confidence tag from the same table as the calibration priors ([`carkinetics.PRIOR_SD`][]: widest for
assumptions `A`, then recalled values `M`, narrowest for read values `R`; a fitted value can carry its own
posterior sd), and summarised as intervals; cells whose attribution rests on unverified (`A`- or `M`-tagged)
parameters are flagged, and metrics censored at the simulation horizon (e.g. a B-cell aplasia that lasts the whole
horizon) are marked as bounds. The result is a [`carkinetics.TranslationMap`][] with CSV/Markdown tables and a
generated narrative.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core._parameters import PRIOR_SD, parameters
from .._engine._batch import AbstractExperiment
from .._engine._simulate import Engine
from ._shapley import MechanismGroup, _check_groups, _check_pair, shapley_attribution

#: Default spread (standard deviation in the unconstrained log / logit space) of parameter samples, by confidence
#: tag: the calibration priors, [`carkinetics.PRIOR_SD`][] (one table): `A` 1.5 (widest), `M` and `F` 1.0, `R2`
#: and `D` 0.5, `R` 0.3.
DEFAULT_SPREAD: dict[str, float] = PRIOR_SD

#: Confidence tags of unverified values: a material attribution that rests on a parameter with one of these tags
#: (in either model) is flagged.
UNVERIFIED_TAGS: tuple[str, ...] = ("A", "M")

#: A group's attribution is "material" for a metric when its |Shapley value| is at least this share of the sum
#: of |Shapley values| over groups; material cells that rest on unverified (`A`/`M`) parameters are flagged.
MATERIAL_SHARE = 0.1


def sample_parameters(
    model: Any,
    names: Sequence[str],
    key: Any,
    n_samples: int,
    *,
    spread: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    scales: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Draw parameter samples around the values of `model`, with a spread set by each parameter's confidence tag.

    With `s = spread[tag]` and `e ~ N(0, 1)`, a parameter with the default bounds `[0, inf)` is sampled
    log-normally, `x exp(s e)`, i.e. with its median at the model's value. A parameter bounded on both sides
    (e.g. a fraction) is sampled logit-normally on its interval, `logit(u') = logit(u) + s e` with
    `u = (x - lower) / (upper - lower)`. Any other parameter (e.g. an onset time that may be negative) gets a
    normal spread relative to its size, `x + s |x| e`, clipped to its bounds. Parameters sitting on a bound
    (e.g. a rejection rate of exactly 0), parameters of value 0 without a natural scale and non-scalar parameters
    are held fixed.

    **Arguments:**

    - `model`: the model whose values are the centre of the samples.
    - `names`: dotted parameter names to sample.
    - `key`: a `jax.random` key (a fixed seed gives reproducible samples).
    - `n_samples`: number of samples `S` (>= 1).
    - `spread`: standard deviation per confidence tag; default [`carkinetics.DEFAULT_SPREAD`][] (= the
      calibration priors [`carkinetics.PRIOR_SD`][]: `A` 1.5, a factor ~4.5 per standard deviation; `M` 1.0; `R`
      0.3).
    - `tags`: confidence tags that override the declared ones, by parameter name (a preset file may carry its own
      tag for a value, e.g. an `M`-tagged mouse value of a parameter whose human default is `R`).
    - `scales`: standard deviations (unconstrained scale) by parameter name that replace the tag's spread, e.g. the
      posterior sd of a fitted (`F`) value from its fit file.

    **Returns:** a dict from name to an array of shape `(S,)` (only the sampled, not the held, parameters).

    **Example:**

    ```python
    import jax, carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    s = ck.sample_parameters(OneCompartmentPK(), ["cl", "v"], jax.random.key(0), 100)
    assert s["cl"].shape == (100,)
    ```
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"`n_samples` must be a positive int, got {n_samples!r}.")
    spread = dict(DEFAULT_SPREAD if spread is None else spread)
    allp = parameters(model)
    tag_of = _tags(model, tags)
    scales = dict(scales or {})
    for n, sc in scales.items():
        if n not in allp:
            raise ValueError(f"`scales` names {n!r}, which is not a parameter of {type(model).__name__}.")
        if not (np.isfinite(sc) and sc >= 0):
            raise ValueError(f"`scales[{n!r}]` must be a finite, non-negative sd, got {sc!r}.")
    sd_of = {}
    chosen = []
    for n in names:
        if n not in allp:
            raise ValueError(f"Unknown parameter {n!r} for {type(model).__name__} in `names`.")
        p = allp[n]
        if n in scales:
            sd_of[n] = float(scales[n])
        elif tag_of[n] not in spread:
            raise ValueError(f"`spread` has no entry for the confidence tag {tag_of[n]!r} of parameter {n!r}.")
        else:
            sd_of[n] = float(spread[tag_of[n]])
        v = np.asarray(p.value, dtype=float)
        if v.ndim == 0 and p.info.lower < float(v) < p.info.upper and float(v) != 0.0 and sd_of[n] > 0:
            chosen.append(n)
    if not chosen:
        return {}
    eps = np.asarray(jax.random.normal(key, (n_samples, len(chosen))), dtype=float)
    out = {}
    for i, n in enumerate(chosen):
        x, lo, hi = float(np.asarray(allp[n].value)), allp[n].info.lower, allp[n].info.upper
        sd = sd_of[n] * eps[:, i]
        if lo == 0.0 and np.isinf(hi):
            vals = x * np.exp(sd)
        elif np.isfinite(lo) and np.isfinite(hi):
            u = (x - lo) / (hi - lo)
            vals = lo + (hi - lo) / (1.0 + np.exp(-(np.log(u) - np.log1p(-u) + sd)))
        else:
            vals = np.clip(x + abs(x) * sd, lo, hi)
        out[n] = jnp.asarray(vals)
    return out


def _tags(model: Any, overrides: Mapping[str, str] | None) -> dict[str, str]:
    from .._core._parameters import CONFIDENCE_TAGS

    tags = {n: p.info.tag for n, p in parameters(model).items()}
    for n, t in (overrides or {}).items():
        if n not in tags:
            raise ValueError(f"Tag override for unknown parameter {n!r} of {type(model).__name__}.")
        if t not in CONFIDENCE_TAGS:
            raise ValueError(f"Tag override {t!r} for parameter {n!r} is not one of {sorted(CONFIDENCE_TAGS)}.")
        tags[n] = t
    return tags


def differing_parameters(model_a: Any, model_b: Any, *, rtol: float = 1e-12) -> tuple[str, ...]:
    """Dotted names of the parameters whose values differ between two models of the same class."""
    _check_pair(model_a, model_b)
    pa, pb = parameters(model_a), parameters(model_b)
    out = []
    for n, p in pa.items():
        va, vb = np.asarray(p.value, dtype=float), np.asarray(pb[n].value, dtype=float)
        if va.shape != vb.shape or not np.allclose(va, vb, rtol=rtol, atol=0.0):
            out.append(n)
    return tuple(out)


#: The fixed columns of `TranslationMap.rows()`/`to_csv` (the two labels head the value columns after "gap").
TABLE_COLUMNS = (
    "metric",
    "unit",
    "group",
    "gap",
    "total_gap",
    "shapley",
    "share",
    "forward_swap",
    "reverse_swap",
    "lo",
    "hi",
    "rests_on_M",
    "M_parameters",
)


class TranslationMap(eqx.Module):
    """Attribution of species gaps (one per metric) to mechanism groups, with intervals and provenance flags.

    Arrays are NumPy; `G` groups, `K` metrics, `S` parameter samples (0 without uncertainty analysis).

    **Fields:**

    - `labels`: names of the two parameterisations, e.g. `("mouse_nzbw", "human")`; the gap is `b - a`.
    - `group_names`, `group_gaps`, `group_descriptions`: the mechanism groups (gap ids such as `"G1"`).
    - `group_unverified_parameters`: per group, the names of its differing parameters tagged unverified (`A` or
      `M`, `UNVERIFIED_TAGS`) in either model; `group_unverified_tags`: per group, those tags (e.g. `"A,M"`).
    - `metric_names`, `metric_units`.
    - `value_a`, `value_b` `(K,)`: the metrics of the two models; `total` `(K,)` = `value_b - value_a`.
    - `censored_a`, `censored_b` `(K,)`: whether the metric of each model is censored at the simulation horizon
      (a lower bound, e.g. an aplasia lasting the whole horizon); a gap with a censored side is a bound.
    - `shapley` `(G, K)`: exact Shapley values (they sum to `total`).
    - `forward` `(G, K)`: only group `g` from `b` (`f(a + g) - f(a)`); `reverse` `(G, K)`: `f(b) - f(b - g)`.
    - `sample_shapley` `(S, G, K)`, `sample_total` `(S, K)`, `sample_ok` `(S,)`: the per-sample attributions.
    - `n_failed`: number of coalition evaluations (point estimate) with a non-finite metric; the attributions of
      such metrics are NaN.
    - `engine`: what evaluated the coalition models (see [`carkinetics.ShapleyResult`][]).
    - `key_data`: the raw data of the samples' `jax.random` key (reproducibility); `level`: the central probability
      of the reported intervals.
    """

    labels: tuple[str, str] = eqx.field(static=True)
    group_names: tuple[str, ...] = eqx.field(static=True)
    group_gaps: tuple[str, ...] = eqx.field(static=True)
    group_descriptions: tuple[str, ...] = eqx.field(static=True)
    group_unverified_parameters: tuple[tuple[str, ...], ...] = eqx.field(static=True)
    group_unverified_tags: tuple[str, ...] = eqx.field(static=True)
    metric_names: tuple[str, ...] = eqx.field(static=True)
    metric_units: tuple[str, ...] = eqx.field(static=True)
    value_a: np.ndarray
    value_b: np.ndarray
    total: np.ndarray
    shapley: np.ndarray
    forward: np.ndarray
    reverse: np.ndarray
    sample_shapley: np.ndarray
    sample_total: np.ndarray
    sample_ok: np.ndarray
    n_failed: int = eqx.field(static=True)
    key_data: tuple[int, ...] = eqx.field(static=True)
    censored_a: np.ndarray
    censored_b: np.ndarray
    engine: str = eqx.field(static=True, default="vmap")
    level: float = eqx.field(static=True, default=0.9)

    @property
    def n_samples(self) -> int:
        return int(self.sample_shapley.shape[0])

    def share(self) -> np.ndarray:
        """`(G, K)` Shapley value divided by the sum of |Shapley values| of the metric (in [-1, 1]; 0 when no gap)."""
        denom = np.sum(np.abs(self.shapley), axis=0, keepdims=True)
        return np.divide(self.shapley, denom, out=np.zeros_like(self.shapley), where=denom > 0)

    def intervals(self, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Central `level` intervals `(lo, hi)`, each `(G, K)`, of the Shapley values over successful samples.

        Without samples both bounds equal the point estimate.
        """
        level = self.level if level is None else level
        if not 0.0 < level < 1.0:
            raise ValueError(f"`level` must lie strictly between 0 and 1, got {level!r}.")
        ok = np.asarray(self.sample_ok, dtype=bool)
        if self.n_samples == 0 or not ok.any():
            return self.shapley.copy(), self.shapley.copy()
        s = self.sample_shapley[ok]
        q = (1.0 - level) / 2.0
        return np.quantile(s, q, axis=0), np.quantile(s, 1.0 - q, axis=0)

    def unverified_flags(self) -> np.ndarray:
        """`(G, K)` booleans: the attribution is material (|share| >= `MATERIAL_SHARE`) and the group's gap rests
        on at least one unverified (`A`- or `M`-tagged) parameter."""
        rests = np.array([len(m) > 0 for m in self.group_unverified_parameters], dtype=bool)[:, None]
        return rests & (np.abs(self.share()) >= MATERIAL_SHARE)

    def value_text(self, k: int, which: str) -> str:
        """The value of metric `k` of model `which` (`"a"` or `"b"`) as text, `">= x"` when censored."""
        v, c = (self.value_a[k], self.censored_a[k]) if which == "a" else (self.value_b[k], self.censored_b[k])
        return (">= " if bool(c) else "") + _fmt(v)

    def gap_text(self, k: int) -> str:
        """The gap of metric `k` as text: `">= x"` / `"<= x"` when one side is censored, `"x (both censored)"`."""
        ca, cb = bool(self.censored_a[k]), bool(self.censored_b[k])
        g = _fmt(self.total[k])
        if ca and cb:
            return f"{g} (both censored)"
        return (">= " if cb else "<= " if ca else "") + g

    def sign_uncertain(self) -> np.ndarray:
        """`(G, K)` booleans: the sample interval of a material attribution contains zero (its direction is unsure)."""
        lo, hi = self.intervals()
        return (lo < 0) & (hi > 0) & (np.abs(self.share()) >= MATERIAL_SHARE)

    def rows(self) -> list[dict[str, Any]]:  # columns: TABLE_COLUMNS with the two labels after "gap"
        """The table as a list of dicts, one per (metric, group) cell."""
        lo, hi = self.intervals()
        share, flags = self.share(), self.unverified_flags()
        a, b = self.labels
        out = []
        for k, metric in enumerate(self.metric_names):
            for g, group in enumerate(self.group_names):
                out.append(
                    {
                        "metric": metric,
                        "unit": self.metric_units[k],
                        "group": group,
                        "gap": self.group_gaps[g],
                        f"{a}": float(self.value_a[k]),
                        f"{b}": float(self.value_b[k]),
                        f"{a}_censored": bool(self.censored_a[k]),
                        f"{b}_censored": bool(self.censored_b[k]),
                        "total_gap": float(self.total[k]),
                        "shapley": float(self.shapley[g, k]),
                        "share": float(share[g, k]),
                        "forward_swap": float(self.forward[g, k]),
                        "reverse_swap": float(self.reverse[g, k]),
                        "lo": float(lo[g, k]),
                        "hi": float(hi[g, k]),
                        "rests_on_unverified": bool(flags[g, k]),
                        "unverified_tags": self.group_unverified_tags[g],
                        "unverified_parameters": " ".join(self.group_unverified_parameters[g]),
                    }
                )
        return out

    def to_csv(self, path: str) -> None:
        """Write the long-format table (one row per metric and group) as CSV."""
        from .._core._files import atomic_text_file

        rows = self.rows()
        with atomic_text_file(path, newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    def to_markdown(self) -> str:
        """A Markdown table: one row per metric; per group the Shapley value (share, interval; `*A`/`*M` = rests on
        A-/M-tagged parameters); censored values read `>= x`."""
        lo, hi = self.intervals()
        share, flags = self.share(), self.unverified_flags()
        a, b = self.labels
        pct = round(100 * self.level)
        head = (
            f"| metric | unit | {a} | {b} | gap | "
            + " | ".join(self.group_names)
            + " |\n"
            + "|---" * (5 + len(self.group_names))
            + "|"
        )
        lines = [head]
        for k, metric in enumerate(self.metric_names):
            cells = []
            for g in range(len(self.group_names)):
                c = f"{_fmt(self.shapley[g, k])} ({100 * share[g, k]:.0f}%"
                if self.n_samples:
                    c += f"; {pct}% [{_fmt(lo[g, k])}, {_fmt(hi[g, k])}]"
                c += ")" + (f" *{self.group_unverified_tags[g].replace(',', '')}" if flags[g, k] else "")
                cells.append(c)
            lines.append(
                f"| {metric} | {self.metric_units[k]} | {self.value_text(k, 'a')} | "
                f"{self.value_text(k, 'b')} | {self.gap_text(k)} | " + " | ".join(cells) + " |"
            )
        note = (
            "\n\nShapley value of each mechanism group in the unit of the metric (share of the summed "
            "|attributions|"
            + (
                f"; {pct}% interval over {int(np.sum(self.sample_ok))} parameter samples, key {list(self.key_data)}"
                if self.n_samples
                else ""
            )
            + "). `*A` / `*M`: material attribution resting on unverified parameters (assumptions, tag A; "
            "recalled values, tag M). `>= x`: censored at the simulation horizon (the metric lasted the whole "
            "horizon; the gap is then a bound)."
        )
        return "\n".join(lines) + note

    def narrative(self, top: int = 2) -> str:
        """A short generated text: per metric, where the `a` model misleads about `b` and which mechanisms explain
        it."""
        a, b = self.labels
        lo, hi = self.intervals()
        share, flags, unsure = self.share(), self.unverified_flags(), self.sign_uncertain()
        order = np.argsort(-np.abs(_rel_gap(self.value_a, self.value_b)))
        paras = [
            f"How the {a} model misleads about {b} ({len(self.group_names)} mechanism groups, exact Shapley "
            f"attribution over all {2 ** len(self.group_names)} group subsets"
            + (
                f", {int(np.sum(self.sample_ok))} parameter samples, key {list(self.key_data)}"
                if self.n_samples
                else ""
            )
            + "). Metrics are ordered by the size of the gap."
        ]
        for k in order:
            name, unit = self.metric_names[k], self.metric_units[k]
            va, vb, tot = float(self.value_a[k]), float(self.value_b[k]), float(self.total[k])
            if not (np.isfinite(va) and np.isfinite(vb)):
                paras.append(f"- {name}: not computable in both models ({a} {_fmt(va)}, {b} {_fmt(vb)} {unit}).")
                continue
            if tot == 0.0 or np.all(np.abs(self.shapley[:, k]) == 0):
                paras.append(f"- {name}: {a} and {b} agree ({_fmt(va)} {unit}); nothing to attribute.")
                continue
            ratio = "" if (self.censored_a[k] or self.censored_b[k]) else _ratio_text(va, vb)
            drivers = np.argsort(-np.abs(self.shapley[:, k]))[:top]
            parts = []
            for g in drivers:
                if abs(share[g, k]) < MATERIAL_SHARE / 2:
                    continue
                txt = (
                    f"{self.group_names[g]} {_fmt(self.shapley[g, k])} {unit} ({100 * share[g, k]:.0f}%"
                    + (
                        f", {round(100 * self.level)}% interval {_fmt(lo[g, k])} to {_fmt(hi[g, k])}"
                        if self.n_samples
                        else ""
                    )
                    + ")"
                )
                if flags[g, k]:
                    names = self.group_unverified_parameters[g]
                    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                    txt += (
                        f" [rests on unverified ({self.group_unverified_tags[g]}-tagged) parameters: "
                        + ", ".join(names[:3])
                        + more
                        + "]"
                    )
                if unsure[g, k]:
                    txt += " [sign not robust to parameter uncertainty]"
                parts.append(txt)
            cens = "; censored at the horizon, the gap is a bound" if (self.censored_a[k] or self.censored_b[k]) else ""
            paras.append(
                f"- {name}: {a} {self.value_text(k, 'a')} vs {b} {self.value_text(k, 'b')} {unit} "
                f"(gap {self.gap_text(k)}{ratio}{cens}). "
                + ("Main mechanisms: " + "; ".join(parts) + "." if parts else "No single mechanism dominates.")
            )
        if self.n_failed:
            paras.append(
                f"Warning: {self.n_failed} of {2 ** len(self.group_names)} coalition evaluations gave "
                "non-finite metrics (failed simulations or undefined metrics); their attributions are NaN."
            )
        n_flag = int(np.sum(np.any(flags, axis=0)))
        paras.append(
            f"{n_flag} of {len(self.metric_names)} metric gaps have a material attribution that rests on "
            "unverified parameters (assumptions, tag A, or recalled values, tag M); check those values "
            "against the primary sources before quoting the numbers."
        )
        return "\n".join(paras)


def _fmt(x: Any) -> str:
    x = float(x)
    if not np.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e4:
        return f"{x:.3g}"
    return f"{x:.2e}"


def _rel_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), np.finfo(float).tiny)
    return np.where(np.isfinite(a) & np.isfinite(b), (b - a) / scale, 0.0)


def _ratio_text(va: float, vb: float) -> str:
    if va != 0 and vb != 0 and np.sign(va) == np.sign(vb):
        r = vb / va
        return f"; {_fmt(r)}x" if r >= 1 else f"; {_fmt(1 / r)}x lower"
    return ""


def translation_map(
    f: Callable[[Any], Mapping[str, Any]] | AbstractExperiment,
    model_a: Any,
    model_b: Any,
    groups: Sequence[MechanismGroup],
    *,
    units: Mapping[str, str] | None = None,
    labels: tuple[str, str] = ("a", "b"),
    n_samples: int = 0,
    key: jax.Array | None = None,
    spread: Mapping[str, float] | None = None,
    level: float = 0.9,
    batch_size: int | None = None,
    include_ungrouped: bool = True,
    tags_a: Mapping[str, str] | None = None,
    tags_b: Mapping[str, str] | None = None,
    scales_a: Mapping[str, float] | None = None,
    scales_b: Mapping[str, float] | None = None,
    censored: Mapping[str, str] | None = None,
    flag_tags: Sequence[str] = UNVERIFIED_TAGS,
    engine: Engine | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
) -> TranslationMap:
    """Attribute the gap of every metric between `model_a` and `model_b` to mechanism groups.

    **Arguments:**

    - `f`: the metrics: an [`carkinetics.AbstractExperiment`][] whose outputs are a dict of scalars (the coalition
      models are solved in batches on the engine; failed members give NaN), or a function
      `f(model) -> dict[str, scalar]` traceable by `jax.vmap`. Pass the same object on repeated calls to reuse
      the compiled batch.
    - `model_a`, `model_b`: two models of the same class and structure (e.g. mouse and human presets).
    - `groups`: the [`carkinetics.MechanismGroup`][]s.
    - `units`: unit of each metric (for tables and plots); its key order is the order of the metrics in the map
      (metrics without a unit follow in sorted order).
    - `labels`: names of the two models.
    - `n_samples`: parameter samples for the uncertainty analysis (0: point estimate only). Every parameter of
      every group is sampled independently in both models ([`carkinetics.sample_parameters`][]); cost is
      `(n_samples + 1) * 2**G` evaluations of `f`.
    - `key`: a `jax.random` key for the samples (required with `n_samples > 0`; a fixed key gives a reproducible
      map).
    - `spread`: sample spread per confidence tag; default [`carkinetics.DEFAULT_SPREAD`][] (the calibration
      priors [`carkinetics.PRIOR_SD`][]).
    - `level`: central probability of the reported intervals.
    - `batch_size`: evaluations per vectorised chunk.
    - `include_ungrouped`: parameters that differ between the models but are in no group are collected into an
      extra group `"ungrouped"` (so that the attributions sum to the whole gap `f(b) - f(a)`); with `False`
      they stay at `model_a`'s values and the attributed gap is `f(a with all groups from b) - f(a)`.
    - `tags_a`, `tags_b`: confidence tags of the two models' values that override the declared ones (presets
      carry their own tags); they set the sample spread and the flags.
    - `scales_a`, `scales_b`: per-parameter sample sds (unconstrained scale) that replace the tag's spread, e.g.
      the posterior sd of fitted values.
    - `censored`: `{metric: name of an output of f}` whose value is 1 (true) when the metric is censored at the
      simulation horizon (such outputs are read, not attributed); censored values are reported as bounds.
    - `flag_tags`: confidence tags of unverified values (default `("A", "M")`): material attributions resting on
      them are flagged.
    - `engine`: for an experiment, `"ensemble"` (default: the batched solver) or `"vmap"`.
    - `progress`: progress lines with an ETA on stderr while an experiment's coalitions are solved.
    - `checkpoint`: a folder for an experiment's finished chunks (subfolders `point` and, with samples,
      `samples`); a rerun with the same inputs resumes from it, and a folder written by other inputs is refused
      naming what differs (see [`carkinetics.sweep`][]).

    **Returns:** a [`carkinetics.TranslationMap`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK

    mouse, human = OneCompartmentPK(cl=2.0, v=0.5), OneCompartmentPK()
    groups = [ck.MechanismGroup("clearance", ("cl",), gap="G1"), ck.MechanismGroup("volume", ("v",))]
    f = lambda m: {"half_life": jnp.log(2.0) * m.v / m.cl, "cmax": 100.0 / m.v}
    tm = ck.translation_map(f, mouse, human, groups, units={"half_life": "d", "cmax": "mg/L"},
                            labels=("mouse", "human"))
    print(tm.to_markdown())
    ```
    """
    _check_pair(model_a, model_b)
    groups = list(_check_groups(groups, model_a, model_b))
    if include_ungrouped:
        grouped = {p for g in groups for p in g.parameters}
        rest = [n for n in differing_parameters(model_a, model_b) if n not in grouped]
        if rest:
            groups.append(MechanismGroup("ungrouped", rest, description="differing parameters in no group"))
    if not groups:
        raise ValueError("`groups` is empty and the models do not differ; there is nothing to attribute.")
    if len(labels) != 2 or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ValueError(f"`labels` must be two non-empty strings, got {labels!r}.")
    if labels[0] == labels[1]:
        raise ValueError(
            f"`labels` must be two different names (each heads the value column of its model in the "
            f"table), got {labels!r}."
        )
    clash = [x for x in labels if x in TABLE_COLUMNS]
    if clash:
        raise ValueError(
            f"`labels` {clash} would repeat a column name of the table {list(TABLE_COLUMNS)}; choose other names."
        )
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 0:
        raise ValueError(f"`n_samples` must be a non-negative int, got {n_samples!r}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must lie strictly between 0 and 1, got {level!r}.")

    if n_samples and key is None:
        raise ValueError("`key` (a jax.random key) is required with `n_samples` > 0.")

    def where(part: str) -> str | None:
        return None if checkpoint is None else os.path.join(os.fspath(checkpoint), part)

    res = shapley_attribution(
        f, model_a, model_b, groups, batch_size=batch_size, engine=engine, progress=progress, checkpoint=where("point")
    )
    if not isinstance(res.values, Mapping):
        raise ValueError(f"`f` must return a dict of named scalar metrics, got {type(res.values).__name__}.")
    censored = dict(censored or {})
    for metric, flag in censored.items():
        if flag not in res.values or metric not in res.values:
            raise ValueError(
                f"`censored` maps {metric!r} to {flag!r}, but `f` returns no output of that name "
                f"(outputs: {sorted(res.values)})."
            )
    flag_outputs = set(censored.values())
    metric_names = tuple(n for n in (units or {}) if n in res.values and n not in flag_outputs)
    metric_names += tuple(n for n in res.values if n not in metric_names and n not in flag_outputs)
    for n in metric_names:
        if np.ndim(res.base[n]) != 0:
            raise ValueError(f"Metric {n!r} returned by `f` is not a scalar (shape {np.shape(res.base[n])}).")
    units = dict(units or {})
    metric_units = tuple(units.get(n, "") for n in metric_names)

    def stack(tree):  # dict of (G,) or (G, S) -> (G, K) or (G, S, K)
        return np.stack([np.asarray(tree[n], dtype=float) for n in metric_names], axis=-1)

    g_count = len(groups)
    if n_samples:
        assert key is not None  # checked at entry
        key_a, key_b = jax.random.split(key)
        names = [p for g in groups for p in g.parameters]
        samples_a = sample_parameters(
            model_a,
            names,
            key_a,
            n_samples,
            spread=spread,
            tags=tags_a,
            scales={k: v for k, v in (scales_a or {}).items() if k in names},
        )
        samples_b = sample_parameters(
            model_b,
            names,
            key_b,
            n_samples,
            spread=spread,
            tags=tags_b,
            scales={k: v for k, v in (scales_b or {}).items() if k in names},
        )
        sres = shapley_attribution(
            f,
            model_a,
            model_b,
            groups,
            samples_a=samples_a or None,
            samples_b=samples_b or None,
            batch_size=batch_size,
            engine=engine,
            progress=progress,
            checkpoint=where("samples"),
        )
        if not samples_a and not samples_b:  # nothing to sample: repeat the point estimate
            sample_shapley = np.broadcast_to(stack(res.values), (n_samples, g_count, len(metric_names))).copy()
            sample_total = np.broadcast_to(stack(res.total), (n_samples, len(metric_names))).copy()
            sample_ok = np.broadcast_to(np.asarray(jnp.all(res.ok)), (n_samples,)).copy()
        else:
            sample_shapley = np.moveaxis(stack(sres.values), 1, 0)  # (S, G, K)
            sample_total = stack(sres.total)
            sample_ok = np.asarray(jnp.all(sres.ok, axis=0))
    else:
        sample_shapley = np.zeros((0, g_count, len(metric_names)))
        sample_total = np.zeros((0, len(metric_names)))
        sample_ok = np.zeros((0,), dtype=bool)

    ta, tb = _tags(model_a, tags_a), _tags(model_b, tags_b)
    differing = set(differing_parameters(model_a, model_b))
    flag_tags = tuple(flag_tags)
    u_params = tuple(
        tuple(p for p in g.parameters if p in differing and ({ta[p], tb[p]} & set(flag_tags))) for g in groups
    )
    u_tags = tuple(",".join(t for t in flag_tags if any(t in (ta[p], tb[p]) for p in ps)) for ps in u_params)

    def flags(values):
        out = np.zeros(len(metric_names), dtype=bool)
        for k, n in enumerate(metric_names):
            if n in censored:
                out[k] = bool(np.asarray(values[censored[n]]) > 0.5)
        return out

    return TranslationMap(
        labels=(str(labels[0]), str(labels[1])),
        group_names=tuple(g.name for g in groups),
        group_gaps=tuple(g.gap for g in groups),
        group_descriptions=tuple(g.description for g in groups),
        group_unverified_parameters=u_params,
        group_unverified_tags=u_tags,
        censored_a=flags(res.base),
        censored_b=flags(res.target),
        metric_names=metric_names,
        metric_units=metric_units,
        value_a=stack(res.base),
        value_b=stack(res.target),
        total=stack(res.total),
        shapley=stack(res.values),
        forward=stack(res.forward_swaps()),
        reverse=stack(res.reverse_swaps()),
        sample_shapley=sample_shapley,
        sample_total=sample_total,
        sample_ok=sample_ok,
        n_failed=int(np.sum(~np.asarray(res.ok))),
        key_data=() if key is None else tuple(int(v) for v in np.asarray(jax.random.key_data(key)).ravel()),
        level=float(level),
        engine=res.engine,
    )


__all__ = [
    "DEFAULT_SPREAD",
    "UNVERIFIED_TAGS",
    "TranslationMap",
    "differing_parameters",
    "sample_parameters",
    "translation_map",
]
