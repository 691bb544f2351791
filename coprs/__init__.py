"""coprs: reasoning segmentation with multimodal LLMs (CoPRS and comparable paradigms).

Importing ``coprs`` is cheap; the parts load torch/transformers when first used.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
