"""Import every measure module of this package so that each registers itself."""

import importlib
import pkgutil

from . import __path__ as _pkg_path

for _info in sorted(pkgutil.iter_modules(_pkg_path), key=lambda m: m.name):
    if not _info.name.startswith("_") and _info.name != "registry":
        importlib.import_module(f"{__package__}.{_info.name}")
