"""Training-only code: `humanaes train`, fine-tuning, MetaVoter fitting, synthetic data.

Nothing in the runtime (`import humanaes`, scoring, serving) imports this package."""
