"""Figures of the translation map: mechanism x metric heatmap and per-metric attribution waterfalls."""

from __future__ import annotations

from typing import Any

import numpy as np


def _plt():
    import matplotlib.pyplot as plt  # imported lazily: `import carkinetics.plot` stays cheap

    return plt


def translation_heatmap(tmap: Any, *, ax: Any = None, annotate: bool = True) -> Any:
    """Heatmap of a [`carkinetics.TranslationMap`][]: mechanism groups (rows) x metrics (columns).

    The colour is the share of each metric's gap attributed to the group (Shapley value over the sum of
    |Shapley values| of the metric, from -1 to 1; red: the group moves the metric towards the `b` value in the
    positive direction, blue: negative). Annotations give the share in percent; `*` marks a material attribution
    that rests on unverified (`A`- or `M`-tagged) parameters, `?` one whose sign is not robust to parameter
    uncertainty; a metric whose value is censored at the simulation horizon in either model is labelled `(>=)`.

    **Arguments:**

    - `tmap`: a [`carkinetics.TranslationMap`][].
    - `ax`: a matplotlib `Axes` (default: a new figure).
    - `annotate`: write the percentages into the cells.

    **Returns:** the matplotlib `Figure`.

    **Example:**

    ```python
    import jax.numpy as jnp, carkinetics as ck, carkinetics.plot
    from carkinetics.models import OneCompartmentPK
    groups = [ck.MechanismGroup("clearance", ("cl",)), ck.MechanismGroup("volume", ("v",))]
    tm = ck.translation_map(lambda m: {"t_half": jnp.log(2.0) * m.v / m.cl, "cmax": 100.0 / m.v},
                            OneCompartmentPK(cl=2.0, v=0.5), OneCompartmentPK(), groups)
    fig = ck.plot.translation_heatmap(tm)
    ```
    """
    plt = _plt()
    share = tmap.share()
    flags = tmap.unverified_flags()
    unsure = tmap.sign_uncertain()
    g, k = share.shape
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.2 + 1.15 * k, 1.0 + 0.45 * g), constrained_layout=True)
    else:
        fig = ax.figure
    im = ax.imshow(share, cmap="RdBu_r", vmin=-1.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(k))
    cens = np.asarray(tmap.censored_a, bool) | np.asarray(tmap.censored_b, bool)
    ax.set_xticklabels(
        [
            (f"{n}\n[{u}]" if u else n) + (" (>=)" if c else "")
            for n, u, c in zip(tmap.metric_names, tmap.metric_units, cens)
        ],
        rotation=45,
        ha="right",
        fontsize=8,
    )
    ax.set_yticks(range(g))
    ax.set_yticklabels(tmap.group_names, fontsize=8)
    if annotate:
        for i in range(g):
            for j in range(k):
                txt = f"{100 * share[i, j]:.0f}" + ("*" if flags[i, j] else "") + ("?" if unsure[i, j] else "")
                ax.text(
                    j,
                    i,
                    txt,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if abs(share[i, j]) > 0.6 else "black",
                )
    a, b = tmap.labels
    ax.set_title(
        f"Share of the {a} -> {b} gap by mechanism (%): Shapley value over the metric's summed |Shapley "
        "values| (the |shares| of a column add up to 100)\n* rests on A/M-tagged (unverified) parameters, "
        "? sign not robust, (>=) censored at the horizon",
        fontsize=9,
    )
    from matplotlib.ticker import FuncFormatter

    # the colour scale in the unit of the cell labels (percent), the image itself holds the shares (fractions)
    fig.colorbar(
        im, ax=ax, label="share of the gap (%)", shrink=0.8, format=FuncFormatter(lambda v, _: f"{100 * v:.0f}")
    )
    return fig


