"""Optional dependencies: which pip extra provides each, and one check that names it.

Everything `embslim train|search|bench` needs by default is a core dependency; these
modules are needed only for an input format or a way of running that a flag asks for,
so their absence is one line with the install command, before any work starts.
"""
from __future__ import annotations

import importlib

from embslim.errors import ConfigError

OPTIONAL = {"ray": "distributed", "torchrec": "torchrec", "fbgemm_gpu": "fbgemm"}  # import name -> extra in pyproject.toml
CPU_RECIPE = {"torchrec": "make torchrec"}  # the extra pulls the CUDA build; on CPU use this


def require(module: str, purpose: str) -> None:
    """Raise ConfigError with the install command when optional `module` cannot be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        cpu = f" (on a machine without CUDA: {CPU_RECIPE[module]})" if module in CPU_RECIPE else ""
        raise ConfigError(f'{purpose} needs {module}: pip install "embslim[{OPTIONAL[module]}]"{cpu}') from None


def available(module: str) -> bool:
    """Whether optional `module` imports (importing it): for a speed-up that has a pure-PyTorch fallback,
    where its absence is no error."""
    try:
        importlib.import_module(module)
    except (ImportError, OSError):
        return False
    return True
