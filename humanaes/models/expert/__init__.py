"""HumanAesExpert (InternVL2 + regression head, expert head, MetaVoter): config, modeling,
conversion of the official layout, checkpoints, tokenization, prompts, tiling, scorer."""
