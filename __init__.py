"""CoInteract for ComfyUI: the node pack's entry point (ComfyUI imports this file from custom_nodes/<folder>/).

Also the import package `comfyui_cointeract` when pip-installed. Every import in the pack is relative, the pack
never touches sys.path, and it makes no top-level `nodes`, `train` or `utils` module (ComfyUI has a `nodes`).
"""

from .cointeract_core import __version__

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]


def __getattr__(name: str):
    # Lazy, so that the CLI, the trainer and `comfyui_cointeract.cointeract_core` never import the node layer.
    # ComfyUI reads both mappings right after importing the pack, so it still gets (and reports) them at load.
    if name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        from . import nodes

        value = getattr(nodes, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
