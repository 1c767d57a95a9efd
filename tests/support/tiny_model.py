"""Tiny test models made by the tests themselves: nothing is downloaded from a hub.

- ``make_tiny_model``: a random ``LlamaForCausalLM`` (hidden 128, 2 layers, 2 heads so head_dim is 64 — vLLM's CPU
  attention does not take 16 — intermediate 256) with a few-hundred-token byte-level BPE tokenizer trained with
  ``tokenizers`` on generated text, saved as safetensors + tokenizer files + a chat template so that
  ``/v1/chat/completions`` works.
- ``make_lora_adapter``: a LoRA adapter for it made with ``peft`` (random, non-zero init so it changes the output).
- ``make_signing_key``: an EC P-256 key pair (PEM) for ``llmos_signing.sign_model``.
- ``build_test_models``: all of the above plus a second revision (another seed), signed; what the engine tests use.

Everything is deterministic for a given seed. Building takes ~10-30 s (torch + transformers import); the engine tests
build once per pytest session into a temporary directory.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

HIDDEN = 128
LAYERS = 2
HEADS = 2  # head_dim = 64
INTERMEDIATE = 256
VOCAB = 320
MAX_POSITIONS = 2048

BOS, EOS, UNK = "<s>", "</s>", "<unk>"

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = (
    "the a model serves tenant request token cluster node gpu adapter weight signed verified drain ready pod "
    "operator runtime quota placement kube llama small tiny random answer question hello world one two three "
    "four five six seven eight nine ten fast slow green blue red yellow up down left right in out on off"
).split()


def _corpus(seed: int, lines: int = 2000) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        n = rng.randint(4, 16)
        out.append(" ".join(rng.choice(_WORDS) for _ in range(n)) + rng.choice([".", "?", "!", ","]))
    return out


def make_tokenizer(dest: Path, vocab_size: int = VOCAB) -> int:
    """Train a byte-level BPE tokenizer and save it (with a chat template) into ``dest``. Returns its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, UNK, "<|system|>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(1234), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, model_max_length=MAX_POSITIONS
    )
    fast.chat_template = CHAT_TEMPLATE
    dest.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(dest))
    # Older/newer transformers differ on where the template goes; keep it in tokenizer_config.json as well.
    cfg_path = dest / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return len(fast)


def make_tiny_model(dest: Path, *, seed: int = 0) -> Path:
    """A random tiny Llama with its tokenizer in ``dest`` (safetensors, float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    vocab = make_tokenizer(dest)
    tok = PreTrainedTokenizerFast.from_pretrained(str(dest))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # A random init with a larger spread than the default so that outputs differ visibly between seeds.
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.save_pretrained(str(dest), safe_serialization=True)
    gen = dest / "generation_config.json"
    if gen.exists():  # keep vLLM's sampling defaults neutral
        gen.unlink()
    return dest


def make_lora_adapter(base_dir: Path, dest: Path, *, seed: int = 1, rank: int = 8) -> Path:
    """A random (non-zero) LoRA adapter for the model in ``base_dir``, saved with peft into ``dest``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    base = LlamaForCausalLM.from_pretrained(str(base_dir), torch_dtype=torch.float32)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        lora_dropout=0.0,
        init_lora_weights=False,  # random A and B: the adapter changes the output
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.5)
    dest.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(dest), safe_serialization=True)
    # peft records the base model's path; make it neutral so nothing tries to resolve it.
    acfg_path = dest / "adapter_config.json"
    acfg = json.loads(acfg_path.read_text())
    acfg["base_model_name_or_path"] = "tiny-llama"
    acfg_path.write_text(json.dumps(acfg, indent=2))
    return dest


def make_signing_key(dest_dir: Path, name: str = "signer") -> tuple[Path, Path]:
    """An EC P-256 key pair as PEM files ``<name>.key`` (PKCS8) and ``<name>.pem`` (public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    dest_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    priv = dest_dir / f"{name}.key"
    pub = dest_dir / f"{name}.pem"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv, pub


@dataclass(frozen=True)
class TestModels:
    root: Path
    model_v1: Path  # revision 1 (seed 0), signed
    model_v2: Path  # revision 2 (seed 7), signed
    adapter: Path  # LoRA for the tiny model, signed
    adapter2: Path  # a second LoRA (another seed), signed
    private_key: Path
    public_key: Path
    other_public_key: Path  # a key that signed nothing

    __test__ = False  # not a pytest test class


def sign(model_dir: Path, private_key: Path) -> Path:
    from llmos_signing import sign_model

    sign_model(model_dir, private_key.read_bytes())
    return model_dir / "model.sig"


def build_test_models(root: Path) -> TestModels:
    """Build (or reuse, if already complete in ``root``) the signed test models."""
    root.mkdir(parents=True, exist_ok=True)
    done = root / ".complete"
    keys = root / "keys"
    m = TestModels(
        root=root,
        model_v1=root / "tiny-llama-v1",
        model_v2=root / "tiny-llama-v2",
        adapter=root / "lora-a",
        adapter2=root / "lora-b",
        private_key=keys / "signer.key",
        public_key=keys / "signer.pem",
        other_public_key=keys / "other.pem",
    )
    if done.exists():
        return m
    make_signing_key(keys, "signer")
    make_signing_key(keys, "other")
    make_tiny_model(m.model_v1, seed=0)
    make_tiny_model(m.model_v2, seed=7)
    make_lora_adapter(m.model_v1, m.adapter, seed=1)
    make_lora_adapter(m.model_v1, m.adapter2, seed=2)
    for d in (m.model_v1, m.model_v2, m.adapter, m.adapter2):
        sign(d, m.private_key)
    done.write_text("ok\n")
    return m


if __name__ == "__main__":  # python -m tests.support.tiny_model DEST  (handy for poking at an engine by hand)
    import sys

    print(build_test_models(Path(sys.argv[1])))
