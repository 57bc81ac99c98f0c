"""Reference implementation of the OFFICIAL HumanAesExpert inference flow, for comparison.

Written from the project's reference description (docs: shared/reference/humanaesexpert.md,
sections 2, 2.2 and 5), not copied from the official code. It reproduces how the official
release spends time, on OUR model modules (so both sides use the very same weights):

- preprocessing per image with PIL: open + convert('RGB'), pick the grid, one bicubic resize of
  the whole image, crop every tile as a separate PIL image, append a bicubic thumbnail, then
  convert each tile on its own (resize-to-448 no-op, to tensor, /255, normalise) and stack;
- one image per call (batch size 1), float32 on CPU (the release runs fp16 on CUDA only);
- the prompt is the whole chat string with 256 x tiles `<IMG_CONTEXT>` tokens, tokenised as one
  string; the embeddings at those slots are replaced by the projected vision tokens;
- `score`: one FULL forward pass (vision encoder + projector + the causal LM with its vocabulary
  head over every position and hidden states returned, as a transformers 4.44 forward does),
  heads read the final hidden states;
- `run_metavoter`: two such full passes, general question and expert question, each running the
  vision encoder again; LM + regression scores from the first, the expert overall from the
  second, fused by the MetaVoter.

Scores follow the project's documented choices (section 2.1): LM score = weighted softmax over the
five level words' first tokens after the answer prefix; the regression head reads the hidden state
of the last prompt token (right before the answer prefix); the expert head reads the last token of
the expert prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from humanaes.models.expert.prompts import ANSWER_PREFIX, get_template
from humanaes.schema import LEVELS, OVERALL

TILE = 448
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# Preprocessing, official style (per-tile PIL work and per-tile tensor conversion)
# ---------------------------------------------------------------------------------------------


def closest_grid(width: int, height: int, min_num: int, max_num: int, size: int = TILE) -> tuple[int, int]:
    """Grid (cols, rows) whose aspect ratio is closest to the image's; on an exact tie a larger
    grid wins when the image area exceeds half of the grid's pixel area (reference section 5)."""
    ratios = sorted(
        {(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1) if min_num <= i * j <= max_num},
        key=lambda r: (r[0] * r[1], -r[0]),
    )
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in ratios:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * size * size * cols * rows:
            best = (cols, rows)
    return best


def dynamic_tiles(image: Image.Image, max_num: int = 12, min_num: int = 1, size: int = TILE, use_thumbnail: bool = True) -> list[Image.Image]:
    cols, rows = closest_grid(image.width, image.height, min_num, max_num, size)
    resized = image.resize((size * cols, size * rows), Image.Resampling.BICUBIC)
    tiles = []
    for i in range(cols * rows):
        x, y = (i % cols) * size, (i // cols) * size
        tiles.append(resized.crop((x, y, x + size, y + size)))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((size, size), Image.Resampling.BICUBIC))
    return tiles


_MEAN_T = torch.tensor(MEAN).view(3, 1, 1)
_STD_T = torch.tensor(STD).view(3, 1, 1)


