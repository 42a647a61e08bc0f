"""The ComfyUI nodes of CoInteract: NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS from the node modules.

To add nodes, write `nodes/<module>.py` defining `NODE_CLASS_MAPPINGS` (and `NODE_DISPLAY_NAME_MAPPINGS`) and
add `<module>` to NODE_MODULES below. A node module imports optional packages inside the node function, with
`services.optional_import(...)`, so that a missing package fails that node, when it runs, with the pip command
that fixes it. If a node module still fails to import for a missing third-party package, its nodes are left out
and the log names the pip command; the rest of the pack loads (ComfyUI shows no IMPORT FAILED).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable

from .services import pip_install_command, requirement_for

log = logging.getLogger(__name__)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "NODE_MODULES", "collect_node_mappings"]

# Node modules of this package, in menu order. Add a module here and its nodes are registered.
NODE_MODULES: tuple[str, ...] = ("loaders", "conditioning", "sampling", "step_cache", "toy")


def _is_own_module(module: str, package: str) -> bool:
    root = package.rpartition(".")[0] or package  # the pack's root package, whatever ComfyUI named it
    return module == root or module.startswith(root + ".")


def collect_node_mappings(package: str, module_names: Iterable[str]) -> tuple[dict[str, type], dict[str, str]]:
    """Merge the node mappings of `package`'s submodules `module_names`; raises on a duplicate node id."""
    classes: dict[str, type] = {}
    display_names: dict[str, str] = {}
    for name in module_names:
        try:
            module = importlib.import_module(f".{name}", package)
        except ModuleNotFoundError as err:
            if err.name is None or _is_own_module(err.name, package):
                raise  # a bug in the pack, not a missing dependency
            log.error(
                "CoInteract: the nodes in %s are unavailable because the Python package '%s' is missing. "
                "Install it with: %s",
                name,
                err.name,
                pip_install_command(requirement_for(err.name)),
            )
            continue
        mappings = module.NODE_CLASS_MAPPINGS
        duplicates = classes.keys() & mappings.keys()
        if duplicates:
            raise ValueError(f"node ids defined twice (again in nodes/{name}.py): {sorted(duplicates)}")
        classes.update(mappings)
        display_names.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}))
    return classes, display_names


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = collect_node_mappings(__name__, NODE_MODULES)
