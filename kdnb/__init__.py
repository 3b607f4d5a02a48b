"""kdnb: helpers for an interactive, tested textbook on knowledge distillation."""
__version__ = "0.1.0"
