"""Character-level text that is on every machine: the Python standard library's own source.

The corpus is the concatenation of the sorted ``*.py`` files directly inside
``sysconfig.get_paths()["stdlib"]`` (found at run time, no download), cut to a fixed character
budget. Characters map to a fixed vocabulary — newline and printable ASCII (``' '`` … ``'~'``)
plus one unknown token for anything else — so the vocabulary does not depend on the text.
The first ``1 − test_fraction`` of the characters are the training text, the rest the held-out
text (a fixed split: no file position is in both). Next-character prediction pairs
``x = c[i : i+T]``, ``y = c[i+1 : i+T+1]``.
"""
from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["VOCAB", "UNKNOWN", "TextSplit", "stdlib_files", "stdlib_text", "encode", "decode", "windows",
           "stdlib_split", "CorpusError"]

#: The fixed vocabulary: newline and printable ASCII; index ``len(VOCAB)`` is the unknown token.
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = len(VOCAB)
_INDEX = {ch: i for i, ch in enumerate(VOCAB)}


class CorpusError(RuntimeError):
    """The standard library's source cannot be found or is shorter than the budget asks."""


def encode(text: str) -> torch.Tensor:
    """Characters → token ids (``int64``); characters outside :data:`VOCAB` → :data:`UNKNOWN`."""
    return torch.tensor([_INDEX.get(ch, UNKNOWN) for ch in text], dtype=torch.long)


def decode(ids) -> str:
    """Token ids → text (the unknown token reads as ``'?'``)."""
    return "".join(VOCAB[i] if i < UNKNOWN else "?" for i in (int(t) for t in ids))


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The sorted ``*.py`` files directly inside the standard library folder (or ``root``)."""
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise CorpusError(f"no *.py files in {str(root)!r} (the Python standard library's source is not installed?)")
    return files


def stdlib_text(chars: int, root: str | Path | None = None) -> str:
    """The first ``chars`` characters of the sorted standard-library sources joined end to end."""
    if chars < 1:
        raise ValueError(f"chars must be positive, got {chars}")
    parts, total = [], 0
    for path in stdlib_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text[:chars - total])
        total += len(parts[-1])
        if total >= chars:
            return "".join(parts)
    raise CorpusError(f"the standard library's *.py files hold {total} characters, fewer than the {chars} asked")


def windows(ids: torch.Tensor, context: int, stride: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token pairs ``(x, y)`` of shape ``(n, context)`` from windows of ``context + 1`` ids
    starting every ``stride`` (default ``context``: non-overlapping inputs)."""
    stride = stride or context
    if len(ids) < context + 1:
        raise ValueError(f"{len(ids)} tokens cannot fill one window of {context + 1}")
    starts = torch.arange(0, len(ids) - context, stride)
    w = ids[starts[:, None] + torch.arange(context + 1)]
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


@dataclass(frozen=True)
class TextSplit:
    """Token ids of the training and held-out text, and their ``(x, y)`` windows."""
    train_ids: torch.Tensor
    test_ids: torch.Tensor
    context: int
    vocab_size: int = UNKNOWN + 1

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-overlapping training windows."""
        return windows(self.train_ids, self.context)

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-overlapping held-out windows (every held-out character is predicted once)."""
        return windows(self.test_ids, self.context)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` training windows at random offsets (seeded by ``generator``)."""
        starts = torch.randint(0, len(self.train_ids) - self.context, (batch,), generator=generator)
        w = self.train_ids[starts[:, None] + torch.arange(self.context + 1)]
        return w[:, :-1], w[:, 1:]


def stdlib_split(chars: int = 200_000, context: int = 64, test_fraction: float = 0.1,
                 root: str | Path | None = None) -> TextSplit:
    """The standard library's first ``chars`` characters, the last ``test_fraction`` held out."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    ids = encode(stdlib_text(chars, root))
    cut = int(round(len(ids) * (1.0 - test_fraction)))
    for name, part in (("training", ids[:cut]), ("held-out", ids[cut:])):
        if len(part) < context + 1:
            raise ValueError(f"the {name} text has {len(part)} characters, fewer than context + 1 = {context + 1}")
    return TextSplit(ids[:cut], ids[cut:], context)

