"""Tiny models built inside the test session: no downloads, seconds to build.

A llama-style config small enough for CPU tests but accepted by vLLM's CPU attention
(head_dim 32; 16 is refused), with a 512-token byte-level BPE tokenizer trained on GSM8K
lines and a ChatML chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

GSM8K = Path(__file__).resolve().parents[2] / "data" / "gsm8k" / "train.jsonl"

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Like DeepSeek-R1 distills: the generation prompt opens the thinking, and assistant turns lose
# everything up to </think> (so a trace's thinking never reaches the trained tokens).
STRIPPING = (
    "{% for message in messages %}{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1].lstrip() %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)


def training_lines(limit: int = 400) -> list[str]:
    lines = []
    with open(GSM8K) as fh:
        for i, line in enumerate(fh):
            if i >= limit:
                break
            row = json.loads(line)
            lines.extend([row["question"], row["answer"]])
    lines += [f"{a} + {b} = {a + b}" for a in range(20) for b in range(20)]
    lines += ["The answer is \\boxed{42}.", "#### 7"]
    return lines


def build_tokenizer(out: Path, vocab_size: int = 512) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(training_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)


def build_tiny_model(
    out: Path, *, layers: int = 2, seed: int = 0, tokenizer_from: Path | None = None
) -> Path:
    """A random llama model + tokenizer folder at `out` (reusing another tokenizer if given)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is None:
        build_tokenizer(out)
    else:
        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out
