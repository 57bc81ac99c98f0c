"""HumanAesExpert (InternVL2 + regression head, expert head, MetaVoter): config, modeling,
conversion of the official layout, checkpoints, tokenization, prompts, tiling, scorer.

Importing the package registers the family with the model registry (`family.py`, no torch)."""

from humanaes.models.expert import family  # noqa: F401 - registers the family
