"""Diffusion Studio: latent diffusion you can see, scrub and branch."""

__version__ = "0.1.0"
