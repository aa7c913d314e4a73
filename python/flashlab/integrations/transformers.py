"""attn_implementation="flashlab" for Hugging Face transformers models (4.48 or later: AttentionInterface).

    import flashlab.integrations.transformers as fl
    fl.register()                                   # variant flash2; fl.register(variant="flash3") for Hopper
    model = AutoModelForCausalLM.from_config(config, attn_implementation="flashlab")   # or from_pretrained(...)

The attention layers then call flashlab's variant as transformers calls flash-attn 2: the 2-D padding mask (the
flash_attention_2 mask format, registered with the function where the version has AttentionMaskInterface) is turned
into a varlen batch with flashlab.unpad_input, run with flash_attn_varlen_func and padded back; without padding,
flash_attn_func. Causal attention is bottom-right aligned (decoding with a cache works); a sliding window of w keys
is window_size (w - 1, w - 1) with causal, as transformers passes it to flash-attn. Under torch.autocast, q, k and v
are cast to the autocast dtype, as sdpa's are (Llama's float32 rotary embeddings promote q and k to float32 while v
is in the autocast dtype). Attention probabilities are not returned (output_attentions needs eager); dropout during
training (the model's attention_dropout) goes to flash_attn_func, which draws its mask from torch's generator.
"""

from __future__ import annotations

from typing import Optional

from ..flash_attn import flash_attn_func, flash_attn_varlen_func
from ..padding import pad_input, unpad_input

NAME = "flashlab"


def _autocast_dtype(q):
    """The autocast dtype where autocast is on for q's device (sdpa runs in it there), else None."""
    import torch

    device_type = q.device.type
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument; the CUDA and CPU functions
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_dtype(device_type) if enabled else None


def _attention(variant: str):
    def flashlab_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: Optional[float] = None, sliding_window: Optional[int] = None,
                           softcap: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs):
        if softcap:
            raise ValueError(f"flashlab: softcap = {softcap} is not supported (this model needs eager or sdpa)")
        if kwargs.get("s_aux") is not None:
            raise ValueError("flashlab: attention sinks (s_aux) are not supported")
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        window = (sliding_window - 1, sliding_window - 1) if sliding_window else (-1, -1)
        # transformers: [B, H, N, d]; flash_attn: [B, N, H, d] (a view: the last dimension stays contiguous)
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        dtype = _autocast_dtype(q)
        if dtype is not None:  # as sdpa under autocast: float32 rotary embeddings have promoted q and k, not v
            q, k, v = (t.to(dtype) for t in (q, k, v))
        if not q.is_contiguous():
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        batch, q_len = q.shape[0], q.shape[1]
        options = dict(dropout_p=dropout, softmax_scale=scaling, causal=causal, window_size=window, variant=variant)
        if attention_mask is None or bool(attention_mask.all()):
            return flash_attn_func(q, k, v, **options), None
        if attention_mask.dim() != 2:
            raise ValueError(f"flashlab: expected a 2-D padding mask [B, N_k] (flash_attention_2's format), got shape "
                             f"{tuple(attention_mask.shape)}")
        k_unpad, _, cu_k, max_k, _ = unpad_input(k, attention_mask)
        v_unpad = unpad_input(v, attention_mask)[0]
        q_unpad, q_indices, cu_q, max_q, _ = unpad_input(q, attention_mask[:, -q_len:])  # the queries' own tokens
        out = flash_attn_varlen_func(q_unpad, k_unpad, v_unpad, cu_q, cu_k, max_q, max_k, **options)
        return pad_input(out, q_indices, batch, q_len), None

    return flashlab_attention


def register(variant: str = "flash2", name: str = NAME) -> str:
    """Makes attn_implementation=`name` run flashlab's `variant` in transformers models; returns the name."""
    try:
        from transformers import AttentionInterface
    except ImportError as e:
        raise ImportError("flashlab.integrations.transformers needs transformers >= 4.48 (AttentionInterface)") from e
    AttentionInterface.register(name, _attention(variant))
    try:  # transformers builds the 2-D padding mask flash-attn takes for this name
        from transformers import AttentionMaskInterface
        from transformers.masking_utils import flash_attention_mask

        AttentionMaskInterface.register(name, flash_attention_mask)
    except ImportError:  # older versions pass the 2-D mask to functions they do not know
        pass
    if "flash" in name:
        _claim_flash_name(name)
    return name


_CLAIMED = set()  # the names register() has claimed in transformers 5's flash-attention loader


def _claim_flash_name(name: str) -> None:
    """transformers 5 takes an attn_implementation holding "flash" for a flash-attn build and, at from_config /
    from_pretrained, loads its functions by name (modeling_flash_attention_utils._lazy_imports): for a name it does
    not know, a kernel from the Hub, which fails. Its loader is told that `name` is flashlab's: it returns flashlab's
    flash_attn_func, flash_attn_varlen_func and the padding pair (no kv-cache function) for it, and defers to the
    original for every other name. Versions without that loader (4.x) need nothing."""
    try:
        from transformers import modeling_flash_attention_utils as utils
    except ImportError:
        return
    loader = getattr(utils, "_lazy_imports", None)
    if loader is None:
        return
    _CLAIMED.add(name)
    if getattr(loader, "_flashlab", False):  # wrapped by an earlier register(): it reads _CLAIMED
        return

    def lazy_imports(implementation, *args, **kwargs):
        if implementation in _CLAIMED:
            return flash_attn_func, flash_attn_varlen_func, None, pad_input, unpad_input
        return loader(implementation, *args, **kwargs)

    lazy_imports._flashlab = True
    utils._lazy_imports = lazy_imports
