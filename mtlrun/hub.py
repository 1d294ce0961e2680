"""Where pretrained weights and tokenizers of the optional backbones (timm, transformers) are looked for.

mtlrun never downloads at run time: weights come from the local Hugging Face hub cache (the layout
`huggingface-cli download` and any earlier online use leave behind) or from a file the user names. The cache
directory is read from the environment at call time, as huggingface_hub itself resolves it: HF_HUB_CACHE,
else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def repo_cache_dir(repo_id: str) -> Path:
    """The folder of one model repository in the hub cache, e.g. .../hub/models--timm--resnet18.a1_in1k."""
    return hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"


def cached_file(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of `filenames` that the hub cache holds for `repo_id` (any cached revision of `main`), or None.

    Only reads the cache's files: no network, whatever huggingface_hub's offline setting."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_cache_dir()))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def from_cache(auto_class, name: str):
    """`auto_class.from_pretrained(name)` (a transformers AutoModel / AutoConfig / AutoTokenizer) from a local
    folder or the hub cache only; OSError or ValueError when neither has it (the caller says what to do)."""
    with offline():
        return auto_class.from_pretrained(name, local_files_only=True, cache_dir=str(hf_cache_dir()))


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set for the duration; each key gets back its earlier value (or none) after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def offline():
    """The Hugging Face libraries' offline switches set for the duration (belt and braces: every call below
    also passes local_files_only / a local file, so nothing would be fetched anyway)."""
    return environment(OFFLINE_ENV)
