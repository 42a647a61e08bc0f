"""CoInteract core: the DiT, its checkpoints and the sampler in plain torch (no comfy, no accelerate).

Submodules are imported by name (``from .cointeract_core import model``); this file stays import-free so that
loading one part never pulls in the rest.
"""

__version__ = "0.1.0"
