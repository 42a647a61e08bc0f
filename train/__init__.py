"""CoInteract training: datasets, latent cache, losses, the two-stage loop (accelerate) and the toy world."""
