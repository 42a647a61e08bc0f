"""Every registered node follows the pack's conventions (STYLE §5): ids, display names, documented inputs."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import pytest

from comfyui_cointeract import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

INPUT_SECTIONS = {"required", "optional", "hidden"}
HIDDEN_VALUES = {"UNIQUE_ID", "PROMPT", "EXTRA_PNGINFO", "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG"}


def _check_number(where: str, kind: str, opts: Mapping) -> list[str]:
    problems = []
    pytype = int if kind == "INT" else float
    default, lo, hi = opts.get("default"), opts.get("min"), opts.get("max")
    if default is None:
        problems.append(f"{where}: {kind} input has no default")
    elif (
        isinstance(default, bool)
        or not isinstance(default, (int, float))
        or (pytype is int and isinstance(default, float))
    ):
        problems.append(f"{where}: default {default!r} is not {kind}")
    else:
        if lo is not None and default < lo:
            problems.append(f"{where}: default {default} < min {lo}")
        if hi is not None and default > hi:
            problems.append(f"{where}: default {default} > max {hi}")
    if lo is not None and hi is not None and lo > hi:
        problems.append(f"{where}: min {lo} > max {hi}")
    if "step" in opts and not opts["step"] > 0:
        problems.append(f"{where}: step must be > 0")
    return problems


def _check_input(where: str, spec: object) -> list[str]:
    if not isinstance(spec, (tuple, list)) or not 1 <= len(spec) <= 2:
        return [f"{where}: expected (TYPE,) or (TYPE, options), got {spec!r}"]
    kind, opts = spec[0], (spec[1] if len(spec) == 2 else {})
    if not isinstance(opts, Mapping):
        return [f"{where}: options must be a dict"]
    problems = []
    tooltip = opts.get("tooltip")
    if not isinstance(tooltip, str) or not tooltip.strip():
        problems.append(f"{where}: no tooltip")
    if isinstance(kind, (list, tuple)):  # a combo
        if not kind:
            problems.append(f"{where}: empty combo")
        if "default" in opts and opts["default"] not in kind:
            problems.append(f"{where}: default {opts['default']!r} not among {list(kind)}")
    elif not isinstance(kind, str) or not kind:
        problems.append(f"{where}: type must be a non-empty string or a list of options")
    elif kind in ("INT", "FLOAT"):
        problems += _check_number(where, kind, opts)
    elif kind == "BOOLEAN" and not isinstance(opts.get("default"), bool):
        problems.append(f"{where}: BOOLEAN input needs a bool default")
    elif kind == "STRING" and "default" in opts and not isinstance(opts["default"], str):
        problems.append(f"{where}: STRING default must be a str")
    return problems


def _check_outputs(node_id: str, cls: type) -> list[str]:
    problems = []
    returns = getattr(cls, "RETURN_TYPES", None)
    if not isinstance(returns, tuple) or not all(isinstance(r, str) and r for r in returns):
        return [f"{node_id}: RETURN_TYPES must be a tuple of type names"]
    for attr in ("RETURN_NAMES", "OUTPUT_TOOLTIPS", "OUTPUT_IS_LIST"):
        value = getattr(cls, attr, None)
        if value is not None and len(value) != len(returns):
            problems.append(f"{node_id}: {attr} has {len(value)} entries for {len(returns)} outputs")
    if not returns and not getattr(cls, "OUTPUT_NODE", False):
        problems.append(f"{node_id}: no outputs and not an OUTPUT_NODE")
    return problems


def node_problems(node_id: str, cls: type, display_names: Mapping[str, str]) -> list[str]:
    """Everything wrong with node class `cls` registered as `node_id` (empty when it is fine)."""
    problems = []
    if not node_id.startswith("CoInteract"):
        problems.append(f"{node_id}: node ids start with 'CoInteract'")
    if not str(display_names.get(node_id, "")).strip():
        problems.append(f"{node_id}: no display name in NODE_DISPLAY_NAME_MAPPINGS")
    if not str(getattr(cls, "CATEGORY", "")).startswith("CoInteract"):
        problems.append(f"{node_id}: CATEGORY must start with 'CoInteract'")
    if not str(getattr(cls, "DESCRIPTION", "")).strip():
        problems.append(f"{node_id}: no DESCRIPTION")
    function = getattr(cls, str(getattr(cls, "FUNCTION", "")), None)
    if not callable(function):
        problems.append(f"{node_id}: FUNCTION does not name a method")
    problems += _check_outputs(node_id, cls)
    try:
        inputs = cls.INPUT_TYPES()
    except Exception as err:  # report any failure as a problem of this node
        return [*problems, f"{node_id}: INPUT_TYPES() raised {err!r}"]
    if not isinstance(inputs, Mapping) or not set(inputs) <= INPUT_SECTIONS or "required" not in inputs:
        return [*problems, f"{node_id}: INPUT_TYPES() must return a dict with 'required' (+ 'optional', 'hidden')"]
    for section in ("required", "optional"):
        for name, spec in inputs.get(section, {}).items():
            problems += _check_input(f"{node_id}.{name}", spec)
    for name, value in inputs.get("hidden", {}).items():
        if value not in HIDDEN_VALUES:
            problems.append(f"{node_id}.{name}: unknown hidden input {value!r}")
    if callable(function):
        params = inspect.signature(function).parameters
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        names = [n for s in INPUT_SECTIONS for n in inputs.get(s, {})]
        missing = [n for n in names if n not in params and not takes_kwargs]
        if missing:
            problems.append(f"{node_id}: {cls.FUNCTION}() does not accept inputs {missing}")
    return problems


def test_mappings_are_well_formed() -> None:
    assert isinstance(NODE_CLASS_MAPPINGS, dict) and isinstance(NODE_DISPLAY_NAME_MAPPINGS, dict)
    assert set(NODE_DISPLAY_NAME_MAPPINGS) <= set(NODE_CLASS_MAPPINGS)
    assert all(isinstance(cls, type) for cls in NODE_CLASS_MAPPINGS.values())


@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_node_follows_conventions(node_id: str) -> None:
    problems = node_problems(node_id, NODE_CLASS_MAPPINGS[node_id], NODE_DISPLAY_NAME_MAPPINGS)
    assert not problems, "\n".join(problems)


# The checker itself, on a node that is fine and on one with every mistake, so it works before real nodes exist.


class CoInteractGoodNode:
    CATEGORY = "CoInteract/test"
    DESCRIPTION = "A well-formed node."
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "steps": ("INT", {"default": 40, "min": 1, "max": 200, "tooltip": "Flow-matching steps"}),
                "mode": (["a", "b"], {"default": "a", "tooltip": "Mode"}),
                "image": ("IMAGE", {"tooltip": "Person image"}),
            },
            "optional": {"cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 20.0, "tooltip": "Guidance"})},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def run(self, steps, mode, image, cfg=7.0, unique_id=None):
        return (image,)


class BadNode:
    CATEGORY = "misc"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("a", "b")
    FUNCTION = "missing"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "steps": ("INT", {"default": 300, "min": 1, "max": 200}),
                "mode": (["a", "b"], {"default": "c", "tooltip": "Mode"}),
            }
        }


def test_checker_accepts_a_good_node() -> None:
    assert node_problems("CoInteractGoodNode", CoInteractGoodNode, {"CoInteractGoodNode": "Good"}) == []


def test_checker_rejects_a_bad_node() -> None:
    text = "\n".join(node_problems("BadNode", BadNode, {}))
    for expected in (
        "start with 'CoInteract'",
        "display name",
        "CATEGORY",
        "DESCRIPTION",
        "FUNCTION",
        "RETURN_NAMES",
        "no tooltip",
        "> max",
        "not among",
    ):
        assert expected in text, f"checker missed: {expected}\n{text}"
