"""attn_implementation="flashlab" in a transformers Llama model built from a small config (random weights, nothing
downloaded), against the same model on attn_implementation="sdpa", with a padded batch (right and left padding).
Skipped without PyTorch and transformers.

CPU: variant cpu-standard in float32; logits at the valid positions and the gradients of the attention weights
agree with sdpa's to 1e-4 (both are float32 attention; the difference is summation order). Under bfloat16 autocast
(float32 weights) flashlab runs q, k and v in bfloat16 as sdpa does, within FlashAttention's rule below. GPU (skipped without
CUDA): flash2 in bfloat16, whose error against the float32 model is at most twice sdpa-bfloat16's plus one bfloat16
rounding step of the logits' scale (FlashAttention's rule, with sdpa as the baseline).
"""

import copy
import os
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if not os.environ.get("FLASHLAB_TEST_INSTALLED"):  # else: the installed package (tests/python/wheel_test.sh)
    sys.path.insert(0, str(ROOT / "python"))

try:
    import torch
    import transformers
except ImportError:  # the CPU CI has neither: skipped, and said so
    torch = transformers = None

if transformers is not None:
    import flashlab.integrations.transformers as fl_transformers


def llama(attn_implementation, dtype, device):
    config = transformers.LlamaConfig(vocab_size=101, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(device=device, dtype=dtype)
    model.config._attn_implementation = attn_implementation  # the same weights under another attention
    return model


def padded_batch(device, left):
    lengths = [16, 9, 4]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 101, (len(lengths), 16), generator=g)
    mask = torch.zeros(len(lengths), 16, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left:
            mask[b, 16 - n:] = 1
        else:
            mask[b, :n] = 1
    return ids.to(device), mask.to(device)


def logits_and_grads(model, ids, mask, autocast=None):
    model.zero_grad()
    with torch.autocast(ids.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        logits = model(input_ids=ids, attention_mask=mask).logits
    valid = mask.bool()
    (logits[valid].float().pow(2).mean()).backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if "self_attn" in n}
    return logits[valid].detach().float(), grads


@unittest.skipIf(transformers is None, "PyTorch or transformers is not installed")
class LlamaOnFlashlab(unittest.TestCase):
    def assert_within_rule(self, exact, baseline, got):
        """FlashAttention's rule on (logits, attention-weight gradients): got's error against the exact model is at
        most twice the baseline's plus one bfloat16 rounding step (2^-7) of the largest value."""
        (want, want_grads), (base_logits, base_grads), (logits, grads) = exact, baseline, got
        step = 2.0 ** -7 * float(want.abs().max())
        self.assertLessEqual(float((logits - want).abs().max()), 2 * float((base_logits - want).abs().max()) + step)
        for name, g in want_grads.items():
            step = 2.0 ** -7 * float(g.abs().max())
            self.assertLessEqual(float((grads[name] - g).abs().max()),
                                 2 * float((base_grads[name] - g).abs().max()) + step, name)

    def test_cpu_standard_matches_sdpa(self):
        fl_transformers.register(variant="cpu-standard", name="flashlab-cpu")
        for left in (False, True):
            with self.subTest(left_padding=left):
                ids, mask = padded_batch("cpu", left)
                base = llama("sdpa", torch.float32, "cpu")
                ours = copy.deepcopy(base)
                ours.config._attn_implementation = "flashlab-cpu"
                want, want_grads = logits_and_grads(base, ids, mask)
                got, got_grads = logits_and_grads(ours, ids, mask)
                self.assertLessEqual(float((got - want).abs().max()), 1e-4)
                for name, g in want_grads.items():
                    scale = float(g.abs().max())
                    self.assertLessEqual(float((got_grads[name] - g).abs().max()), 1e-4 * max(scale, 1.0), name)

    def test_cpu_standard_under_autocast(self):
        # float32 weights under bfloat16 autocast (mixed-precision training): Llama's float32 rotary embeddings promote
        # q and k to float32 while v is bfloat16; flashlab runs all three in bfloat16, as sdpa does under autocast,
        # within FlashAttention's rule against the float32 model with sdpa under autocast as the baseline
        fl_transformers.register(variant="cpu-standard", name="flashlab-cpu")
        ids, mask = padded_batch("cpu", left=False)
        exact = llama("sdpa", torch.float32, "cpu")
        want, want_grads = logits_and_grads(exact, ids, mask)
        base_logits, base_grads = logits_and_grads(exact, ids, mask, autocast=torch.bfloat16)
        ours = copy.deepcopy(exact)
        ours.config._attn_implementation = "flashlab-cpu"
        got, got_grads = logits_and_grads(ours, ids, mask, autocast=torch.bfloat16)
        self.assert_within_rule((want, want_grads), (base_logits, base_grads), (got, got_grads))

    def test_the_model_calls_flashlab(self):
        # a variant the library does not know: the model's forward must fail in flashlab, not run sdpa instead
        import flashlab

        fl_transformers.register(variant="no-such-variant", name="flashlab-unknown")
        model = llama("sdpa", torch.float32, "cpu")
        model.config._attn_implementation = "flashlab-unknown"
        ids, mask = padded_batch("cpu", left=False)
        with self.assertRaises(flashlab.FlashlabError):
            model(input_ids=ids, attention_mask=mask)
        with self.assertRaises(flashlab.FlashlabError):
            model(input_ids=ids[:1])  # no padding: flash_attn_func

    def test_from_config_and_from_pretrained_take_the_name(self):
        # transformers 5 takes a name holding "flash" for a flash-attn build to load by name; register() claims it
        import tempfile

        import flashlab

        fl_transformers.register(variant="cpu-standard", name="flashlab-cpu")
        ids, mask = padded_batch("cpu", left=True)
        base = llama("sdpa", torch.float32, "cpu")
        ours = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(base.config),
                                                             attn_implementation="flashlab-cpu")
        ours.load_state_dict(base.state_dict())
        self.assertEqual(ours.config._attn_implementation, "flashlab-cpu")
        self.assertEqual(base.config._attn_implementation, "sdpa")
        want, _ = logits_and_grads(base, ids, mask)
        got, _ = logits_and_grads(ours, ids, mask)
        self.assertLessEqual(float((got - want).abs().max()), 1e-4)
        with tempfile.TemporaryDirectory() as folder:
            ours.save_pretrained(folder)
            loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="flashlab-cpu")
            self.assertEqual(loaded.config._attn_implementation, "flashlab-cpu")
            again, _ = logits_and_grads(loaded, ids, mask)
            self.assertEqual(float((again - got).abs().max()), 0.0)
        # the name routes to flashlab: a variant it does not know fails in flashlab, not in a fallback
        fl_transformers.register(variant="no-such-variant", name="flashlab-unknown")
        unknown = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(base.config),
                                                                attn_implementation="flashlab-unknown")
        with self.assertRaises(flashlab.FlashlabError):
            unknown(input_ids=ids, attention_mask=mask)
        # other flash names still go to transformers' own loader
        if not transformers.utils.is_flash_attn_2_available():
            with self.assertRaises((ImportError, ValueError)):
                transformers.AutoModelForCausalLM.from_config(copy.deepcopy(base.config),
                                                              attn_implementation="flash_attention_2")

    def test_dropout_reaches_flashlab_in_training_only(self):
        # the model's attention_dropout goes to flash_attn(_varlen)_func in train mode, 0 in eval mode; the mask comes
        # from torch's generator: the same seed repeats the logits, and dropout changes them
        calls = []
        originals = (fl_transformers.flash_attn_func, fl_transformers.flash_attn_varlen_func)

        def recording(function):
            def call(*args, **kwargs):
                calls.append(kwargs["dropout_p"])
                return function(*args, **kwargs)
            return call

        fl_transformers.flash_attn_func, fl_transformers.flash_attn_varlen_func = map(recording, originals)
        try:
            fl_transformers.register(variant="cpu-standard", name="flashlab-cpu")
            ids, mask = padded_batch("cpu", left=False)
            model = llama("flashlab-cpu", torch.float32, "cpu")
            model.config.attention_dropout = 0.25
            for layer in model.model.layers:
                layer.self_attn.attention_dropout = 0.25
            model.eval()
            torch.set_grad_enabled(False)
            plain = model(input_ids=ids, attention_mask=mask).logits[mask.bool()]
            self.assertEqual(set(calls), {0.0})
            calls.clear()
            model.train()
            torch.manual_seed(5)
            first = model(input_ids=ids, attention_mask=mask).logits[mask.bool()]
            self.assertEqual(set(calls), {0.25})
            torch.manual_seed(5)
            second = model(input_ids=ids, attention_mask=mask).logits[mask.bool()]
            self.assertEqual(float((first - second).abs().max()), 0.0)
            self.assertGreater(float((first - plain).abs().max()), 1e-3)
        finally:
            torch.set_grad_enabled(True)
            fl_transformers.flash_attn_func, fl_transformers.flash_attn_varlen_func = originals

    def test_refused_options(self):
        attention = fl_transformers._attention("cpu-standard")
        q = torch.zeros(1, 2, 4, 8)
        with self.assertRaisesRegex(ValueError, "softcap"):
            attention(None, q, q, q, None, softcap=30.0, is_causal=True)
        with self.assertRaisesRegex(ValueError, "2-D padding mask"):
            attention(None, q, q, q, torch.zeros(1, 1, 4, 4), is_causal=True)

    @unittest.skipUnless(torch is not None and torch.cuda.is_available(), "no CUDA device")
    def test_flash2_bf16_within_the_rule(self):
        fl_transformers.register(variant="flash2")
        ids, mask = padded_batch("cuda", left=False)
        exact = llama("sdpa", torch.float32, "cuda")
        want, want_grads = logits_and_grads(exact, ids, mask)
        base = llama("sdpa", torch.bfloat16, "cuda")
        ours = copy.deepcopy(base)
        ours.config._attn_implementation = "flashlab"
        base_logits, base_grads = logits_and_grads(base, ids, mask)
        got, got_grads = logits_and_grads(ours, ids, mask)
        self.assert_within_rule((want, want_grads), (base_logits, base_grads), (got, got_grads))


if __name__ == "__main__":
    unittest.main()
