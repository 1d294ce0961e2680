"""A Hugging Face transformers encoder as the text backbone (`backbone/text=hf`; pip install "mtlrun[hf]").

It reads the text layout of mtlrun.data.base.ModalityInfo like the built-in text encoders: ids of mtlrun's
own vocabulary (mtlrun.data.text.Tokenizer, fitted on the training texts), 0 = padding; the attention mask
is `ids != 0`, and the vector is the masked mean of the last hidden states (mtlrun's ids carry no [CLS]
token, so `pooling: cls` reads the first real token).

Which ids the data holds decides what is kept (`tokenizer`):
- `mtlrun` (default): mtlrun's own vocabulary. With `pretrained: false` the model is built from `config` (a
  transformers config: model_type plus its sizes) with random weights and an embedding table of the data's
  vocab_size. With `pretrained: true` the transformer layers load from the local Hugging Face cache
  (`from_pretrained(name, local_files_only=True)`, never a download) and the word-embedding table is
  replaced by a fresh one over the data's vocabulary (the pretrained one indexes another vocabulary).
- `model`: the data was tokenized with the model's own tokenizer (a table text column's `tokenizer: NAME`,
  mtlrun.data.hf_tokenizer), so the pretrained embeddings are kept; the padding id, stored as 0, is swapped
  back to the model's.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun.checks import check_range, import_extra
from mtlrun.data.hf_tokenizer import swap_pad
from mtlrun.errors import UsageError
from mtlrun.hub import from_cache, repo_cache_dir
from mtlrun.models.backbone.base import masked_mean
from mtlrun.models.backbone.text import TokenSequenceEncoder, check_text_data

_KEY = "backbone.text"
POOLINGS = ("mean", "cls")
TOKENIZERS = ("mtlrun", "model")


def _load_pretrained(transformers, name: str):
    try:
        return from_cache(transformers.AutoModel, name)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{_KEY}.pretrained=true: the transformers model {name} is not in the local cache, and mtlrun never "
            f"downloads. Looked in {repo_cache_dir(name)} (the Hugging Face hub cache: HF_HUB_CACHE, or HF_HOME/hub). "
            f"Fetch it where there is a network (`huggingface-cli download {name}`) and copy the cache here, give "
            f"a local folder as {_KEY}.name=/path/to/model, or build a random one: {_KEY}.pretrained=false "
            f"with {_KEY}.config ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


def _random_model(transformers, name, config, vocab_size: int, max_len: int):
    if config is not None:
        options = dict(config)
        model_type = options.pop("model_type", None)
        if not model_type:
            raise UsageError(f"{_KEY}.config={config}: needs model_type (e.g. bert) and the model's sizes, e.g. "
                             f"{{model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, "
                             f"intermediate_size: 64}}")
        try:
            cfg = transformers.AutoConfig.for_model(model_type, **options)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{_KEY}.config: {exc}") from exc
    elif name:
        try:
            cfg = from_cache(transformers.AutoConfig, name)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{_KEY}.name={name}: its config is not in the local cache ({repo_cache_dir(name)}); "
                             f"give {_KEY}.config instead (model_type and sizes)") from exc
    else:
        raise UsageError(f"{_KEY}: give {_KEY}.name (a cached model) or {_KEY}.config (model_type and sizes)")
    cfg.vocab_size, cfg.pad_token_id = vocab_size, 0
    if getattr(cfg, "max_position_embeddings", max_len) < max_len:
        cfg.max_position_embeddings = max_len
    try:
        return transformers.AutoModel.from_config(cfg)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{_KEY}.config: transformers cannot build {cfg.model_type}: {exc}") from exc


def _fresh_embeddings(model, vocab_size: int) -> None:
    """An embedding table over the data's vocabulary (0 = padding) in place of the pretrained one."""
    embedding = nn.Embedding(vocab_size, model.get_input_embeddings().embedding_dim, padding_idx=0)
    nn.init.normal_(embedding.weight, std=getattr(model.config, "initializer_range", 0.02))
    with torch.no_grad():
        embedding.weight[0].zero_()
    model.set_input_embeddings(embedding)
    model.config.vocab_size, model.config.pad_token_id = vocab_size, 0


class HFText(TokenSequenceEncoder):
    """AutoModel over mtlrun's token ids -> pooled last hidden state (-> Linear + ReLU to `out_dim` if given)."""

    def __init__(self, vocab_size: int, max_len: int, name: str | None = "bert-base-uncased",
                 pretrained: bool = True, config: dict | None = None, pooling: str = "mean",
                 tokenizer: str = "mtlrun", out_dim: int | None = None):
        super().__init__()
        check_text_data(vocab_size, max_len)
        transformers = import_extra("transformers", "hf", "backbone/text=hf")
        if pooling not in POOLINGS:
            raise UsageError(f"{_KEY}.pooling={pooling}: valid: {', '.join(POOLINGS)}")
        if tokenizer not in TOKENIZERS:
            raise UsageError(f"{_KEY}.tokenizer={tokenizer}: valid: mtlrun (the data's own vocabulary), model (the "
                             f"data's text column was tokenized with the model's tokenizer)")
        if not isinstance(pretrained, bool):
            raise UsageError(f"{_KEY}.pretrained={pretrained}: must be true or false")
        if pretrained:
            if not name:
                raise UsageError(f"{_KEY}.pretrained=true needs {_KEY}.name (a model id or folder)")
            model = _load_pretrained(transformers, str(name))
            positions = getattr(model.config, "max_position_embeddings", max_len)
            if positions < max_len:
                raise UsageError(f"the text data's max_len={max_len} is longer than {name}'s "
                                 f"{positions} positions; lower the data's max_len")
            if tokenizer == "mtlrun":
                _fresh_embeddings(model, vocab_size)
            elif vocab_size > model.get_input_embeddings().num_embeddings:
                raise UsageError(f"{_KEY}.tokenizer=model: the text data has {vocab_size} ids, more than {name}'s "
                                 f"{model.get_input_embeddings().num_embeddings} embeddings; tokenize the text "
                                 f"column with the model's tokenizer (data.inputs.<name>.tokenizer={name})")
        else:
            model = _random_model(transformers, name, config, vocab_size, max_len)
        # ids hold 0 for padding (mtlrun's layout); the model's own tokenizer's padding id may be another
        self.pad_id = int(getattr(model.config, "pad_token_id", None) or 0) if tokenizer == "model" else 0
        self.model, self.pooling = model, pooling
        self.vocab_size, self.max_len = vocab_size, max_len
        self.token_dim = int(model.config.hidden_size)
        if out_dim is None:
            self.project, self.out_dim = nn.Identity(), self.token_dim
        else:
            check_range(f"{_KEY}.out_dim", out_dim, 1)
            self.project = nn.Sequential(nn.Linear(self.token_dim, out_dim), nn.ReLU(inplace=True))
            self.out_dim = int(out_dim)

    def pool(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(tokens, mask) if self.pooling == "mean" else tokens[:, 0]

    def tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states [B, L, token_dim], zero at padding; mask [B, L], True at a real token)."""
        ids = ids.long()
        mask = ids != 0
        # an all-padding row (an empty text) would attend over no key: let its first position attend to
        # itself; its outputs are masked out of the tokens and the mean anyway
        attention = mask.clone()
        attention[:, 0] |= ~mask.any(1)
        hidden = self.model(input_ids=swap_pad(ids, self.pad_id), attention_mask=attention.long()).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype), mask
