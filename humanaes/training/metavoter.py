"""Stage 2: fit the MetaVoter on frozen head scores (reference 2.1 and 7).

The frozen model scores held-out training rows in metavoter mode (one vision pass, both
questions); the MetaVoter learns to map (LM score, regression score, expert overall) to the
labelled overall score. Its fit metrics (each head alone vs the MetaVoter, on a validation part
of those rows) are stored in the checkpoint's config.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import torch

from humanaes.errors import HumanAesError
from humanaes.evaluation.metrics import compute_metrics
from humanaes.models.heads import MetaVoter

#: Columns of the MetaVoter's input X, in order (what `collect_head_scores` stacks per row).
METAVOTER_INPUT_HEADS = ("lm", "regression", "expert")


def collect_head_scores(scorer: Any, samples: list[Any], batch_size: int = 8, max_tiles: int | None = None,
                        progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Run the frozen model once over `samples`; returns X [n, 3] (lm, regression, expert
    overall), y [n] and the messages of rows that failed (skipped)."""
    if "metavoter" not in scorer.supported_modes:
        raise HumanAesError(f"model {scorer.name!r} lacks the regression or expert head; a MetaVoter needs all three heads")
    options = {"max_tiles": max_tiles} if max_tiles else {}
    results = scorer.iter_score([str(s.image) for s in samples], mode="metavoter", batch_size=batch_size, **options)
    if progress:
        from tqdm.auto import tqdm

        results = tqdm(results, total=len(samples), desc="head scores")
    rows, targets, failed = [], [], []
    for sample, r in zip(samples, results):
        if r.error is not None:
            failed.append(r.error)
            continue
        rows.append([r.lm_score, r.regression_score, r.expert["Comprehensive Aesthetic Score"]])
        targets.append(float(sample.score))
    if len(rows) < 4:
        raise HumanAesError(f"only {len(rows)} usable rows to fit the MetaVoter; give it at least a few dozen")
    return torch.tensor(rows, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32), failed


def _train(voter: MetaVoter, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, weight_decay: float) -> None:
    optimizer = torch.optim.AdamW(voter.net.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        pred = torch.sigmoid(voter.net(x).squeeze(-1))
        loss = torch.mean((pred - y) ** 2)
        loss.backward()
        optimizer.step()


def _metrics(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    m = compute_metrics(pred.tolist(), y.tolist())
    return {k: float(m[k]) for k in ("plcc", "srcc", "krcc", "rmse", "mae", "accuracy")}


def fit_metavoter(
    voter: MetaVoter, x: torch.Tensor, y: torch.Tensor, *, steps: int = 2000, lr: float = 0.01,
    weight_decay: float = 1e-4, val_fraction: float = 0.2, seed: int = 0,
) -> dict[str, Any]:
    """Fit in place. Metrics compare each head with the MetaVoter on a validation part (fitted on
    the rest); the final MetaVoter is then refitted on all rows."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        order = list(range(len(y)))
        random.Random(seed).shuffle(order)
        n_val = max(2, int(round(len(y) * val_fraction))) if len(y) >= 10 else 0
        report: dict[str, Any] = {"rows": int(len(y)), "validation_rows": n_val}
        if n_val:
            val, fit = torch.tensor(order[:n_val]), torch.tensor(order[n_val:])
            probe = copy.deepcopy(voter)
            _train(probe, x[fit], y[fit], steps, lr, weight_decay)
            with torch.no_grad():
                pred = torch.sigmoid(probe.net(x[val]).squeeze(-1))
            report["validation"] = {"metavoter": _metrics(pred, y[val]),
                                    **{h: _metrics(x[val, i], y[val]) for i, h in enumerate(METAVOTER_INPUT_HEADS)},
                                    "mean_of_heads": _metrics(x[val].mean(-1), y[val])}
        _train(voter, x, y, steps, lr, weight_decay)
        voter.fitted.fill_(True)
        with torch.no_grad():
            report["train"] = _metrics(torch.sigmoid(voter.net(x).squeeze(-1)), y)
        return report
    finally:
        torch.random.set_rng_state(generator_state)


def train_metavoter(model: str | Path, data: str | Path, out: str | Path, *, split: str = "train",
                    batch_size: int = 8, max_tiles: int | None = None, steps: int = 2000, seed: int = 0,
                    device: str = "auto", progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Load `model`, score `data` (held-out training rows), fit, save in our format to `out`."""
    from humanaes.data import load_samples
    from humanaes.models.expert.checkpoint import save_humanaes
    from humanaes.models.registry import load

    samples = load_samples(data, split)
    scorer = load(model, device=device, dtype="float32")
    if not hasattr(scorer, "model"):
        raise HumanAesError(f"{model!r} is not a HumanAesExpert model; the MetaVoter stage needs one")
    x, y, failed = collect_head_scores(scorer, samples, batch_size, max_tiles, progress)
    voter = scorer.model.metavoter
    voter.float()
    report = fit_metavoter(voter, x, y, steps=steps, seed=seed)
    report["failed_rows"] = failed
    config = scorer.model.config
    config.metavoter.fitted = True
    config.metavoter.fit_metrics = report
    path = save_humanaes(scorer.model, out, tokenizer=scorer.tokenizer)
    return path, report
