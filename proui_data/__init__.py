"""proui_data: build sharded zarr v3 stores of aligned faces for occluded face hallucination.

Heavy or optional dependencies (torch, dlib, datasets, face-alignment) are imported where they are used,
so `import proui_data` works even when one of them is broken.
"""
__version__ = "0.1.0"
