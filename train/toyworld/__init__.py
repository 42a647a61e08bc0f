"""The toy world: a procedural presenter holding a product, with speech, boxes and an HOI stream for free.

world (sequences) <- render / script / audio; evaluation scores generated frames by colour segmentation; dataset
writes the official CSV layout; files holds the lossless video and PNG helpers. Inference-time toy parts
(codec, encoders, bundle) live in cointeract_core/toy.
"""
