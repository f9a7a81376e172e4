"""proui_data: build sharded zarr v3 stores of aligned faces for occluded face hallucination.

Heavy or optional dependencies (torch, dlib, datasets, face-alignment) are imported where they are used,
so `import proui_data` works even when one of them is broken.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    # Exported lazily: `to_hf_dataset` pulls in the datasets interop only when used.
    if name == "to_hf_dataset":
        from .interop import to_hf_dataset

        return to_hf_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
