"""flashlab from Python: the fp64 reference on numpy arrays (flashlab.reference) through libflashlab's C ABI.

The CUDA entry points (flash_attn_func, flash_attn_varlen_func) are not here yet.
"""

from . import reference
from ._abi import FlashlabError, InvalidArgument, Unsupported, variants

__all__ = ["reference", "variants", "FlashlabError", "InvalidArgument", "Unsupported"]
