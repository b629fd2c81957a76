"""nestgen: Masked Generative Nested Transformers with decode-time scaling (MaGNeTS)."""
__version__ = "0.1.0"