def tile_to_tensor(tile: Image.Image, size: int = TILE) -> torch.Tensor:
    """One tile -> normalised float tensor [3, size, size] (RGB, resize, to tensor, normalise)."""
    if tile.mode != "RGB":
        tile = tile.convert("RGB")
    tile = tile.resize((size, size), Image.Resampling.BICUBIC)  # a copy when already 448x448
    x = torch.from_numpy(np.array(tile, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    x = x.to(torch.float32).div(255)
    return x.sub_(_MEAN_T).div_(_STD_T)


def load_image(path: Any, max_num: int = 12, min_num: int = 1, use_thumbnail: bool = True) -> torch.Tensor:
    """Path -> pixel values [N, 3, 448, 448] float32, the official way."""
    image = Image.open(path).convert("RGB")
    tiles = dynamic_tiles(image, max_num=max_num, min_num=min_num, use_thumbnail=use_thumbnail)
    return torch.stack([tile_to_tensor(t) for t in tiles])


# ---------------------------------------------------------------------------------------------
# Model flow, official style
# ---------------------------------------------------------------------------------------------


def pixel_shuffle(x: torch.Tensor) -> torch.Tensor:
    """[T, H, W, C] -> [T, H*W/4, 4C]; token (i, j) = concat of x[2i+m, 2j+k] in (m, k) order."""
    t, h, w, c = x.shape
    blocks = [x[:, m::2, k::2] for m in (0, 1) for k in (0, 1)]
    return torch.cat(blocks, dim=-1).reshape(t, (h // 2) * (w // 2), 4 * c)


@dataclass
class ReferenceResult:
    lm_score: float | None = None
    level_probs: dict[str, float] | None = None
    regression_score: float | None = None
    expert: list[float] | None = None
    metavoter_score: float | None = None


class OfficialFlow:
    """The official one-image-per-call inference flow, run on a HumanAesExpertModel's modules."""

    def __init__(self, model: Any, tokenizer: Any, general_question: str, expert_question: str):
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.template = get_template(self.config.template)
        self.general_question = general_question
        self.expert_question = expert_question
        self.img_context_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
        self.tokens_per_tile = self.config.tokens_per_tile
        base = tokenizer(ANSWER_PREFIX, add_special_tokens=False).input_ids
        firsts = []
        for level in LEVELS:
            ids = tokenizer(f"{ANSWER_PREFIX} {level}", add_special_tokens=False).input_ids
            n = 0
            while n < min(len(base), len(ids)) and base[n] == ids[n]:
                n += 1
            firsts.append(ids[n])
        self.level_ids = torch.tensor(firsts)

    # -- prompt -----------------------------------------------------------------------------
    def prompt(self, question: str, num_tiles: int) -> str:
        block = "<img>" + "<IMG_CONTEXT>" * (self.tokens_per_tile * num_tiles) + "</img>" + self.config.image_block_suffix
        system_message = self.config.system_message if self.config.system_message is not None else self.template.system_message
        system = self.template.system_template.format(system_message=system_message)
        user = f"{block}\n{question}"
        return f"{system}{self.template.separator}{self.template.user_start}{user}{self.template.separator}{self.template.assistant_start}"

    # -- one full forward -------------------------------------------------------------------
    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m = self.model
        vit = m.vision_model(pixel_values=pixel_values.to(device=m.device, dtype=m.dtype)).last_hidden_state[:, 1:]
        t, n, c = vit.shape
        side = int(round(n**0.5))
        p = m.projector
        x = pixel_shuffle(vit.reshape(t, side, side, c))
        return p.linear_2(p.act(p.linear_1(p.layer_norm(x))))

    def forward(self, pixel_values: torch.Tensor, question: str, answer_prefix: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Full pass: returns (logits [L, V], final hidden states [L, d], pool index)."""
        m = self.model
        prompt = self.prompt(question, pixel_values.shape[0])
        pool = len(self.tokenizer(prompt).input_ids) - 1 if answer_prefix else None
        text = prompt + ANSWER_PREFIX if answer_prefix else prompt
        input_ids = self.tokenizer(text, return_tensors="pt").input_ids.to(m.device)
        if pool is None:
            pool = input_ids.shape[1] - 1
        vit_embeds = self.extract_feature(pixel_values)
        embeds = m.language_model.get_input_embeddings()(input_ids)
        b, n, d = embeds.shape
        flat = embeds.reshape(b * n, d)
        selected = input_ids.reshape(b * n) == self.img_context_id
        flat[selected] = vit_embeds.reshape(-1, d).to(flat.dtype)
        embeds = flat.reshape(b, n, d)
        out = m.language_model(
            inputs_embeds=embeds,
            attention_mask=torch.ones_like(input_ids),
            output_hidden_states=True,
            return_dict=True,
        )
        return out.logits[0], out.hidden_states[-1][0], pool

    # -- official entry points ----------------------------------------------------------------
    @torch.inference_mode()
    def score(self, pixel_values: torch.Tensor) -> ReferenceResult:
        logits, hidden, pool = self.forward(pixel_values, self.general_question, answer_prefix=True)
        level_logits = logits[-1].float().index_select(-1, self.level_ids.to(logits.device))
        probs = torch.softmax(level_logits, dim=-1)
        weights = torch.tensor([self.config.level_weights[lv] for lv in LEVELS], device=probs.device)
        res = ReferenceResult(lm_score=float(probs @ weights), level_probs={lv: float(p) for lv, p in zip(LEVELS, probs)})
        head = self.model.regression_head
        if head is not None:
            res.regression_score = float(head(hidden[pool : pool + 1].to(head.linear.weight.dtype))[0])
        return res

    @torch.inference_mode()
    def expert_score(self, pixel_values: torch.Tensor) -> list[float]:
        _, hidden, _ = self.forward(pixel_values, self.expert_question, answer_prefix=False)
        head = self.model.expert_head
        return head(hidden[-1:].to(head.expert_head1.weight.dtype))[0].tolist()

    @torch.inference_mode()
    def run_metavoter(self, pixel_values: torch.Tensor) -> ReferenceResult:
        res = self.score(pixel_values)
        res.expert = self.expert_score(pixel_values)
        overall = res.expert[OVERALL]
        scores = torch.tensor([[res.lm_score, res.regression_score, overall]], dtype=torch.float32, device=self.model.device)
        res.metavoter_score = float(self.model.metavoter(scores)[0])
        return res
