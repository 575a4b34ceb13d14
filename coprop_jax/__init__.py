"""coprop_jax: Co-Prop (Collaborative Hybrid Propagator) for audio-visual segmentation in JAX/Flax."""
__version__ = "0.1.0"
