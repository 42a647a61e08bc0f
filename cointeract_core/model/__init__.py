"""The DiT (Wan2.2-S2V + Human-Aware MoE + HOI stream): one concept per module, `dit.CoInteractDiT` on top.

config -> layout (token segments) -> rope / visibility (Eq. 4) -> attention -> moe / audio / motion -> block -> dit;
init holds the weight initialisations, validation the input shape checks.
"""
