from ._legacy import main as main
