"""Runtime placement of the weights: block swap with prefetch, the memory planner, regional torch.compile."""
