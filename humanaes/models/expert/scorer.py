"""HumanAesExpert scoring: batched, one vision pass per image, shared prompt prefix.

Modes (reference 2.2):
  fast       general question + answer prefix, one pass: LM score, level probabilities,
             regression score; overall = regression score (LM score without a regression head)
  expert     expert question: twelve expert-head scores; overall = Comprehensive
  metavoter  both questions continue from one cached prefix (system + image block): LM,
             regression and expert scores fused by the MetaVoter; overall = MetaVoter score
  annotate   expert scores + the LM-written twelve-line annotation (transformers' generate():
             greedy by default, sampled with do_sample; see models/expert/generation.py)
  all        metavoter + annotate

Batches mix images with different tile counts: tiles are concatenated and counted per image,
prompts are left-padded, position ids follow the attention mask, so results do not depend on
batch size or order.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from humanaes.errors import HumanAesError
from humanaes.models.expert import processing as preprocessing
from humanaes.models.expert.batching import left_pad, positions_from_mask  # noqa: F401 - also importable from here, as before
from humanaes.models.expert.config import HumanAesConfig
from humanaes.models.expert.generation import Decoding, generate_tokens
from humanaes.models.expert.modeling import HumanAesExpertModel
from humanaes.models.expert.options import DEFAULT_MAX_NEW_TOKENS, SAMPLING_OPTIONS, ExpertOptions  # noqa: F401 - importable from here too
from humanaes.models.expert.prompts import (
    DEFAULT_EXPERT_QUESTION,
    DEFAULT_GENERAL_QUESTION,
    PromptIds,
    PromptTokenizer,
    common_prefix_length,
    get_template,
)
from humanaes.schema import DIMENSIONS, LEVELS, OVERALL, ScoreResult
from humanaes.scorer import BaseScorer


class HumanAesScorer(BaseScorer):
    """Scores images with a HumanAesExpert model (official weights, converted, or our own)."""

    options_class = ExpertOptions

    def __init__(
        self,
        model: HumanAesExpertModel,
        tokenizer: Any,
        *,
        name: str | None = None,
        apply_exif: bool = True,
        general_question: str = DEFAULT_GENERAL_QUESTION,
        expert_question: str = DEFAULT_EXPERT_QUESTION,
        description: str = "",
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config: HumanAesConfig = model.config
        self.name = name or self.config.name
        self.apply_exif = apply_exif
        self.general_question = general_question
        self.expert_question = expert_question
        self.description = description or self.config.description
        self.template = get_template(self.config.template)
        self.prompts = PromptTokenizer(tokenizer, self.template, self.config.system_message, self.config.image_block_suffix)
        self.img_context_id = self.prompts.img_context_id
        self.pad_id = self.prompts.pad_id
        self.stop_id = self.prompts.stop_id
        self.level_token_ids = torch.tensor(self.prompts.level_first_tokens())
        modes = ["fast", "annotate"]
        if model.expert_head is not None:
            modes.insert(1, "expert")
        if model.expert_head is not None and model.regression_head is not None:
            modes.insert(2, "metavoter")
        modes.append("all")
        self.supported_modes = tuple(modes)
        self.default_mode = "metavoter" if "metavoter" in modes else "fast"

    def prompt_ids(self, question: str, answer_prefix: bool) -> PromptIds:
        return self.prompts.prompt(question, answer_prefix)

    # -- BaseScorer hooks ------------------------------------------------------------------
    def preprocessor(self) -> preprocessing.TilePreprocessor | None:
        """The tiling settings of this model's config (None when a subclass brings its own
        `decode` / `prepare`: those run with the scorer)."""
        if not self._hooks_are_from(HumanAesScorer):
            return None
        return preprocessing.TilePreprocessor.from_config(self.config)

    def prepare(self, image: Image.Image, max_tiles: int | None = None, **_: Any) -> torch.Tensor:
        return preprocessing.TilePreprocessor.from_config(self.config).prepare(image, max_tiles)

    @torch.inference_mode()
    def score_prepared(self, prepared: list[torch.Tensor], names: list[str], mode: str, **options: Any) -> list[ScoreResult]:
        model = self.model
        counts = [t.shape[0] for t in prepared]
        features = model.extract_image_features(torch.cat(prepared))
        per_image = list(features.split(counts))
        n_tokens = [f.shape[0] * f.shape[1] for f in per_image]
        results = [ScoreResult(image=name) for name in names]

        if mode == "fast":
            self._general_full(per_image, n_tokens, results)
        elif mode in ("metavoter", "all") and "metavoter" in self.supported_modes:
            self._general_and_expert_shared(per_image, n_tokens, results)
        elif mode == "all":
            self._general_full(per_image, n_tokens, results)
        if mode == "expert":
            self._expert_full(per_image, n_tokens, results)
        if mode in ("annotate", "all"):
            self._annotate(per_image, n_tokens, results, self.options_class(**options).decoding())
        for r in results:
            r.finalize(self._overall(r, mode))
        return results

    def _overall(self, r: ScoreResult, mode: str) -> float | None:
        expert_overall = r.expert[DIMENSIONS[OVERALL]] if r.expert else None
        if mode == "fast":
            return r.regression_score if r.regression_score is not None else r.lm_score
        if mode in ("expert", "annotate"):
            return expert_overall
        # metavoter / all
        for value in (r.metavoter_score, r.regression_score, r.lm_score):
            if value is not None:
                return value
        return None

    # -- passes ------------------------------------------------------------------------------
    def _build_batch(self, question: str, answer: bool, n_tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        prompt = self.prompt_ids(question, answer)
        rows, pools = zip(*(prompt.expand(n, self.img_context_id) for n in n_tokens))
        ids, mask = left_pad(list(rows), self.pad_id, self.model.device)
        width = ids.shape[1]
        pools_padded = [width - len(row) + p for row, p in zip(rows, pools)]
        return ids, mask, pools_padded

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, features: list[torch.Tensor], use_cache: bool = False):
        embeds = self.model.embed(ids, torch.cat(features), self.img_context_id)
        return self.model.run_llm(embeds, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=use_cache)

    def _fill_general(self, results: list[ScoreResult], last_hidden: torch.Tensor, pooled: torch.Tensor) -> None:
        probs, lm = self.model.level_scores(self.model.lm_logits(last_hidden), self.level_token_ids)
        regression = self.model.regression(pooled)
        for i, r in enumerate(results):
            r.lm_score = float(lm[i])
            r.level_probs = {level: float(p) for level, p in zip(LEVELS, probs[i])}
            if regression is not None:
                r.regression_score = float(regression[i])

    def _fill_expert(self, results: list[ScoreResult], pooled: torch.Tensor) -> None:
        expert = self.model.expert(pooled)
        if expert is None:
            return
        for i, r in enumerate(results):
            r.set_expert(expert[i].tolist())

    def _general_full(self, features: list[torch.Tensor], n_tokens: list[int], results: list[ScoreResult]) -> None:
        ids, mask, pools = self._build_batch(self.general_question, True, n_tokens)
        hidden = self._forward(ids, mask, features).hidden_states
        rows = torch.arange(len(results), device=hidden.device)
        self._fill_general(results, hidden[:, -1], hidden[rows, torch.tensor(pools, device=hidden.device)])

    def _expert_full(self, features: list[torch.Tensor], n_tokens: list[int], results: list[ScoreResult]) -> None:
        ids, mask, _ = self._build_batch(self.expert_question, False, n_tokens)
        hidden = self._forward(ids, mask, features).hidden_states
        self._fill_expert(results, hidden[:, -1])

    def _general_and_expert_shared(self, features: list[torch.Tensor], n_tokens: list[int], results: list[ScoreResult]) -> None:
        """MetaVoter in one pass of the image: the prefix (system + image block) is computed
        once, then the general and expert questions continue from its KV cache together."""
        general = self.prompt_ids(self.general_question, True)
        expert = self.prompt_ids(self.expert_question, False)
        shared = common_prefix_length(general.ids, expert.ids)
        if shared <= general.image_slot:
            raise HumanAesError("the two prompts do not share the image block; cannot reuse the prefix")
        device = self.model.device
        prefix_rows = [general.expand(n, self.img_context_id)[0][: shared + n - 1] for n in n_tokens]
        ids, mask = left_pad(prefix_rows, self.pad_id, device)
        out = self._forward(ids, mask, features, use_cache=True)
        prefix_len = mask.sum(-1)  # real tokens per row

        g_suffix, e_suffix = general.ids[shared:], expert.ids[shared:]
        width = max(len(g_suffix), len(e_suffix))
        suffix = torch.full((2, width), self.pad_id, dtype=torch.long)
        suffix_mask = torch.zeros((2, width), dtype=torch.long)
        for row, seq in enumerate((g_suffix, e_suffix)):
            suffix[row, : len(seq)] = torch.tensor(seq)
            suffix_mask[row, : len(seq)] = 1
        b = len(results)
        # rows: [img0-general, img0-expert, img1-general, ...]
        suffix = suffix.repeat(b, 1).to(device)
        suffix_mask = suffix_mask.repeat(b, 1).to(device)
        cache = out.cache
        cache.batch_repeat_interleave(2)
        full_mask = torch.cat([mask.repeat_interleave(2, dim=0), suffix_mask], dim=1)
        offset = prefix_len.repeat_interleave(2)
        pos = torch.arange(width, device=device).unsqueeze(0) + offset.unsqueeze(1)
        embeds = self.model.embed(suffix, None, self.img_context_id)
        hidden = self.model.run_llm(embeds, attention_mask=full_mask, position_ids=pos, cache=cache, use_cache=True).hidden_states
        g_rows, e_rows = hidden[0::2], hidden[1::2]
        g_pool = general.pool_index - shared
        self._fill_general(results, g_rows[:, len(g_suffix) - 1], g_rows[:, g_pool])
        self._fill_expert(results, e_rows[:, len(e_suffix) - 1])
        lm = torch.tensor([r.lm_score for r in results])
        reg = torch.tensor([r.regression_score for r in results])
        exp = torch.tensor([r.expert[DIMENSIONS[OVERALL]] for r in results])
        vote = self.model.vote(lm, reg, exp)
        fitted = bool(self.model.metavoter.fitted)
        for i, r in enumerate(results):
            r.metavoter_score = float(vote[i])
            r.extra["metavoter_fitted"] = fitted

    def _annotate(self, features: list[torch.Tensor], n_tokens: list[int], results: list[ScoreResult], decoding: Decoding) -> None:
        ids, mask, _ = self._build_batch(self.expert_question, False, n_tokens)
        embeds = self.model.embed(ids, torch.cat(features), self.img_context_id)
        prompt = self.model.run_llm(embeds, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=True)
        if not any(r.expert for r in results):
            # the expert head reads this prompt's last token: one pass gives both
            self._fill_expert(results, prompt.hidden_states[:, -1])
        tokens = self.generate(embeds, mask, decoding, prompt_cache=prompt.cache)
        for r, seq in zip(results, tokens):
            r.annotation = self.tokenizer.decode(seq, skip_special_tokens=True).strip()

    def generate(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        decoding: Decoding,
        prompt_cache: Any = None,
    ) -> list[list[int]]:
        """Continue left-padded prompts with transformers' `generate()` (see
        humanaes.models.expert.generation; position ids follow `attention_mask`): the new token
        ids per row, up to the chat template's stop token.

        `prompt_cache`: the KV cache of a pass over the whole prompt (`run_llm(..., use_cache=True)`);
        its last token is dropped here, so `generate()` recomputes that one token, not the prompt."""
        if prompt_cache is not None:
            prompt_cache.crop(-1)  # a negative count: remove that many tokens (older releases read it alike)
        return generate_tokens(
            self.model.language_model, inputs_embeds, attention_mask, decoding,
            stop_id=self.stop_id, pad_id=self.pad_id, prompt_cache=prompt_cache, cache_kwarg=self.model.cache_kwarg,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "humanaesexpert",
            "modes": list(self.supported_modes),
            "description": self.description,
            "score_meaning": self.config.score_meaning,
            "metavoter_fitted": bool(self.model.metavoter.fitted),
        }
