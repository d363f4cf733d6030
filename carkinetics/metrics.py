"""Summary metrics of trajectories (public namespace `carkinetics.metrics`); see `carkinetics._metrics`.

**Example:**

```python
import jax.numpy as jnp
import carkinetics as ck
ts = jnp.linspace(0.0, 10.0, 101)
ck.metrics.auc(ts, jnp.exp(-ts))   # about 1 - exp(-10)
```
"""

from ._metrics import (
    auc as auc,
    cmax as cmax,
    first_crossing as first_crossing,
    fold_change as fold_change,
    half_life as half_life,
    nadir as nadir,
    time_below as time_below,
    tmax as tmax,
    value_at as value_at,
)