def attribution_waterfall(tmap: Any, metric: str, *, ax: Any = None) -> Any:
    """Waterfall of one metric: from the `a` value, one step per mechanism (its Shapley value), to the `b` value.

    Steps are ordered by size; error bars give the sample interval of each Shapley value (if the map has
    samples), hatched bars rest on unverified (`A`/`M`-tagged) parameters; a legend says so (on a new figure;
    `attribution_waterfalls` puts one legend under all panels); a value censored at the simulation horizon is
    labelled `>=`.

    **Arguments:**

    - `tmap`: a [`carkinetics.TranslationMap`][].
    - `metric`: the name of one of `tmap.metric_names`.
    - `ax`: a matplotlib `Axes` (default: a new figure).

    **Returns:** the matplotlib `Figure`.
    """
    if metric not in tmap.metric_names:
        raise ValueError(f"Unknown metric {metric!r}; the map has {list(tmap.metric_names)}.")
    plt = _plt()
    k = tmap.metric_names.index(metric)
    phi = tmap.shapley[:, k]
    lo, hi = tmap.intervals()
    flags = tmap.unverified_flags()[:, k]
    order = np.argsort(-np.abs(phi))
    standalone = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.5 + 0.55 * (len(phi) + 2), 3.6), constrained_layout=True)
    else:
        fig = ax.figure
    a_lab, b_lab = tmap.labels
    level = float(tmap.value_a[k])
    ax.bar(0, level, color="0.55", width=0.7)
    labels = [a_lab + (" (>=)" if bool(tmap.censored_a[k]) else "")]
    extents = [0.0, level, float(tmap.value_b[k])]
    for pos, g in enumerate(order, start=1):
        d = float(phi[g])
        ax.bar(
            pos,
            d,
            bottom=level,
            color="tab:red" if d >= 0 else "tab:blue",
            width=0.7,
            hatch="//" if flags[g] else None,
            edgecolor="black" if flags[g] else None,
            linewidth=0.5,
        )
        if tmap.n_samples:
            top = level + d
            ax.errorbar(
                pos, top, yerr=[[max(d - lo[g, k], 0.0)], [max(hi[g, k] - d, 0.0)]], color="black", capsize=2, lw=0.8
            )
            extents += [top - max(d - lo[g, k], 0.0), top + max(hi[g, k] - d, 0.0)]
        level += d
        extents.append(level)
        labels.append(tmap.group_names[g])
    ax.bar(len(order) + 1, float(tmap.value_b[k]), color="0.3", width=0.7)
    labels.append(b_lab + (" (>=)" if bool(tmap.censored_b[k]) else ""))
    # Waterfall steps start at the previous level, so matplotlib's sticky bar edges would leave no margin above the
    # tallest level and bars would look cut off: set the limits explicitly with a 6 % margin.
    levels = np.asarray(extents, dtype=float)
    levels = levels[np.isfinite(levels)]
    span = float(levels.max() - levels.min()) or 1.0
    ax.set_ylim(levels.min() - (0.06 * span if levels.min() < 0 else 0.0), levels.max() + 0.06 * span)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    unit = tmap.metric_units[k]
    ax.set_ylabel(f"{metric} [{unit}]" if unit else metric, fontsize=8)
    ax.set_title(f"{metric}: {a_lab} -> {b_lab}", fontsize=9)
    ax.axhline(0.0, color="black", lw=0.5)
    if standalone:
        ax.legend(handles=_waterfall_legend(tmap), fontsize=7, loc="best")
    return fig


def _waterfall_legend(tmap: Any) -> list:
    """Legend entries of the waterfall colours, hatching and error bars."""
    from matplotlib.patches import Patch

    a_lab, b_lab = tmap.labels
    handles: list[Any] = [
        Patch(color="0.55", label=f"{a_lab} value"),
        Patch(color="0.3", label=f"{b_lab} value"),
        Patch(color="tab:red", label="mechanism raises the metric"),
        Patch(color="tab:blue", label="mechanism lowers the metric"),
        Patch(facecolor="white", edgecolor="black", hatch="//", label="rests on A/M-tagged (unverified) values"),
    ]
    if tmap.n_samples:
        from matplotlib.lines import Line2D

        handles.append(
            Line2D([], [], color="black", lw=0.8, marker="_", label=f"{round(100 * tmap.level)} % sample interval")
        )
    return handles


def attribution_waterfalls(tmap: Any, *, ncols: int = 3) -> Any:
    """All per-metric waterfalls of a [`carkinetics.TranslationMap`][] in one figure (see `attribution_waterfall`)."""
    plt = _plt()
    n = len(tmap.metric_names)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    g = len(tmap.group_names)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * (1.2 + 0.5 * (g + 2)), nrows * 3.4), constrained_layout=True, squeeze=False
    )
    for i, metric in enumerate(tmap.metric_names):
        attribution_waterfall(tmap, metric, ax=axes[i // ncols][i % ncols])
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.legend(handles=_waterfall_legend(tmap), loc="outside lower center", ncols=3, fontsize=8)
    return fig
