"""Random-initialised checkpoints of the architectures users bring besides the v2 family:
BERT, ELECTRA, DistilBERT, XLM-RoBERTa (the bge-reranker family) and a two-label BERT
(the nboost and amberoad checkpoints). RANDOM WEIGHTS: they test that each architecture
is encoded and scored as `CrossEncoder.predict` does, nothing about ranking quality.

BERT, ELECTRA and DistilBERT use the bundled uncased BERT vocabulary, as their published
checkpoints do (DistilBERT saved with its own tokenizer class, which gives no token types).
XLM-RoBERTa's SentencePiece files are not in the project: a small Unigram tokenizer of the
same shape (Metaspace words, `<s> q </s></s> d </s>`, no token types, pad id 1) is built
here with the `tokenizers` library and saved with the checkpoint.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from serve_app.model.checkpoints import (
    RANDOM_INIT_MARKER,
    bundled_tokenizer,
    random_config,
    save_random_checkpoint,
)

ARCHITECTURES = ["bert", "electra", "distilbert", "xlm-roberta", "bert-two-labels"]
# Small: the point is the architecture's encoding and head, not its size.
SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
TWO_LABELS = {0: "irrelevant", 1: "relevant"}
# Wide enough that random logits differ between documents by far more than the 1e-4 the
# tests compare at: an encoding that differs shows.
INIT_RANGE = 0.3

QUERY = "what is the capital of france"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "",
    "The quick brown fox jumps over the lazy dog. " * 80,  # past the model's window
    "France's capital city, Paris, has a population of about two million.",
    "Bananas are yellow.",
    "Émile Zola wrote novels; naïve café résumé, text with accents.",
    "Tabs\tand\nnew lines   and  runs of spaces",
]


def write_architecture(kind: str, root: Path) -> Path:
    """The checkpoint of `kind` (one of `ARCHITECTURES`) under `root`, written once."""
    out = root / kind
    seed = zlib.crc32(kind.encode())
    if kind == "xlm-roberta":
        return _write_xlm_roberta(out, seed)
    model_type = "bert" if kind == "bert-two-labels" else kind
    architecture = {
        "model_type": model_type,
        **SIZES,
        "intermediate_size": 64,
        "vocab_size": 30522,
        "num_labels": 2 if kind == "bert-two-labels" else 1,
    }
    overrides: dict = {"initializer_range": INIT_RANGE}
    if kind == "electra":
        overrides["embedding_size"] = 32
    if kind == "bert-two-labels":
        overrides["id2label"] = TWO_LABELS
        overrides["label2id"] = {v: k for k, v in TWO_LABELS.items()}
    config = random_config(architecture, **overrides)
    tokenizer = bundled_tokenizer("DistilBertTokenizerFast") if kind == "distilbert" else None
    return save_random_checkpoint(config, out, seed, tokenizer)


def _xlm_roberta_tokenizer():
    """A Unigram tokenizer shaped like XLM-RoBERTa's: `<s>`=0, `<pad>`=1, `</s>`=2,
    `<unk>`=3, pieces, `<mask>` last; NFKC and collapsed spaces; words marked by `▁`."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import XLMRobertaTokenizerFast

    text = " ".join([QUERY, *DOCUMENTS])
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text)))
    chars = sorted(set(text) - set(" \t\n") | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = [(s, 0.0) for s in specials]
    vocab += [(f"▁{w}", -5.0) for w in words] + [(w, -6.0) for w in words]
    vocab += [("▁", -8.0)] + [(c, -10.0) for c in chars]
    vocab.append(("<mask>", 0.0))
    backend = Tokenizer(models.Unigram(vocab, unk_id=3))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")]
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )


def _write_xlm_roberta(out: Path, seed: int) -> Path:
    from transformers import XLMRobertaConfig

    tokenizer = _xlm_roberta_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        **SIZES,
        intermediate_size=64,
        max_position_embeddings=514,  # 512 tokens: positions start after the pad id
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,
        initializer_range=INIT_RANGE,
    )
    setattr(config, RANDOM_INIT_MARKER, True)
    return save_random_checkpoint(config, out, seed, tokenizer)


def write_headless_distilbert(out: Path) -> Path:
    """A DistilBERT encoder without a classification head, as a checkpoint published with
    its own head code (distilbert-cat's BERT_Cat) is to transformers."""
    import torch
    from transformers import DistilBertModel

    architecture = {**SIZES, "model_type": "distilbert", "intermediate_size": 64}
    config = random_config({**architecture, "vocab_size": 30522, "num_labels": 1})
    torch.manual_seed(0)
    DistilBertModel(config).save_pretrained(out)
    bundled_tokenizer("DistilBertTokenizerFast").save_pretrained(out)
    return out
