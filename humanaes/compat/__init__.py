"""The official HumanAesExpert call API on humanaes' native model (no remote code).

Code written for the official release keeps working with only its import lines changed::

    from humanaes.compat import AutoModel, AutoTokenizer, load_image

    model = AutoModel.from_pretrained(path, torch_dtype=torch.float32, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=False)
    pixel_values = load_image(image_path, max_num=12)
    model.score(tokenizer, pixel_values, "<image>\\nRate the aesthetics of this human picture.")

`trust_remote_code` is accepted and never honoured: nothing from the checkpoint folder is ever
imported or run; the weights load into humanaes' own model. See docs/migrating-from-official.md.
"""

from __future__ import annotations

from humanaes.compat.official import AutoModel, AutoTokenizer, CompatModel, load_image

__all__ = ["AutoModel", "AutoTokenizer", "CompatModel", "load_image"]
