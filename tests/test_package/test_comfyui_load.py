"""The pack loads the way ComfyUI loads custom nodes (nodes.py `load_custom_node`), in a clean subprocess."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Runs in a subprocess started with `python -I` from a folder outside the repo: neither the repo nor its parent
# is on sys.path. It imports the pack from custom_nodes/<folder>/__init__.py exactly as ComfyUI does, with a
# stand-in for ComfyUI's own top-level `nodes` module, and with the installed `comfyui_cointeract` hidden (inside
# ComfyUI the pack is not pip-installed, so an absolute import of it must fail here too).
LOADER = textwrap.dedent(
    """
    import importlib.abc, importlib.util, json, os, sys, types

    pack_dir, module_name, blocked = sys.argv[1], sys.argv[2], set(json.loads(sys.argv[3]))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top == "comfyui_cointeract" or top in blocked:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    comfy_nodes = types.ModuleType("nodes")  # ComfyUI's own top-level module
    sys.modules["nodes"] = comfy_nodes
    before, path_before = set(sys.modules), list(sys.path)

    spec = importlib.util.spec_from_file_location(module_name, os.path.join(pack_dir, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    classes = getattr(module, "NODE_CLASS_MAPPINGS")
    display = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS")

    pack_real = os.path.realpath(pack_dir)

    def in_pack(path):  # a file of the pack itself (not of a venv that lives inside the checkout)
        real = os.path.realpath(path)
        parts = real.split(os.sep)
        return real.startswith(pack_real + os.sep) and "site-packages" not in parts and ".venv" not in parts

    from_pack = sorted(n for n, m in list(sys.modules.items()) if getattr(m, "__file__", None) and in_pack(m.__file__))
    print(json.dumps({
        "classes": sorted(classes), "display": sorted(display),
        "nodes_untouched": sys.modules["nodes"] is comfy_nodes and not hasattr(comfy_nodes, "__path__"),
        "added_top_level": sorted(m for m in set(sys.modules) - before if "." not in m),
        "from_pack": from_pack,
        "sys_path_changed": sys.path != path_before,
    }))
    """
)

# What a ComfyUI user may lack: everything beyond torch, numpy, safetensors and einops (DESIGN §4).
OPTIONAL = ["av", "soxr", "PIL", "tqdm", "transformers", "diffusers", "accelerate", "peft", "xformers", "flash_attn"]


def load_like_comfyui(tmp_path: Path, repo_root: Path, module_name: str | None, blocked: list[str]) -> dict:
    comfy_root = tmp_path / "ComfyUI-0.3.64"  # a "." in the path, which ComfyUI turns into "_x_"
    custom_nodes = comfy_root / "custom_nodes"
    custom_nodes.mkdir(parents=True)
    pack_dir = custom_nodes / "ComfyUI-CoInteract"
    pack_dir.symlink_to(repo_root, target_is_directory=True)  # ComfyUI supports symlinked packs
    name = module_name or str(pack_dir).replace(".", "_x_")  # nodes.py load_custom_node
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOADER, str(pack_dir), name, json.dumps(blocked)],
        cwd=comfy_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"the pack failed to load like ComfyUI loads it:\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["module_name"] = name
    return result


def check_clean_load(result: dict) -> None:
    assert result["nodes_untouched"], "importing the pack replaced or altered ComfyUI's top-level `nodes` module"
    forbidden = {"nodes", "train", "utils", "cli", "cointeract_core", "services", "comfyui_cointeract"}
    assert not forbidden & set(result["added_top_level"]), result["added_top_level"]
    name = result["module_name"]
    stray = [m for m in result["from_pack"] if m != name and not m.startswith(name + ".")]
    assert not stray, f"pack files imported under top-level names (absolute imports?): {stray}"
    assert not result["sys_path_changed"], "the pack put its own folder on sys.path"
    assert set(result["display"]) <= set(result["classes"])


@pytest.mark.parametrize("module_name", [None, "ComfyUI-CoInteract"], ids=["comfyui-path-name", "hyphenated"])
def test_loads_like_comfyui(tmp_path: Path, repo_root: Path, module_name: str | None) -> None:
    result = load_like_comfyui(tmp_path, repo_root, module_name, blocked=[])
    check_clean_load(result)
    assert all(node_id.startswith("CoInteract") for node_id in result["classes"])


def test_loads_without_optional_dependencies(tmp_path: Path, repo_root: Path) -> None:
    # A user's ComfyUI may lack any optional package: the pack must still load (no IMPORT FAILED).
    check_clean_load(load_like_comfyui(tmp_path, repo_root, "ComfyUI-CoInteract", blocked=OPTIONAL))


def test_node_module_with_missing_dependency_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from comfyui_cointeract.nodes import collect_node_mappings

    pkg = tmp_path / "fake-pack"
    (pkg / "nodes").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nodes" / "__init__.py").write_text("")
    (pkg / "nodes" / "good.py").write_text(
        "class CoInteractGood:\n    pass\n"
        "NODE_CLASS_MAPPINGS = {'CoInteractGood': CoInteractGood}\n"
        "NODE_DISPLAY_NAME_MAPPINGS = {'CoInteractGood': 'Good'}\n"
    )
    (pkg / "nodes" / "needs_dep.py").write_text("import cointeract_test_missing_dependency\n")
    (pkg / "nodes" / "broken.py").write_text("from .does_not_exist import thing\n")
    (pkg / "nodes" / "again.py").write_text("from .good import NODE_CLASS_MAPPINGS\n")

    name = "fake-pack-for-test"
    spec = importlib.util.spec_from_file_location(name, pkg / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        classes, display = collect_node_mappings(f"{name}.nodes", ["good", "needs_dep"])
        assert list(classes) == ["CoInteractGood"] and display == {"CoInteractGood": "Good"}
        assert "cointeract_test_missing_dependency" in caplog.text and "pip install" in caplog.text
        with pytest.raises(ModuleNotFoundError):  # our own bug: not hidden
            collect_node_mappings(f"{name}.nodes", ["broken"])
        with pytest.raises(ValueError, match="defined twice"):
            collect_node_mappings(f"{name}.nodes", ["good", "again"])
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
