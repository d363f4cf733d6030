"""The `carkinetics` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    import os

    import jax

    jax.config.update("jax_enable_x64", True)  # CLI entry point (not library code): use float64 for reports
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK, TwoCompartmentPK

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    bsa = ck.bsa_mosteller(70.0, 170.0)
    ts = jnp.linspace(-6.0, 1.0, 701)
    flu = ck.simulate(TwoCompartmentPK(), ck.fludarabine(25.0, (-5, -4, -3), bsa_m2=bsa, state="central"), ts)
    cy = ck.simulate(OneCompartmentPK(), ck.cyclophosphamide(1000.0, (-3,), bsa_m2=bsa, state="central"), ts)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ts, flu.observables.concentration, label="fludarabine (2-cmt, Langenhorst 2019)")
    ax.plot(ts, cy.observables.concentration, label="cyclophosphamide (1-cmt, Ahmed 2020)")
    ax.set_xlabel("day relative to CAR-T infusion")
    ax.set_ylabel("plasma concentration (mg/L)")
    ax.set_yscale("log")
    ax.set_ylim(1e-3, None)
    ax.set_title(f"Erlangen lymphodepletion, BSA {bsa:.2f} m²")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out, "lymphodepletion_pk.png")
    fig.savefig(path, dpi=120)
    print(f"carkinetics demo: wrote {path}")
    print(f"output folder: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="carkinetics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="simulate the Erlangen SLE regimen on built-in defaults and write figures")
    p.add_argument("--out", default="carkinetics_output", help="output folder (default: ./carkinetics_output)")
    p.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
