"""Synthetic lesion changes: VAE, SuperMix and simulated rescans (To et al., section 3.2)."""
