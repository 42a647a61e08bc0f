"""Inputs -> Conditioning -> sampled clips -> frames: the official batch_infer procedure and `cointeract generate`.

protocols (encoder interfaces) and conditioning (the frozen inputs) come first; build turns raw inputs into a
Conditioning, checks validates it against a model, clips chains 80-frame clips, generate is the CLI (its flags in
cli_options, model loading in engines, CSV rows in cases, files written in outputs).
"""
