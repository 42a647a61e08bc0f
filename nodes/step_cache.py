"""CoInteractStepCache: a copy of the model that carries step-cache options, read by CoInteract Sampler.

Like ComfyUI's own EasyCache node patches a MODEL, this one clones the COINTERACT_MODEL (a ModelPatcher or
FallbackPatcher; clone() copies `model_options`) and stores a StepCacheConfig under STEP_CACHE_OPTION, so the
sampler node keeps its widgets and the loaded model is not changed.
"""

from __future__ import annotations

from typing import Any

from ..cointeract_core.sampling.cache import StepCacheConfig
from .types import COINTERACT_MODEL

__all__ = ["CoInteractStepCache", "STEP_CACHE_OPTION", "step_cache_options", "NODE_CLASS_MAPPINGS",
           "NODE_DISPLAY_NAME_MAPPINGS"]  # fmt: skip

STEP_CACHE_OPTION = "cointeract_step_cache"  # key in the patcher's model_options
_DEFAULT = StepCacheConfig()


def step_cache_options(model: Any) -> StepCacheConfig | None:
    """The StepCacheConfig a CoInteract Step Cache node put on this model, or None (cache off)."""
    return getattr(model, "model_options", {}).get(STEP_CACHE_OPTION)


class CoInteractStepCache:
    CATEGORY = "CoInteract"
    DESCRIPTION = (
        "Makes CoInteract Sampler faster by skipping the DiT's transformer blocks on steps where the output is "
        "predicted to change little (EasyCache-style, measured at run time; no per-model calibration). A skipped "
        "step reuses the blocks' residual from the last full step, per guidance branch, and still runs the output "
        "head at the current timestep. The first steps and the last steps always run in full; the state restarts "
        "with each 80-frame clip. On the toy model at 40 steps the defaults skip 40% of the DiT passes at 1-2% "
        "relative error of the frames. Not for few-step (distilled) schedules. Returns a copy of the model; the "
        "loaded model is unchanged."
    )
    RETURN_TYPES = (COINTERACT_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the step cache on, for CoInteract Sampler (or CoInteract LoRA).",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (COINTERACT_MODEL, {"tooltip": "From CoInteract Model Loader (or CoInteract LoRA)."}),
                "threshold": ("FLOAT", {"default": _DEFAULT.threshold, "min": 0.0, "max": 3.0, "step": 0.01,
                              "tooltip": "Skip while the output change predicted since the last full step stays "
                              "under this; higher skips more (0 turns the cache off)."}),  # fmt: skip
                "start_step": ("INT", {"default": _DEFAULT.start_step, "min": 0, "max": 200, "tooltip": "First "
                               "step that may be skipped; earlier steps always run (use about a quarter of the "
                               "steps)."}),  # fmt: skip
                "end_steps_full": ("INT", {"default": _DEFAULT.end_steps_full, "min": 0, "max": 200,
                                   "tooltip": "This many last steps always run in full."}),  # fmt: skip
                "max_consecutive": ("INT", {"default": _DEFAULT.max_consecutive, "min": 0, "max": 200,
                                    "tooltip": "At most this many steps skipped in a row (0 = no cap)."}),
            }
        }  # fmt: skip

    def apply(
        self, model: Any, threshold: float, start_step: int, end_steps_full: int, max_consecutive: int
    ) -> tuple[Any]:
        options = StepCacheConfig(threshold, start_step, end_steps_full, max_consecutive or None)  # validates
        patched = model.clone()
        patched.model_options.pop(STEP_CACHE_OPTION, None)
        if threshold > 0:  # 0: off, the sampler runs exactly as without this node
            patched.model_options[STEP_CACHE_OPTION] = options
        return (patched,)


NODE_CLASS_MAPPINGS = {"CoInteractStepCache": CoInteractStepCache}
NODE_DISPLAY_NAME_MAPPINGS = {"CoInteractStepCache": "CoInteract Step Cache"}
