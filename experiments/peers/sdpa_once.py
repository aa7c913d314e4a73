"""Run one PyTorch SDPA backend on one problem a few times: the launch a profiler (Nsight Compute) attaches to.

    ncu --set full -k regex:'(?i)(sdpa|fmha|fprop|flash)' --launch-skip 2 --launch-count 1 -o OUT \\
        python3 experiments/peers/sdpa_once.py --backend cudnn --batch 2 --heads 16 --seqlen 8192 --head-dim 128

Inputs are torch.randn in [B, H, N, d] (the values do not change the kernel's work); three launches, so a profiler
can skip the first two.
"""

import argparse

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(BACKENDS), required=True)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--heads", type=int, required=True)
    parser.add_argument("--seqlen", type=int, required=True)
    parser.add_argument("--head-dim", type=int, required=True)
    parser.add_argument("--causal", action="store_true")
    args = parser.parse_args()
    shape = (args.batch, args.heads, args.seqlen, args.head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=DTYPES[args.dtype]) for _ in range(3))
    with sdpa_kernel(BACKENDS[args.backend]):
        for _ in range(3):
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=args.causal)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
