"""Batched ensemble solver core (see issue 8): batch-last layout, per-member steps and events."""

from ._driver import simulate_ensemble as simulate_ensemble
from .base import AbstractEnsembleMethod as AbstractEnsembleMethod
from .rodas5 import EnsembleRodas5 as EnsembleRodas5
from .tsit5 import EnsembleTsit5 as EnsembleTsit5
