"""The heads of reference section 2.1, shared by both model families: regression head, expert
head and MetaVoter.

HumanAesExpert feeds them one pooled hidden state of the LLM (the last prompt token);
humanaes-mini feeds them its CNN's pooled feature. Shapes follow the reference's choices; the
official checkpoint's tensors are mapped onto these by name and shape
(`humanaes.models.expert.convert`), and humanaes-mini files written before the heads were shared
are renamed on load (`humanaes.models.mini.weights.LEGACY_HEAD_KEYS`).
"""

from __future__ import annotations

import torch
from torch import nn

from humanaes.schema import (
    APPEARANCE_LEAVES,
    APPEARANCE_PARENT,
    ENVIRONMENT,
    FACE_LEAVES,
    FACE_PARENT,
    LEAVES,
    NUM_DIMENSIONS,
    OVERALL,
)

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class RegressionHead(nn.Module):
    """`lm_regression_head`: Linear(d, 1) then a sigmoid -> overall score in [0, 1]."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(pooled).squeeze(-1))


class ParentNet(nn.Module):
    """FFN(n -> h -> 1): a parent dimension from its children's pre-sigmoid values."""

    def __init__(self, num_children: int, hidden: int, activation: str = "gelu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(_ACTIVATIONS)}")
        self.fc1 = nn.Linear(num_children, hidden)
        self.act = _ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, children: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(children))).squeeze(-1)


class ExpertHead(nn.Module):
    """Twelve dimension scores as a tree: nine leaves from the pooled input, three parents.

    expert_head1: Linear(d, 9) for the leaves (reference order of LEAVES);
    expert_head2: Facial Aesthetic over the five facial leaves;
    expert_head3: General Appearance over Outfit, Body Shape, Looks;
    expert_head4: Comprehensive over Facial Aesthetic, General Appearance, Environment.
    Parents read pre-sigmoid values; one sigmoid over the assembled twelve, in DIMENSIONS order
    (reference section 3).
    """

    def __init__(self, hidden_size: int, parent_hidden: int = 16, activation: str = "gelu"):
        super().__init__()
        self.expert_head1 = nn.Linear(hidden_size, len(LEAVES))
        self.expert_head2 = ParentNet(len(FACE_LEAVES), parent_hidden, activation)
        self.expert_head3 = ParentNet(len(APPEARANCE_LEAVES), parent_hidden, activation)
        self.expert_head4 = ParentNet(3, parent_hidden, activation)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        leaves = self.expert_head1(pooled)  # [B, 9] in LEAVES order
        by_index = dict(zip(LEAVES, leaves.unbind(dim=1)))
        by_index[FACE_PARENT] = self.expert_head2(leaves[:, : len(FACE_LEAVES)])
        by_index[APPEARANCE_PARENT] = self.expert_head3(torch.stack([by_index[i] for i in APPEARANCE_LEAVES], dim=1))
        by_index[OVERALL] = self.expert_head4(
            torch.stack([by_index[FACE_PARENT], by_index[APPEARANCE_PARENT], by_index[ENVIRONMENT]], dim=1)
        )
        return torch.sigmoid(torch.stack([by_index[i] for i in range(NUM_DIMENSIONS)], dim=1))


class MetaVoter(nn.Module):
    """Fuses the heads' scores into the final score: a small MLP (or a linear layer) + sigmoid.

    HumanAesExpert fuses three inputs, (LM score, regression score, expert overall); humanaes-mini
    has no language model and fuses two, (regression score, expert overall). Until it is fitted
    the MetaVoter returns the plain mean of its inputs, so an official checkpoint without
    MetaVoter weights still gives a sensible, documented score.

    `fitted` says where "fitted" is decided. None (HumanAesExpert): it is part of the weights, a
    `fitted` buffer in the state dict, False until `fit_metavoter` sets it. True/False
    (humanaes-mini): the owner's config decides (its list of trained heads) and the buffer stays
    out of the state dict, so the checkpoint cannot contradict the config.
    """

    def __init__(self, kind: str = "mlp", hidden: int = 16, *, num_inputs: int = 3, fitted: bool | None = None):
        super().__init__()
        if kind not in ("mlp", "linear"):
            raise ValueError(f"unknown MetaVoter kind {kind!r}; choose 'mlp' or 'linear'")
        self.kind = kind
        self.num_inputs = num_inputs
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(num_inputs, hidden), nn.GELU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Sequential(nn.Linear(num_inputs, 1))
        self.register_buffer("fitted", torch.tensor(bool(fitted), dtype=torch.bool), persistent=fitted is None)

    def forward(self, head_scores: torch.Tensor) -> torch.Tensor:
        """head_scores: [B, num_inputs], each in [0, 1], in the order given in the class docstring."""
        if head_scores.shape[-1] != self.num_inputs:
            raise ValueError(f"the MetaVoter fuses {self.num_inputs} scores, got {head_scores.shape[-1]}")
        if not bool(self.fitted):
            return head_scores.mean(dim=-1)
        return torch.sigmoid(self.net(head_scores.to(self.net[0].weight.dtype)).squeeze(-1))
