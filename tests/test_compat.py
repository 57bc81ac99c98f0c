"""The official call API (`humanaes.compat`): the migration guide's snippet runs on tiny
official-layout checkpoints and gives exactly the native API's numbers; `load_image` and the LM
score are golden against the original implementation's recorded outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_scoring import _with_heads

import humanaes
from humanaes.compat import AutoModel, AutoTokenizer, CompatModel, load_image
from humanaes.errors import HumanAesError
from humanaes.models.expert.prompts import expert_answer
from humanaes.schema import DIMENSIONS, LEVEL_CENTRES, LEVELS

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "migrating-from-official.md"
VARIANTS = ["tiny_qwen2", "tiny_internlm2"]
# First token of ` excellent`, ` good`, ` fair`, ` poor`, ` bad` (fixtures README, section 2).
SEED = 2
LEVEL_FIRST_TOKENS = {"tiny_qwen2": [317, 316, 312, 314, 309], "tiny_internlm2": [414, 409, 410, 412, 408]}


def guide_snippet() -> str:
    """The humanaes side of the guide's side-by-side: the python block importing humanaes.compat."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)
    ours = [b for b in blocks if "from humanaes.compat import" in b]
    assert len(ours) == 1, "the guide must hold exactly one humanaes.compat snippet"
    return ours[0]


