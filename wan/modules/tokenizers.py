"""Prompt tokenization for the text encoders (umT5 and XLM-RoBERTa).

:class:`HuggingfaceTokenizer` keeps the name and call convention of the
official Wan2.1 wrapper: it cleans each prompt, then runs a Hugging Face
tokenizer with padding to ``seq_len``, truncation and the model's special
tokens (T5 appends ``</s>``), and returns ``input_ids`` (and, with
``return_mask=True``, ``attention_mask``) as ``[B, seq_len]`` tensors.

Tokenizers are only read from a local folder (``<ckpt_dir>/google/umt5-xxl``
for umT5): nothing is downloaded and no code shipped with a checkpoint runs.
"""

from __future__ import annotations

import html
import logging
import os
import string
from pathlib import Path
from typing import Any

import ftfy
import regex  # a dependency of transformers; matches Unicode whitespace like the official code
import torch

from ..utils.checkpoint import CheckpointError, require_dir

__all__ = ["HuggingfaceTokenizer", "basic_clean", "whitespace_clean", "canonicalize",
           "clean_text", "load_local_tokenizer"]

log = logging.getLogger(__name__)

CLEAN_MODES = (None, "whitespace", "lower", "canonicalize")

_SPACES = regex.compile(r"\s+")


# --------------------------------------------------------------------- cleaning
def basic_clean(text: str) -> str:
    """Repair mojibake with ftfy, decode HTML entities (twice, for ``&amp;amp;``), strip."""
    text = ftfy.fix_text(text)
    for _ in range(2):
        text = html.unescape(text)
    return text.strip()


def whitespace_clean(text: str) -> str:
    """Collapse every run of whitespace (any Unicode kind) into one space and strip."""
    return _SPACES.sub(" ", text).strip()


def canonicalize(text: str, keep_punctuation_exact_string: str | None = None) -> str:
    """Lower-case, drop ASCII punctuation and underscores, collapse whitespace.

    Occurrences of ``keep_punctuation_exact_string`` are kept verbatim.
    """
    drop_punct = str.maketrans("", "", string.punctuation)
    text = text.replace("_", " ")
    if keep_punctuation_exact_string:
        parts = text.split(keep_punctuation_exact_string)
        text = keep_punctuation_exact_string.join(p.translate(drop_punct) for p in parts)
    else:
        text = text.translate(drop_punct)
    return whitespace_clean(text.lower())


def clean_text(text: str, mode: str | None) -> str:
    """Apply one of the cleaning modes ``None``, 'whitespace', 'lower' or 'canonicalize'."""
    if mode is None:
        return text
    if mode == "whitespace":
        return whitespace_clean(basic_clean(text))
    if mode == "lower":
        return whitespace_clean(basic_clean(text)).lower()
    if mode == "canonicalize":
        return canonicalize(basic_clean(text))
    raise ValueError(f"unknown clean mode {mode!r}; choose one of {CLEAN_MODES}")


# --------------------------------------------------------------------- loading
def load_local_tokenizer(folder: str | os.PathLike, what: str = "tokenizer", **kwargs: Any):
    """Load a Hugging Face tokenizer from a local folder, offline and without remote code."""
    from transformers import AutoTokenizer

    path = require_dir(folder, what)
    if kwargs.pop("trust_remote_code", False):
        raise ValueError("trust_remote_code is not allowed: tokenizers are loaded as data only.")
    kwargs.setdefault("local_files_only", True)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, **kwargs)
    except Exception as e:  # transformers raises many kinds for a broken folder
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{what} folder '{path}' could not be loaded ({msg}). It should hold "
            f"'tokenizer.json' and 'tokenizer_config.json': is the download complete?") from e
    log.debug("Loaded %s %s from %s", what, type(tok).__name__, path)
    return tok


# --------------------------------------------------------------------- wrapper
class HuggingfaceTokenizer:
    """Clean, tokenize, pad and truncate prompts (official name and behaviour).

    Args:
        name: local folder of the tokenizer (``tokenizer.json`` + ``tokenizer_config.json``).
        seq_len: pad/truncate every prompt to this many tokens; ``None`` leaves lengths alone.
        clean: prompt cleaning, one of ``None``, 'whitespace', 'lower', 'canonicalize'.
        **kwargs: passed to ``AutoTokenizer.from_pretrained``.
    """

    def __init__(self, name: str | os.PathLike, seq_len: int | None = None,
                 clean: str | None = None, **kwargs: Any) -> None:
        if clean not in CLEAN_MODES:
            raise ValueError(f"unknown clean mode {clean!r}; choose one of {CLEAN_MODES}")
        if seq_len is not None and seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.name = str(name)
        self.seq_len = seq_len
        self.clean = clean
        self.tokenizer = load_local_tokenizer(Path(name), "tokenizer", **kwargs)
        self.vocab_size = self.tokenizer.vocab_size

    def __call__(self, sequence: str | list[str], **kwargs: Any
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[B, L]``; with ``return_mask=True`` also the attention mask ``[B, L]``.

        Other keyword arguments go to the Hugging Face tokenizer call and override
        the defaults (``return_tensors='pt'`` and, with ``seq_len``, padding to it).
        """
        return_mask = kwargs.pop("return_mask", False)
        texts = [sequence] if isinstance(sequence, str) else list(sequence)
        texts = [self._clean(t) for t in texts]
        encoded = self.tokenizer(texts, **{**self._call_defaults(), **kwargs})
        if return_mask:
            return encoded.input_ids, encoded.attention_mask
        return encoded.input_ids

    def _call_defaults(self) -> dict[str, Any]:
        defaults: dict[str, Any] = {"return_tensors": "pt"}
        if self.seq_len is not None:
            defaults.update(padding="max_length", truncation=True, max_length=self.seq_len)
        return defaults

    def _clean(self, text: str) -> str:
        return clean_text(text, self.clean)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, seq_len={self.seq_len}, "
                f"clean={self.clean!r}, vocab_size={self.vocab_size})")
