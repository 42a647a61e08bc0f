"""Weights on disk: safetensors I/O, key mapping and strict loading, fp8 storage, LoRA and finetunes.

safetensors_io <- checkpoint (official keys <-> module names, `load_dit`) <- fp8_load; fp8 is the storage format
(checkpoint reads ComfyUI fp8_scaled files through it); lora is plain torch and imports nothing of ours.
"""