def run_snippet(model_path: Path, image_path: Path) -> dict:
    """Run the guide's snippet with only its model and image paths replaced."""
    code = guide_snippet()
    code, n_model = re.subn(r"^model_path = .*$", f"model_path = {str(model_path)!r}", code, flags=re.M)
    code, n_image = re.subn(r"^image_path = .*$", f"image_path = {str(image_path)!r}", code, flags=re.M)
    assert n_model == n_image == 1
    namespace: dict = {}
    exec(compile(code, str(GUIDE), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


@pytest.fixture(scope="module", params=VARIANTS)
def with_heads(request, fixtures_dir, tmp_path_factory):
    return _with_heads(fixtures_dir / request.param, tmp_path_factory.mktemp("compat") / request.param,
                       torch.Generator().manual_seed(11))


def test_official_snippet_equals_native_api(with_heads, fixtures_dir, capsys, monkeypatch):
    image = fixtures_dir / "preprocess" / "astronaut.png"  # one tile keeps the 1024-token sampling quick
    # The snippet samples its annotation (do_sample=True): seed the global generator right
    # before that call, so the native run below can draw the same tokens. (This seed ends the
    # random-weight text after ~150 / ~50 tokens instead of running to the 1024-token limit.)
    annotate = CompatModel.expert_annotataion

    def seeded(self, *args, **kwargs):
        torch.manual_seed(SEED)
        return annotate(self, *args, **kwargs)

    monkeypatch.setattr(CompatModel, "expert_annotataion", seeded)
    with pytest.warns(UserWarning, match="no fitted MetaVoter"):
        ns = run_snippet(with_heads, image)
    assert ns["pixel_values"].shape == (1, 3, 448, 448)

    scorer = humanaes.load(with_heads, device="cpu", dtype="float32")
    fast = scorer.score(image, mode="fast")[0]
    voted = scorer.score(image, mode="metavoter")[0]
    expert = scorer.score(image, mode="expert")[0]
    torch.manual_seed(SEED)  # the snippet's do_sample=True: transformers' sampling defaults, the global generator
    annotated = scorer.score(image, mode="annotate", max_new_tokens=1024, do_sample=True)[0]

    assert isinstance(ns["pred_score"], float) and ns["pred_score"] == fast.overall == fast.regression_score
    assert isinstance(ns["metavoter_score"], float) and ns["metavoter_score"] == voted.metavoter_score
    assert ns["expert_score"] == [expert.expert[name] for name in DIMENSIONS]
    assert ns["expert_text"] == expert_answer(ns["expert_score"])
    assert ns["expert_text"].splitlines()[11] == f"12. Comprehensive Aesthetic Score : {expert.expert_levels[DIMENSIONS[11]]}"
    assert isinstance(ns["expert_annotataion"], str) and ns["expert_annotataion"] == annotated.annotation
    printed = capsys.readouterr().out
    assert ns["expert_text"] in printed


@pytest.mark.parametrize("variant", VARIANTS)
def test_score_is_golden_against_the_original_lm_logits(variant, fixtures_dir):
    """No heads: `score` is the LM head's level-weighted score at the answer prefix, computed here
    from the logits the original InternVL2 code recorded for the same prompt and image."""
    folder = fixtures_dir / variant
    model = AutoModel.from_pretrained(folder, torch_dtype=torch.float32, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True, use_fast=False)
    pixel_values = load_image(fixtures_dir / "preprocess" / "astronaut.png", max_num=6)
    got = model.score(tokenizer, pixel_values, "<image>\nRate the aesthetics of this human picture.")

    logits = load_file(folder / "reference.safetensors")["answer_prefix.logits"][0, -1]
    probs = torch.softmax(logits[LEVEL_FIRST_TOKENS[variant]].double(), dim=-1)
    expected = float(probs @ torch.tensor([LEVEL_CENTRES[level] for level in reversed(LEVELS)], dtype=torch.float64))
    assert abs(got - expected) < 1e-5
    # the same question without the official "<image>\n" prefix gives the same number
    assert model.score(tokenizer, pixel_values, "Rate the aesthetics of this human picture.") == got


@pytest.mark.parametrize("key", ["astronaut.max6", "grace_hopper.max1", "wide.max6"])
def test_load_image_is_bit_exact_with_the_official_function(key, fixtures_dir):
    name, max_num = key.split(".max")
    suffix = ".jpg" if name == "grace_hopper" else ".png"
    expected = load_file(fixtures_dir / "preprocess" / "pixel_values.safetensors")[key]
    got = load_image(fixtures_dir / "preprocess" / f"{name}{suffix}", max_num=int(max_num))
    assert got.dtype == torch.float32 and torch.equal(got, expected)


@pytest.fixture(scope="module")
def plain(fixtures_dir):
    folder = fixtures_dir / "tiny_qwen2"
    model = AutoModel.from_pretrained(folder, torch_dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(folder), load_image(fixtures_dir / "preprocess" / "astronaut.png")


def test_annotation_decoding(plain):
    model, tokenizer, pixels = plain
    greedy = model.expert_annotataion(tokenizer, pixels, dict(max_new_tokens=12, do_sample=False))
    assert model.expert_annotation(tokenizer, pixels, {"max_new_tokens": 12}) == greedy
    # greedy ignores the sampling settings, as transformers does
    assert model.expert_annotation(tokenizer, pixels, dict(max_new_tokens=12, temperature=5.0, top_k=3)) == greedy
    hot = dict(max_new_tokens=12, do_sample=True, temperature=5.0)
    torch.manual_seed(5)
    first = model.expert_annotation(tokenizer, pixels, hot)
    torch.manual_seed(5)
    assert model.expert_annotation(tokenizer, pixels, hot) == first  # seeded: repeatable
    assert first != greedy  # and really sampled
    # top_k and top_p reach generate(): hot sampling cut down to the single most likely token is greedy
    assert model.expert_annotation(tokenizer, pixels, {**hot, "top_k": 1}) == greedy
    warm = dict(max_new_tokens=12, do_sample=True)  # transformers' temperature 1.0
    assert model.expert_annotation(tokenizer, pixels, warm) != greedy
    assert model.expert_annotation(tokenizer, pixels, {**warm, "top_k": 0, "top_p": 0.01}) == greedy
    assert model.expert_annotation(tokenizer, pixels, {"max_new_tokens": 12}) == greedy  # sampling does not stick
    # a transformers GenerationConfig is read like the dict of the values it sets
    from transformers import GenerationConfig

    torch.manual_seed(5)
    assert model.expert_annotation(tokenizer, pixels, GenerationConfig(**hot)) == first
    # the length limit reaches generate(): a shorter run writes a prefix of the longer one
    short = model.expert_annotation(tokenizer, pixels, {"max_new_tokens": 4})
    assert len(short) < len(greedy) and greedy.startswith(short)


def test_clear_errors(plain, fixtures_dir):
    model, tokenizer, pixels = plain
    with pytest.raises(HumanAesError, match="expert_score needs an expert head; checkpoint tiny_qwen2"):
        model.expert_score(tokenizer, pixels)
    with pytest.raises(HumanAesError, match="run_metavoter needs a regression head and an expert head"):
        model.run_metavoter(tokenizer, pixels)
    with pytest.raises(HumanAesError, match=r"shape \(3, 448, 448\)"):
        model.score(tokenizer, pixels[0], "Rate this.")
    with pytest.raises(HumanAesError, match="the image goes in front of the question"):
        model.score(tokenizer, pixels, "Rate <image> this.")
    with pytest.raises(HumanAesError, match="num_beams=4 is not supported"):
        model.expert_annotation(tokenizer, pixels, dict(max_new_tokens=4, num_beams=4))
    with pytest.raises(HumanAesError, match="expert_annotation: generation_config: option 'temperature' must be a number >= 0.01"):
        model.expert_annotation(tokenizer, pixels, dict(do_sample=True, temperature=0))
    with pytest.raises(HumanAesError, match="option 'top_p' must be a number >= 0.01 and <= 1.0"):
        model.expert_annotation(tokenizer, pixels, dict(do_sample=True, top_p=1.5))
    with pytest.raises(HumanAesError, match="option 'max_new_tokens' must be an integer >= 1"):
        model.expert_annotation(tokenizer, pixels, dict(max_new_tokens=0))
    with pytest.raises(HumanAesError, match="unsupported argument.*load_in_8bit"):
        AutoModel.from_pretrained(fixtures_dir / "tiny_qwen2", load_in_8bit=True)
    with pytest.raises(humanaes.ModelNotFoundError, match="not found"):
        AutoTokenizer.from_pretrained(fixtures_dir / "no-such-folder")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without CUDA")
def test_cuda_and_float16_without_a_gpu(plain, fixtures_dir):
    model = plain[0]
    with pytest.raises(HumanAesError, match="no CUDA GPU is available here; drop .cuda()"):
        model.cuda()
    with pytest.raises(HumanAesError, match="float16 needs a CUDA GPU"):
        model.half()
    with pytest.raises(HumanAesError, match="float16 needs a CUDA GPU"):
        AutoModel.from_pretrained(fixtures_dir / "tiny_qwen2", torch_dtype=torch.float16)
    assert model.dtype == torch.float32 and model.device.type == "cpu"  # refused moves change nothing


def test_float16_pixel_values_and_bfloat16_model(fixtures_dir):
    """The official `.to(torch.float16)` on the tiles is harmless: they are cast to the model's dtype."""
    folder = fixtures_dir / "tiny_qwen2"
    model = AutoModel.from_pretrained(folder, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pixels = load_image(fixtures_dir / "preprocess" / "astronaut.png")
    exact = model.score(tokenizer, pixels, "Rate the aesthetics of this human picture.")
    assert model.score(tokenizer, pixels.to(torch.float16), "Rate the aesthetics of this human picture.") == pytest.approx(exact, abs=1e-3)
    assert model.to(torch.bfloat16) is model and model.dtype == torch.bfloat16
    assert model.score(tokenizer, pixels, "Rate the aesthetics of this human picture.") == pytest.approx(exact, abs=0.05)


def test_load_image_decodes_like_the_official_code(tmp_path):
    """Image.open(...).convert('RGB'): no EXIF rotation, an alpha channel dropped (not composited)."""
    from PIL import Image

    from humanaes.models.expert.processing import preprocess_image

    rng = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (300, 500, 4), generator=rng, dtype=torch.uint8).numpy()
    pixels[..., 3] = 0  # fully transparent: compositing onto white would change every pixel
    rgba = Image.fromarray(pixels, "RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": the official code ignores it
    rgba.save(tmp_path / "rotated.png", exif=exif)
    expected = preprocess_image(Image.open(tmp_path / "rotated.png").convert("RGB"), max_tiles=12)
    got = load_image(tmp_path / "rotated.png")
    assert got.shape == (7, 3, 448, 448)  # 3x2 grid of the 500x300 image + thumbnail
    assert torch.equal(got, expected)
