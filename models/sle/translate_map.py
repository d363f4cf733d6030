"""One command for the SLE translation map: `python -m carkinetics.translate_map --out DIR [--seed 0]`.

Writes the mechanism x metric heatmap, the per-metric waterfalls, the table (CSV and Markdown), the generated
narrative and the scenario-knob table (see [`carkinetics.write_translation_report`][], which other front ends,
e.g. the `carkinetics translate` CLI, can call directly).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from carkinetics.models.sle.translation import write_translation_report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m carkinetics.translate_map --out DIR [--seed 0] [--samples 0] [--a ...] [--b ...]`."""
    parser = argparse.ArgumentParser(
        prog="python -m carkinetics.translate_map",
        description="Write the mouse-to-human translation map of the SLE CAR-T model (heatmap, waterfalls, CSV, "
                    "Markdown, narrative, scenario knobs).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--a", default="mouse_nzbw", help="first preset (default mouse_nzbw)")
    parser.add_argument("--b", default="human", help="second preset (default human)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parameter samples (default 0)")
    parser.add_argument("--samples", type=int, default=0, help="parameter samples for intervals (default 0)")
    parser.add_argument("--gaps", default=None, help="comma-separated gap ids to use as groups (default all)")
    parser.add_argument("--t-end", type=float, default=365.0, help="horizon in days (default 365)")
    parser.add_argument("--batch-size", type=int, default=256, help="simulations per vectorised chunk")
    parser.add_argument("--no-scenarios", action="store_true", help="skip the scenario-knob table")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        paths = write_translation_report(
            args.out, a=args.a, b=args.b, key=jax.random.key(args.seed), n_samples=args.samples,
            gaps=None if args.gaps is None else [g.strip() for g in args.gaps.split(",")], t_end=args.t_end,
            batch_size=args.batch_size, scenarios=not args.no_scenarios)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
