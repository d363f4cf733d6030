"""The batched ensemble engine: batch-last layout, per-member steps and events, a member queue, custom derivative
rules and sharding over devices.

Rooms: `_method.py` (the method interface), `_tsit5.py` / `_rodas5.py` (methods), `_linalg.py` (batched Jacobians and
small-matrix LU), `_sparsity.py` (structural Jacobian pattern), `_loop.py` (the integration loop), `_autodiff.py`
(derivatives), `_sharding.py` (devices), `_api.py` (the entry point).
"""

from ._api import ensemble_solve as ensemble_solve
from ._method import AbstractEnsembleMethod as AbstractEnsembleMethod
from ._rodas5 import EnsembleRodas5 as EnsembleRodas5
from ._sharding import resolve_devices as resolve_devices
from ._tsit5 import EnsembleTsit5 as EnsembleTsit5
