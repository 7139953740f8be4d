"""Linear regions of ReLU networks along line segments (Gamba et al., AISTATS 2022).

The pure core of the product: ``pipeline.regions.discover`` finds every linear region a
segment crosses, with its affine map, and the measures built from them.
"""

__version__ = "0.1.0"
