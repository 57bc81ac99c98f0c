"""Batches of prompts of different lengths, shared by scoring and fine-tuning.

Prompts are left-padded so every row's last token sits in the last column (the heads read it),
and position ids follow the attention mask so a padded row gets the positions it would have alone:
results do not depend on batch size or order.
"""

from __future__ import annotations

import torch


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return pos if offset is None else pos + offset.unsqueeze(-1)
