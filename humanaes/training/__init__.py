"""Training-only code: `humanaes train`, fine-tuning, MetaVoter fitting, synthetic data.

The generic trainer is `trainer` (public entry) over `config`, `engine`, `checkpoints` and `loop`;
`finetune` and `metavoter` are HumanAesExpert's two stages; `synthetic` makes proof data sets.
Nothing in the runtime (`import humanaes`, scoring, serving) imports this package
(tests/test_startup.py checks it)."""
