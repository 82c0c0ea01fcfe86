"""Tiny Hugging Face model directories written with ``save_pretrained`` (nothing is downloaded):
a BERT with its WordPiece tokenizer, a ViT, a CLIP vision tower. Shared by the encoder tests and
the end-to-end test on files on disk."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (BertConfig, BertForMaskedLM, BertTokenizerFast, CLIPVisionConfig, CLIPVisionModel,
                          ViTConfig, ViTModel)

WORDS = ["a", "the", "red", "blue", "green", "circle", "square", "triangle", "small", "large", "left", "right",
         "top", "bottom", "of", "in", "and", "above", "below", "is", "there", "##s", "."]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def tiny_bert(path: Path, tokenizer: bool = True, initializer_range: float = 0.02) -> Path:
    """A 2-layer, 32-wide BERT (saved as BertForMaskedLM: ``bert.`` prefix and an MLM head) and,
    optionally, its WordPiece tokenizer. ``initializer_range``: BERT's init std; at 0.02 a fresh
    2-layer BERT gives nearly the same [CLS] output for every caption (a trained one does not)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=initializer_range)
    BertForMaskedLM(config).save_pretrained(path)
    if tokenizer:
        BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True).save_pretrained(path)
    return path


def tiny_vit(path: Path, image_size: int = 224) -> Path:
    """A 1-layer, 32-wide ViT with 32-px patches (saved with its pooler, a head the towers skip)."""
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=image_size, patch_size=32)).save_pretrained(path)
    return path


def tiny_clip_vision(path: Path) -> Path:
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, image_size=64, patch_size=32)).save_pretrained(path)
    return path
