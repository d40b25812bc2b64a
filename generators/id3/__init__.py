"""ID³ (NeurIPS 2024): Tammes identity anchors, per-image conditions, attribute priors."""
