"""kdnb: a small knowledge-distillation library (losses, methods under one protocol, one loop, stacked
grids, cached training, deployment), and ``kdnb.book``, the interactive textbook's layer built on it."""
__version__ = "0.1.0"
