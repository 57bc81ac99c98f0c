"""`AutoModel`, `AutoTokenizer` and `load_image` with the official release's signatures.

The official model class (InternVL2 remote code) offers four calls, one image per call
(reference section 2.2). Here they run on `HumanAesScorer`, so each returns exactly what
`humanaes.load(path).score(image, mode=...)` gives for the same tiles:

=============================================================  ===========  ==========================
official call                                                  scorer mode  returns (plain Python)
=============================================================  ===========  ==========================
`score(tokenizer, pixel_values, question)`                     fast         float: `overall`
`run_metavoter(tokenizer, pixel_values)`                       metavoter    float: `metavoter_score`
`expert_score(tokenizer, pixel_values)`                        expert       (list of 12 floats, str)
`expert_annotataion(tokenizer, pixel_values, generation_config)` annotate  str: the annotation
=============================================================  ===========  ==========================

`expert_annotation` is the correctly spelled name of the last one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from humanaes.errors import HumanAesError, ModelNotFoundError
from humanaes.io.images import ImageSource
from humanaes.io.images import load_image as decode_image
from humanaes.models.expert.processing import TILE_SIZE, preprocess_image
from humanaes.models.expert.prompts import DEFAULT_GENERAL_QUESTION, IMAGE_PLACEHOLDER, expert_answer
from humanaes.options import model_options
from humanaes.runtime import DTYPES
from humanaes.schema import DIMENSIONS, ScoreResult

#: Keyword arguments of `from_pretrained` that are accepted and have no effect here.
IGNORED_MODEL_KWARGS = ("low_cpu_mem_usage", "use_flash_attn", "trust_remote_code")
IGNORED_TOKENIZER_KWARGS = ("trust_remote_code", "use_fast")
#: generation_config keys of `expert_annotataion` that change the output and are honoured.
GENERATION_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p")
# Keys with no effect here: the stop token is the chat template's (as the official chat() sets
# it), and these only matter for other decoding strategies when they hold their neutral value.
_GENERATION_NO_EFFECT = ("eos_token_id", "pad_token_id", "bos_token_id", "use_cache", "transformers_version")
_GENERATION_NEUTRAL = {"num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0}


def load_image(image_file: ImageSource, input_size: int = TILE_SIZE, max_num: int = 12) -> torch.Tensor:
    """The official `load_image`: float32 tiles [N, 3, input_size, input_size].

    Decodes like the official code (no EXIF rotation, an alpha channel is dropped), tiles with
    InternVL2's dynamic grid (1..max_num tiles, plus a thumbnail when there is more than one)
    and normalises with ImageNet mean/std; bit-exact with the official function. An unreadable
    file raises `ImageLoadError` naming it.
    """
    image = decode_image(image_file, apply_exif=False, alpha="drop")
    return preprocess_image(image, max_tiles=max_num, tile_size=input_size)


def _check_kwargs(call: str, given: Mapping[str, Any], ignored: tuple[str, ...]) -> None:
    unknown = sorted(set(given) - set(ignored))
    if unknown:
        raise HumanAesError(
            f"{call}: unsupported argument(s) {', '.join(unknown)}; humanaes accepts "
            f"{', '.join(ignored)} (and ignores them) besides the ones in its signature"
        )


def _model_folder(name_or_path: str | os.PathLike) -> Path:
    """A local folder for a path or a Hugging Face repo id (the cache first, then a download)."""
    from humanaes.models.registry import _looks_like_hub_id, resolve_hub

    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if not path.exists() and _looks_like_hub_id(name):
        return resolve_hub(name)
    raise ModelNotFoundError(f"model {name!r} not found: pass the checkpoint folder or a Hugging Face repo id")


def _as_torch_dtype(torch_dtype: Any) -> torch.dtype | str:
    if torch_dtype is None:
        return torch.float32  # transformers' default: float32 whatever the checkpoint holds
    if isinstance(torch_dtype, torch.dtype) or torch_dtype == "auto":
        return torch_dtype
    key = str(torch_dtype).replace("torch.", "").lower()
    if key not in DTYPES:
        raise HumanAesError(f"torch_dtype {torch_dtype!r} is not supported; use torch.float32, torch.bfloat16 or torch.float16")
    return DTYPES[key]


_NO_CUDA_FP16 = (
    "float16 needs a CUDA GPU and none is available here; on CPU load with torch_dtype=torch.float32 "
    "(or torch.bfloat16) and drop .cuda() / .to(torch.float16)"
)


class AutoTokenizer:
    """`AutoTokenizer.from_pretrained(path, trust_remote_code=..., use_fast=...)`."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """The checkpoint's tokenizer, loaded without remote code.

        `trust_remote_code` and `use_fast` are ignored: a folder with `tokenizer.json` loads as a
        fast tokenizer (the same token ids as the official slow one), an InternLM2 folder with
        only `tokenizer.model` is converted from SentencePiece.
        """
        from humanaes.models.expert.checkpoint import detect_format
        from humanaes.models.expert.config import HumanAesConfig
        from humanaes.models.expert.tokenization import load_tokenizer

        _check_kwargs("AutoTokenizer.from_pretrained", kwargs, IGNORED_TOKENIZER_KWARGS)
        folder = _model_folder(pretrained_model_name_or_path)
        if detect_format(folder) == "humanaes":
            return load_tokenizer(HumanAesConfig.load(folder / "config.json").tokenizer_source(folder))
        return load_tokenizer(folder)


class AutoModel:
    """`AutoModel.from_pretrained(path, torch_dtype=..., low_cpu_mem_usage=..., use_flash_attn=...,
    trust_remote_code=...)` returning a `CompatModel`."""

    @staticmethod
    def from_pretrained(
        pretrained_model_name_or_path: str | os.PathLike, *, torch_dtype: Any = None, **kwargs: Any
    ) -> "CompatModel":
        """Load an official-layout (or humanaes-format) checkpoint into humanaes' native model.

        torch_dtype: None = float32 (as transformers), "auto" = humanaes' choice for the device,
        or torch.float32 / torch.bfloat16 / torch.float16. The model is placed on the CPU, like
        transformers does, and `.cuda()` moves it; float16 goes straight to the GPU instead
        (half precision does not run well on CPU), so the official `.cuda()` that follows is a
        no-op. `low_cpu_mem_usage`, `use_flash_attn` and `trust_remote_code` are accepted and
        ignored: loading always streams the weights into an empty model, attention uses PyTorch's
        SDPA kernels, and no code from the checkpoint is ever run.
        """
        from humanaes.models.expert.family import load_expert_model

        _check_kwargs("AutoModel.from_pretrained", kwargs, IGNORED_MODEL_KWARGS)
        dtype = _as_torch_dtype(torch_dtype)
        device = "cpu"
        if dtype == torch.float16:
            if not torch.cuda.is_available():
                raise HumanAesError(f"torch_dtype=torch.float16: {_NO_CUDA_FP16}")
            device = "cuda"
        model, _ = load_expert_model(pretrained_model_name_or_path, device=device, dtype=dtype)
        return CompatModel(model, name=Path(os.fspath(pretrained_model_name_or_path)).name)


class CompatModel:
    """A HumanAesExpertModel behind the official model's methods (see the module docstring).

    `eval()`, `cuda()`, `cpu()`, `to(...)`, `half()`, `bfloat16()` and `float()` return the model
    itself, so the official `from_pretrained(...).eval().cuda()` chain works. Every call scores
    one image: `pixel_values` is the [N, 3, 448, 448] tile tensor of `load_image` (any float
    dtype and device; it is moved to the model's).
    """

    def __init__(self, model: Any, name: str | None = None):
        self.model = model.eval()
        self.name = name or model.config.name
        self._scorers: dict[tuple[int, str], tuple[Any, Any]] = {}
        self._warned_unfitted = False

    # -- torch-style placement -----------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def eval(self) -> "CompatModel":
        self.model.eval()
        return self

    def cuda(self, device: int | str | torch.device | None = None) -> "CompatModel":
        target = torch.device("cuda" if device is None else (f"cuda:{device}" if isinstance(device, int) else device))
        return self.to(target)

    def cpu(self) -> "CompatModel":
        return self.to("cpu")

    def half(self) -> "CompatModel":
        return self.to(torch.float16)

    def bfloat16(self) -> "CompatModel":
        return self.to(torch.bfloat16)

    def float(self) -> "CompatModel":
        return self.to(torch.float32)

    def to(self, *args: Any, **kwargs: Any) -> "CompatModel":
        """`.to(device)`, `.to(dtype)`, `.to(device, dtype)` or `.to(tensor)`, like nn.Module."""
        device, dtype = _parse_to(args, kwargs)
        if device is not None and device.type == "cuda" and not torch.cuda.is_available():
            raise HumanAesError(
                "the model cannot move to CUDA: no CUDA GPU is available here; drop .cuda() and load with "
                "torch_dtype=torch.float32 (the pixel values stay on the CPU too)"
            )
        final_device = device or self.model.device
        if (dtype or self.model.dtype) == torch.float16 and final_device.type == "cpu":
            raise HumanAesError(_NO_CUDA_FP16)
        if dtype is not None:
            self.model.to_inference_dtype(dtype)  # the small heads stay float32
        if device is not None:
            self.model.to(device)
        return self

    # -- the official calls ----------------------------------------------------------------
    def score(self, tokenizer: Any, pixel_values: torch.Tensor, question: str = DEFAULT_GENERAL_QUESTION) -> float:
        """Overall score from one pass with `question` (the official "fast inference, 1x").

        The regression head's score, or the LM head's level-weighted score on a checkpoint
        without a regression head: `humanaes.load(path).score(image, mode="fast")[0].overall`.
        `question` may start with the official `<image>\\n`; the image always comes first.
        """
        result = self._run(tokenizer, pixel_values, "fast", _plain_question(question), "score")
        return float(result.overall)  # type: ignore[arg-type]

    def run_metavoter(self, tokenizer: Any, pixel_values: torch.Tensor) -> float:
        """MetaVoter fusion of the LM, regression and expert-overall scores (the official "slow
        inference"); here both questions share one pass over the image and its prompt prefix.

        A checkpoint without a fitted MetaVoter (the official release ships none) gives the mean
        of the three head scores; a warning says so once.
        """
        result = self._run(tokenizer, pixel_values, "metavoter", DEFAULT_GENERAL_QUESTION, "run_metavoter")
        if not result.extra.get("metavoter_fitted", True) and not self._warned_unfitted:
            self._warned_unfitted = True
            warnings.warn(
                f"{self.name} has no fitted MetaVoter: run_metavoter returns the mean of the LM, regression and "
                "expert scores (fit one with `humanaes train-metavoter`)",
                stacklevel=2,
            )
        return float(result.metavoter_score)  # type: ignore[arg-type]

    def expert_score(self, tokenizer: Any, pixel_values: torch.Tensor) -> tuple[list[float], str]:
        """The expert head's twelve scores (reference order, humanaes.DIMENSIONS) and their text:
        twelve lines `<i>. <dimension> : <level>` joined by newlines (the training answer format)."""
        result = self._run(tokenizer, pixel_values, "expert", DEFAULT_GENERAL_QUESTION, "expert_score")
        scores = [float(result.expert[name]) for name in DIMENSIONS]  # type: ignore[index]
        return scores, expert_answer(scores)

    def expert_annotation(
        self, tokenizer: Any, pixel_values: torch.Tensor, generation_config: Mapping[str, Any] | Any = None
    ) -> str:
        """The twelve-dimension annotation written by the language model.

        generation_config: a dict (or transformers GenerationConfig) with `max_new_tokens`
        (default 200) and `do_sample`; sampling honours `temperature`, `top_k` and `top_p` with
        transformers' defaults (1.0, 50, 1.0) and draws from torch's global generator (seed it with
        `torch.manual_seed` for repeatable text). Greedy decoding otherwise. They reach
        transformers' `generate()` as the native API's options of the same names
        (`score(..., mode="annotate", do_sample=True, ...)`). Beam search and other strategies are
        refused with a clear error rather than silently replaced.
        """
        options = _generation_options(generation_config)
        result = self._run(tokenizer, pixel_values, "annotate", DEFAULT_GENERAL_QUESTION, "expert_annotation", **options)
        return str(result.annotation)

    #: The official spelling, kept so unchanged code runs.
    expert_annotataion = expert_annotation

    # -- plumbing --------------------------------------------------------------------------
    def _scorer(self, tokenizer: Any, question: str) -> Any:
        from humanaes.models.expert.scorer import HumanAesScorer

        key = (id(tokenizer), question)
        cached = self._scorers.get(key)
        if cached is None or cached[0] is not tokenizer:
            image_token = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") if hasattr(tokenizer, "convert_tokens_to_ids") else None
            if image_token is None or image_token == getattr(tokenizer, "unk_token_id", None):
                raise HumanAesError(
                    "the tokenizer has no <IMG_CONTEXT> token; pass the one from "
                    f"AutoTokenizer.from_pretrained(<the same checkpoint as {self.name}>)"
                )
            scorer = HumanAesScorer(self.model, tokenizer, name=self.name, general_question=question)
            cached = self._scorers[key] = (tokenizer, scorer)
        return cached[1]

    def _run(self, tokenizer: Any, pixel_values: torch.Tensor, mode: str, question: str, call: str, **options: Any) -> ScoreResult:
        scorer = self._scorer(tokenizer, question)
        if mode not in scorer.supported_modes:
            needs = {"expert": "an expert head", "metavoter": "a regression head and an expert head"}[mode]
            raise HumanAesError(
                f"{call} needs {needs}; checkpoint {self.name} has none (a plain InternVL2 checkpoint?): "
                f"it supports {', '.join(scorer.supported_modes)}"
            )
        tiles = _check_pixel_values(pixel_values, self.model.config.image_size)
        try:
            typed = scorer.parse_options(**options)
        except HumanAesError as exc:
            raise HumanAesError(f"{call}: generation_config: {exc}") from None
        return scorer.score_prepared([tiles], ["pixel_values"], mode, **model_options(typed))[0]


def _plain_question(question: str) -> str:
    """The question without the official `<image>\\n` prefix (the prompt builder adds the image
    block in front of every question, as InternVL2's chat() does)."""
    if not isinstance(question, str) or not question.strip():
        raise HumanAesError(f"question must be a non-empty string, got {question!r}")
    text = question[len(IMAGE_PLACEHOLDER):].lstrip("\n") if question.startswith(IMAGE_PLACEHOLDER) else question
    if IMAGE_PLACEHOLDER in text or not text.strip():
        raise HumanAesError(
            f"question {question!r}: the image goes in front of the question; write it as '<image>\\n' + your question "
            "or leave <image> out"
        )
    return text


def _check_pixel_values(pixel_values: Any, size: int) -> torch.Tensor:
    if not isinstance(pixel_values, torch.Tensor):
        raise HumanAesError(f"pixel_values must be the tensor load_image returns, got {type(pixel_values).__name__}")
    if pixel_values.dim() != 4 or pixel_values.shape[0] < 1 or tuple(pixel_values.shape[1:]) != (3, size, size):
        raise HumanAesError(
            f"pixel_values has shape {tuple(pixel_values.shape)}; expected [tiles, 3, {size}, {size}] from load_image(path)"
        )
    if not pixel_values.is_floating_point():
        raise HumanAesError(f"pixel_values has dtype {pixel_values.dtype}; expected the normalised float tiles of load_image")
    return pixel_values


def _parse_to(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[torch.device | None, torch.dtype | None]:
    device: torch.device | None = None
    dtype: torch.dtype | None = None
    values = list(args) + [kwargs[k] for k in ("device", "dtype", "tensor") if k in kwargs]
    extra = set(kwargs) - {"device", "dtype", "tensor", "non_blocking", "copy"}
    if extra:
        raise HumanAesError(f"to(): unsupported argument(s) {', '.join(sorted(extra))}")
    for value in values:
        if isinstance(value, torch.dtype):
            dtype = value
        elif isinstance(value, torch.Tensor):
            device, dtype = value.device, value.dtype
        else:
            try:
                device = torch.device(value)
            except (RuntimeError, TypeError):
                raise HumanAesError(f"to(): {value!r} is neither a device nor a dtype") from None
    if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise HumanAesError(f"to(): the model runs in float32, bfloat16 or float16, not {dtype}")
    return device, dtype


def _generation_options(generation_config: Any) -> dict[str, Any]:
    """The native scoring options (max_new_tokens, do_sample, temperature, top_k, top_p) for an
    official generation_config; what the options refuse (e.g. temperature 0) is refused there."""
    if generation_config is None:
        config: dict[str, Any] = {}
    elif isinstance(generation_config, Mapping):
        config = dict(generation_config)
    elif hasattr(generation_config, "to_diff_dict"):  # transformers.GenerationConfig: the keys set
        config = dict(generation_config.to_diff_dict())
    else:
        raise HumanAesError(f"generation_config must be a dict, got {type(generation_config).__name__}")
    for key, value in config.items():
        if key in GENERATION_KEYS or key in _GENERATION_NO_EFFECT:
            continue
        if key in _GENERATION_NEUTRAL and value in (None, _GENERATION_NEUTRAL[key]):
            continue
        raise HumanAesError(
            f"generation_config {key}={value!r} is not supported; humanaes decodes greedily or by sampling "
            f"({', '.join(GENERATION_KEYS)})"
        )
    options = {key: config[key] for key in ("max_new_tokens", "do_sample") if config.get(key) is not None}
    if options.get("do_sample"):
        # As transformers: the sampling settings only count when sampling (greedy ignores them).
        options.update({key: config[key] for key in ("temperature", "top_k", "top_p") if config.get(key) is not None})
    return options


__all__ = ["AutoModel", "AutoTokenizer", "CompatModel", "load_image"]
