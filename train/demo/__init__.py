"""`cointeract demo`: the toy world end to end (data, both stages, generation, report, ablation).

run (the command) <- data (toy datasets and encoders) / training (the toy model and stages) / report / ablation /
plot.
"""
