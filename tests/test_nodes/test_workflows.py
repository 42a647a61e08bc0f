"""example_workflows/*.json: UI-format files that ComfyUI's editor opens, checked against the node definitions.

Our nodes are checked against their live INPUT_TYPES; ComfyUI's core nodes against a snapshot of their
/object_info entries (fixtures/comfyui_core_object_info.json, from ComfyUI 0.3.64). Then one workflow per file is
executed node by node on tiny models: our nodes run for real, core loaders / savers are ComfyUI-shaped stand-ins.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyui_cointeract import NODE_CLASS_MAPPINGS

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
SNAPSHOT = json.loads((Path(__file__).parent / "fixtures" / "comfyui_core_object_info.json").read_text())
VIRTUAL = {"Note", "MarkdownNote"}
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Combos listing files of the user's models/ or input/ folder: any file name is fine here.
FILE_INPUTS = {"image", "audio", "vae_name", "clip_name", "audio_encoder_name", "base_model", "cointeract_checkpoint",
               "lora_name"}  # fmt: skip
OUTPUT_NODES = {"SaveVideo", "PreviewImage", "SaveAudio", "PreviewAudio", "SaveAnimatedWEBP"}


def node_info(node_type: str) -> dict:
    """/object_info-shaped entry: ours from INPUT_TYPES, core nodes from the snapshot."""
    if node_type in NODE_CLASS_MAPPINGS:
        cls = NODE_CLASS_MAPPINGS[node_type]
        inputs = cls.INPUT_TYPES()
        return {
            "input": inputs,
            "input_order": {k: list(v) for k, v in inputs.items() if k != "hidden"},
            "output": list(cls.RETURN_TYPES),
        }
    return SNAPSHOT["nodes"][node_type]


def _kind(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def widget_specs(info: dict) -> list[tuple[str, list]]:
    order = info["input_order"]
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"][section][name]
            if _kind(spec) in WIDGETS and not _opts(spec).get("forceInput"):
                out.append((name, spec))
    return out


def map_widgets(node: dict) -> dict:
    """{input name: value} from widgets_values, as the editor does (control / upload values skipped)."""
    values, out, i = list(node.get("widgets_values") or []), {}, 0
    for name, spec in widget_specs(node_info(node["type"])):
        if i >= len(values):
            break
        out[name] = values[i]
        i += 1
        if name in ("seed", "noise_seed") or _opts(spec).get("control_after_generate"):
            i += 1  # the control_after_generate value
        if _opts(spec).get("image_upload"):
            i += 1  # LoadImage's "image" upload button value
        if _opts(spec).get("audio_upload"):
            i += 2  # LoadAudio's player and upload values
    assert i == len(values), f"node {node['id']} ({node['type']}): {len(values)} widget values for {i} slots"
    return out


def value_problem(name: str, spec, value) -> str | None:
    kind, opts = _kind(spec), _opts(spec)
    if kind == "COMBO":
        options = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
        if name in FILE_INPUTS:
            return None if isinstance(value, str) and value else f"{name}: file name expected, got {value!r}"
        return None if value in options else f"{name}: {value!r} not in {options}"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}: {value!r} is not a boolean"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{name}: {value!r} is not a string"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and isinstance(value, float)):
        return f"{name}: {value!r} is not {kind}"
    if value < opts.get("min", -float("inf")) or value > opts.get("max", float("inf")):
        return f"{name}: {value} outside [{opts.get('min')}, {opts.get('max')}]"
    return None


@pytest.fixture(params=WORKFLOWS, ids=lambda p: p.stem)
def workflow(request) -> dict:
    return json.loads(request.param.read_text())


def test_four_workflows() -> None:
    assert [p.stem for p in WORKFLOWS] == [
        "cointeract_hoi_router_preview",
        "cointeract_long_timeline",
        "cointeract_product_video",
        "cointeract_toy_world",
    ]
    assert SNAPSHOT["comfyui_version"] == "0.3.64"


def test_nodes_and_widgets(workflow: dict) -> None:
    assert {"nodes", "links", "last_node_id", "last_link_id", "version"} <= set(workflow)
    problems, types = [], {n["type"] for n in workflow["nodes"]}
    unknown = types - VIRTUAL - set(NODE_CLASS_MAPPINGS) - set(SNAPSHOT["nodes"])
    assert not unknown, f"node types that are neither ours nor ComfyUI core: {unknown}"
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL:
            continue
        info, widgets = node_info(node["type"]), map_widgets(node)
        specs = dict(widget_specs(info))
        problems += [f"{node['id']}.{p}" for n, v in widgets.items() if (p := value_problem(n, specs[n], v))]
        names = [e["name"] for e in node["inputs"]]
        declared = [n for s in ("required", "optional") for n in info["input_order"].get(s, [])]
        assert names == declared, f"node {node['id']} inputs {names} != definition {declared}"
    assert not problems, "\n".join(problems)
    assert types & OUTPUT_NODES, "a workflow needs an output node"


def test_links_are_consistent(workflow: dict) -> None:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    ids = [link[0] for link in workflow["links"]]
    assert len(ids) == len(set(ids)) and max(ids) <= workflow["last_link_id"]
    assert max(nodes) <= workflow["last_node_id"]
    for lid, src, slot, dst, dst_slot, ltype in workflow["links"]:
        out, inp = nodes[src]["outputs"][slot], nodes[dst]["inputs"][dst_slot]
        assert lid in out["links"] and inp["link"] == lid, f"link {lid} not recorded on both ends"
        assert out["type"] == ltype == inp["type"], f"link {lid}: {out['type']} -> {inp['type']} ({ltype})"
        assert node_info(nodes[src]["type"])["output"][slot] == ltype
    linked = {lid for n in nodes.values() for e in n.get("inputs", []) if (lid := e.get("link")) is not None}
    assert linked == set(ids)
    for node in nodes.values():  # every required non-widget input is connected
        if node["type"] in VIRTUAL:
            continue
        required = node_info(node["type"])["input"]["required"]
        for entry in node["inputs"]:
            if entry["name"] in required and _kind(required[entry["name"]]) not in WIDGETS:
                assert entry["link"] is not None, f"node {node['id']}: required input {entry['name']} unconnected"


def test_note_lists_model_files(workflow: dict) -> None:
    notes = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in VIRTUAL]
    assert notes, "each workflow has a Note with the model files"
    if any(n["type"] == "CoInteractToyBundleLoader" for n in workflow["nodes"]):
        assert "nothing to download" in notes[0] and "input/" in notes[0]  # the toy needs no model files
        return
    for folder in ("diffusion_models/", "cointeract/", "text_encoders/", "vae/", "audio_encoders/"):
        assert folder in notes[0]


# ------------------------------------------------------------------------------------------------------------
# Executing the workflows node by node on tiny models

OVERRIDES = {  # tiny model files and sizes in place of the 14B ones
    "CoInteractModelLoader": {"base_model": "base.safetensors", "cointeract_checkpoint": "ckpt.safetensors",
                              "weight_dtype": "fp32"},
    "CoInteractReferences": {"width": 64, "height": 64},
    "CoInteractSampler": {"steps": 2},
}  # fmt: skip


def core_stand_ins(inputs, saved: list) -> dict:
    """ComfyUI core nodes as functions returning what the real ones return (shapes of ComfyUI 0.3.64)."""
    return {
        "LoadImage": lambda image: (inputs.product if "product" in image else inputs.person, None),
        "LoadAudio": lambda audio: (inputs.audio,),
        "VAELoader": lambda vae_name: (inputs.vae,),
        "CLIPLoader": lambda clip_name, type, device="default": (inputs.clip,),
        "AudioEncoderLoader": lambda audio_encoder_name: ("wav2vec2",),
        "AudioEncoderEncode": lambda audio_encoder, audio: (
            audio_encoder.encode_audio(audio["waveform"], audio["sample_rate"])  # the toy bundle's encoder
            if hasattr(audio_encoder, "encode_audio")
            else inputs.encoder_output,
        ),
        "ImageStitch": lambda image1, direction, match_image_size, spacing_width, spacing_color, image2=None: (
            torch.cat([image1, image2], dim=2),
        ),
        "CreateVideo": lambda images, fps, audio=None: ({"images": images, "fps": fps, "audio": audio},),
        "SaveVideo": lambda video, filename_prefix, format, codec: saved.append(video) or (),
    }


def execute(workflow: dict, stand_ins: dict) -> dict[int, tuple]:
    """Run every non-virtual node once its inputs are ready; returns node id -> outputs."""
    nodes = {n["id"]: n for n in workflow["nodes"] if n["type"] not in VIRTUAL}
    links = {lid: (src, slot) for lid, src, slot, *_ in workflow["links"]}
    results: dict[int, tuple] = {}
    while len(results) < len(nodes):
        ready = [
            n for i, n in nodes.items()
            if i not in results and all(e["link"] is None or links[e["link"]][0] in results for e in n["inputs"])
        ]  # fmt: skip
        assert ready, "the graph has a cycle"
        for node in ready:
            kwargs = {**map_widgets(node), **OVERRIDES.get(node["type"], {})}
            kwargs.update({e["name"]: results[links[e["link"]][0]][links[e["link"]][1]] for e in node["inputs"]
                           if e["link"] is not None})  # fmt: skip
            if node["type"] in NODE_CLASS_MAPPINGS:
                cls = NODE_CLASS_MAPPINGS[node["type"]]
                results[node["id"]] = getattr(cls(), cls.FUNCTION)(**kwargs)
            else:
                results[node["id"]] = stand_ins[node["type"]](**kwargs)
    return results


@pytest.mark.usefixtures("model_dir")
@pytest.mark.parametrize("path", [p for p in WORKFLOWS if "toy" not in p.stem], ids=lambda p: p.stem)
def test_workflow_runs_on_tiny_models(path: Path, comfy_inputs) -> None:
    workflow, saved = json.loads(path.read_text()), []
    results = execute(workflow, core_stand_ins(comfy_inputs, saved))
    (video,) = saved
    frames, audio = video["images"], video["audio"]
    sampler = next(results[n["id"]] for n in workflow["nodes"] if n["type"] == "CoInteractSampler")
    speech_frames = comfy_inputs.encoder_output["encoded_audio"].shape[1] * 25 // 50  # 89
    widgets = map_widgets(next(n for n in workflow["nodes"] if n["type"] == "CoInteractSampler"))
    n = min(speech_frames, 80 * (widgets["max_clips"] or 99))
    assert video["fps"] == 25.0 and frames.shape[0] == n and frames.shape[-1] == 3
    assert audio["waveform"].shape[-1] == round(n / 25 * 44100) and audio["sample_rate"] == 44100
    assert sampler[0].shape == (n, 64, 64, 3) and 0 <= sampler[0].min() and sampler[0].max() <= 1
    if widgets["hoi_preview"]:
        assert frames.shape == (n, 64, 3 * 64, 3)  # frames | HOI | heatmaps
        assert sampler[3].shape == sampler[4].shape == (n, 64, 64, 3)
        assert sampler[3].abs().sum() > 0 and not torch.equal(sampler[4], sampler[0])
    prompts = next(results[n["id"]][0] for n in workflow["nodes"] if n["type"] == "CoInteractPrompts")
    timeline = map_widgets(next(n for n in workflow["nodes"] if n["type"] == "CoInteractPrompts"))["timeline"]
    assert len(prompts.prompts) == 1 + len([line for line in timeline.splitlines() if line.strip()])


def test_toy_workflow_runs_on_the_shipped_bundle_and_samples(comfy_inputs) -> None:
    path = ROOT / "example_workflows" / "cointeract_toy_world.json"
    workflow, saved = json.loads(path.read_text()), []
    results = execute(workflow, core_stand_ins(comfy_inputs, saved))
    (video,) = saved
    frames = next(results[n["id"]] for n in workflow["nodes"] if n["type"] == "CoInteractSampler")[0]
    n = frames.shape[0]  # 6.4 s of shipped speech: 2 clips, trimmed to the 159 frames its features cover
    assert video["fps"] == 25.0 and n in (159, 160) and frames.shape[1:] == (64, 64, 3)
    assert video["images"].shape == (n, 64, 3 * 64, 3)  # frames | HOI stream | router heatmaps
    assert video["audio"]["waveform"].shape[-1] == n * 640 and video["audio"]["sample_rate"] == 16000
