"""kexue zoo: the models and algorithms of Su Jianlin's blog (kexue.fm) in JAX/Flax."""

__version__ = "0.1.0"
