"""`EnsembleTsit5`: Tsitouras' 5(4) explicit Runge-Kutta pair in batch-last layout."""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ._method import AbstractEnsembleMethod

# Tsitouras (2011) coefficients, as in diffrax's `Tsit5` (same numbers, so both solvers take the same steps
# up to the step-size controller).
_A = (
    (0.161,),
    (
        -0.8480655492356988544426874250230774675121177393430391537369234245294192976164141156943e-2,
        0.3354806554923569885444268742502307746751211773934303915373692342452941929761641411569,
    ),
    (
        2.897153057105493432130432594192938764924887287701866490314866693455023795137503079289,
        -6.359448489975074843148159912383825625952700647415626703305928850207288721235210244366,
        4.362295432869581411017727318190886861027813359713760212991062156752264926097707165077,
    ),
    (
        5.325864828439256604428877920840511317836476253097040101202360397727981648835607691791,
        -11.74888356406282787774717033978577296188744178259862899288666928009020615663593781589,
        7.495539342889836208304604784564358155658679161518186721010132816213648793440552049753,
        -0.9249506636175524925650207933207191611349983406029535244034750452930469056411389539635e-1,
    ),
    (
        5.861455442946420028659251486982647890394337666164814434818157239052507339770711679748,
        -12.92096931784710929170611868178335939541780751955743459166312250439928519268343184452,
        8.159367898576158643180400794539253485181918321135053305748355423955009222648673734986,
        -0.7158497328140099722453054252582973869127213147363544882721139659546372402303777878835e-1,
        -0.2826905039406838290900305721271224146717633626879770007617876201276764571291579142206e-1,
    ),
)
_B = (
    0.9646076681806522951816731316512876333711995238157997181903319145764851595234062815396e-1,
    0.01,
    0.4798896504144995747752495322905965199130404621990332488332634944254542060153074523509,
    1.379008574103741893192274821856872770756462643091360525934940067397245698027561293331,
    -3.290069515436080679901047585711363850115683290894936158531296799594813811049925401677,
    2.324710524099773982415355918398765796109060233222962411944060046314465391054716027841,
)
_B_HAT = (
    0.9468075576583945807478876255758922856117527357724631226139574065785592789071067303271e-1,
    0.9183565540343253096776363936645313759813746240984095238905939532922955247253608687270e-2,
    0.4877705284247615707855642599631228241516691959761363774365216240304071651579571959813,
    1.234297566930478985655109673884237654035539930748192848315425833500484878378061439761,
    -2.707712349983525454881109975059321670689605166938197378763992255714444407154902012702,
    1.866628418170587035753719399566211498666255505244122593996591602841258328965767580089,
    1.0 / 66.0,
)
_B_ERR = tuple(np.array(_B + (0.0,)) - np.array(_B_HAT))
_C_FULL = (
    0.161,
    0.327,
    0.9,
    0.9800255409045096857298102862870245954942137979563024768854764293221195950761080302604,
    1.0,
    1.0,
)


def _padded_tableau():
    a = np.zeros((6, 7))  # rows: stages 2..6, then b (the FSAL stage 7 is evaluated at y1)
    for i, row in enumerate(_A + (_B,)):
        a[i, : len(row)] = row
    return a


_A_FULL = _padded_tableau()
#: Models with at most this many states get the unrolled step (see `EnsembleTsit5.step`).
_UNROLL_MAX_STATES = 16


class EnsembleTsit5(AbstractEnsembleMethod):
    """Tsitouras' 5(4) explicit Runge-Kutta pair (FSAL, 7 stages) for non-stiff ensembles.

    Fifth-order solution, fourth-order embedded error estimate, fourth-order free dense output (the same
    interpolant as diffrax's `Tsit5`). Use it with [`carkinetics.simulate_ensemble`][]; for stiff models use
    [`carkinetics.EnsembleRodas5`][].

    **Example:** `ck.simulate_ensemble(models, regimen, ts, solver=ck.EnsembleTsit5())`.

    ??? cite "Reference"

        Tsitouras Ch. Runge-Kutta pairs of order 5(4) satisfying only the first column simplifying
        assumption. Comput Math Appl 2011;62(2):770-775. doi:10.1016/j.camwa.2011.06.002
    """

    error_order: ClassVar[int] = 5

    def init(self, f, t, y, f0):
        del f, t, y  # the cache is the FSAL derivative f(t, y)
        return f0

    def step(self, f, t, y, dt, cache):
        h = dt[None, :]
        if y.shape[0] <= _UNROLL_MAX_STATES:
            # Small models: stages written out with the tableau as Python constants (zeros skipped), which XLA fuses
            # into fewer, cheaper kernels (`benchmarks/ensemble_vs_peers.py` measures the effect).
            ks = [cache]
            for i in range(6):
                row = _A_FULL[i]
                incr = sum(float(row[j]) * ks[j] for j in range(i + 1) if row[j] != 0.0)
                ks.append(f(t + float(_C_FULL[i]) * dt, y + h * incr))
            y1 = y + h * sum(float(_A_FULL[5][j]) * ks[j] for j in range(6) if _A_FULL[5][j] != 0.0)
            y_err = h * sum(float(_B_ERR[j]) * ks[j] for j in range(7))
            return y1, y_err, (dt, tuple(ks)), ks[6]  # a tuple: no stacked copy of the stages
        # Larger models: the 6 new stages run in a `fori_loop` over rows of the (padded) tableau, so the model's vector
        # field is traced once, not 6 times (compile time; 29 states for the SLE model).
        dtype = y.dtype
        a_full = jnp.asarray(_A_FULL, dtype)
        c_full = jnp.asarray(_C_FULL, dtype)
        ks = jnp.zeros((7,) + y.shape, dtype).at[0].set(cache)

        def stage(i, ks):
            incr = jnp.tensordot(a_full[i], ks, axes=1)
            return ks.at[i + 1].set(f(t + c_full[i] * dt, y + h * incr))

        ks = jax.lax.fori_loop(0, 6, stage, ks)
        y1 = y + h * jnp.tensordot(a_full[5], ks, axes=1)  # the last tableau row is b (FSAL)
        y_err = h * jnp.tensordot(jnp.asarray(_B_ERR, dtype), ks, axes=1)
        return y1, y_err, (dt, ks), ks[6]

    def interpolate(self, dense, y0, y1, theta):
        del y1
        dt, ks = dense
        t = theta
        b1 = -1.0530884977290216 * t * (t - 1.3299890189751412) * (t**2 - 1.4364028541716351 * t + 0.7139816917074209)
        b2 = 0.1017 * t**2 * (t**2 - 2.1966568338249754 * t + 1.2949852507374631)
        b3 = 2.490627285651252793 * t**2 * (t**2 - 2.38535645472061657 * t + 1.57803468208092486)
        b4 = -16.54810288924490272 * (t - 1.21712927295533244) * (t - 0.61620406037800089) * t**2
        b5 = 47.37952196281928122 * (t - 1.203071208372362603) * (t - 0.658047292653547382) * t**2
        b6 = -34.87065786149660974 * (t - 1.2) * (t - 0.666666666666666667) * t**2
        b7 = 2.5 * (t - 1) * (t - 0.6) * t**2
        # Elementwise weighted sum (a batched `einsum` lowers to a slow batch-of-tiny-matmuls on CPU).
        incr = sum(b[None, :] * ks[i] for i, b in enumerate((b1, b2, b3, b4, b5, b6, b7)))
        return y0 + dt[None, :] * incr
