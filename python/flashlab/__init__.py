"""flashlab from Python, through libflashlab's C ABI: the fp64 reference on numpy arrays (flashlab.reference),
flash_attn's entry points on flashlab's variants for torch tensors (flash_attn_func, flash_attn_varlen_func, with
autograd; PyTorch is imported only when they are called), and flash_attn's key-padding helpers (unpad_input,
pad_input) for numpy arrays and torch tensors; flashlab.dropout_mask reproduces attention dropout's keep mask.
"""

from . import reference
from .dropout import dropout_mask
from ._abi import FlashlabError, InvalidArgument, Unsupported, variants
from .flash_attn import flash_attn_func, flash_attn_varlen_func
from .padding import pad_input, unpad_input

__all__ = ["reference", "variants", "FlashlabError", "InvalidArgument", "Unsupported", "flash_attn_func",
           "flash_attn_varlen_func", "unpad_input", "pad_input", "dropout_mask"]
