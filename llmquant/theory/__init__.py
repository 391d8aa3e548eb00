"""The rate–distortion limit Γ(R) for Gaussian matrix products and experiments against it.
Importing defines names only (matplotlib is imported inside the plotting function)."""

from .gamma import gamma, gap_db, r_star

__all__ = ["gamma", "gap_db", "r_star"]
