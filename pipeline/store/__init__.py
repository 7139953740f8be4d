"""Zarr stores of regions: atomic shards with a manifest, for segments and for planes."""
