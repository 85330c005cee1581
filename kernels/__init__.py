"""Numba kernels for involution: torch-free (NumPy / Numba arrays in, arrays out)."""
