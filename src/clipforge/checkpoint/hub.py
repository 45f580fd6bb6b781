"""Model repositories: ``hf-hub:ORG/NAME`` (through ``huggingface_hub`` and its cache) and
``local-dir:PATH``, in open_clip's layout or Hugging Face's, and open_clip's pretrained tags.

- open_clip layout: ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``) and
  ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``;
- Hugging Face layout: ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``) of a
  ``CLIPModel``, read by ``checkpoint.hf``.

Hub files are found in the Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``) and
downloaded only when allowed (``download=True`` and ``HF_HUB_OFFLINE`` unset). Offline, the error
names the repository, the files and the directory to place them in for ``local-dir:``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import CLIPConfig
from ..errors import CheckpointError, ConfigError, OfflineError
from ..models.clip import CLIP
from ..registry import MODEL_CONFIGS, get_model_config
from . import hf, io, open_clip, openai
from .pretrained import resolve_open_clip_tag, tag_preprocess
from .strict import load_strict
from .towers import from_open_clip_towers

__all__ = ["HF_HUB_PREFIX", "LOCAL_DIR_PREFIX", "OPEN_CLIP_CONFIG", "OPEN_CLIP_WEIGHTS", "HF_CONFIG",
           "HF_WEIGHTS", "is_repository", "load_repository", "load_directory", "load_pretrained_tag",
           "fetch_repository"]  # fmt: skip

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # preferred first
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# Each layout: its config file and its weight files (either one).
_LAYOUTS = ((OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS), (HF_CONFIG, HF_WEIGHTS))


def is_repository(name: str) -> bool:
    return name.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX))


def load_repository(name: str, quick_gelu: bool | None = None, download: bool = True) -> CLIP:
    """``hf-hub:ORG/NAME`` or ``local-dir:PATH`` -> CLIP in eval mode."""
    if name.startswith(LOCAL_DIR_PREFIX):
        return load_directory(Path(name[len(LOCAL_DIR_PREFIX) :]).expanduser(), quick_gelu)
    repo = name[len(HF_HUB_PREFIX) :].strip("/")
    if repo.count("/") != 1:
        raise CheckpointError(f"{name!r} is not a repository id; write hf-hub:ORG/NAME (e.g. hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K)")
    return load_directory(fetch_repository(repo, download), quick_gelu)


def load_directory(path: Path, quick_gelu: bool | None = None) -> CLIP:
    """A repository's files in ``path``: open_clip's layout, else Hugging Face's."""
    if (path / OPEN_CLIP_CONFIG).is_file():
        config = _read_open_clip_config(path / OPEN_CLIP_CONFIG)
        if quick_gelu is not None and quick_gelu != config.quick_gelu:
            raise CheckpointError(io.activation_message(path, config.quick_gelu, quick_gelu))
        return _load_weights(config, _first_file(path, OPEN_CLIP_WEIGHTS))
    if (path / HF_CONFIG).is_file():
        return hf.load_hf_dir(path, quick_gelu)
    raise CheckpointError(
        f"{path} holds neither an open_clip repository ({OPEN_CLIP_CONFIG} and {' or '.join(OPEN_CLIP_WEIGHTS)}) "
        f"nor a Hugging Face one ({HF_CONFIG} and {' or '.join(HF_WEIGHTS)}); place those files there"
    )


def load_pretrained_tag(name: str, tag: str, quick_gelu: bool | None = None, download: bool = True) -> CLIP:
    """An open_clip pretrained tag (``("ViT-B-32", "laion2b_s34b_b79k")``) -> CLIP in eval mode.

    The architecture is our registry's when we have it (as open_clip uses its own configs), else
    the repository's ``open_clip_config.json``; the weights are the repository's.
    """
    weights = resolve_open_clip_tag(name, tag)
    if weights.architecture in MODEL_CONFIGS:
        config = get_model_config(weights.architecture)
        weights_file = _hub_file(weights.repo, OPEN_CLIP_WEIGHTS, download)
    else:
        directory = fetch_repository(weights.repo, download, layouts=_LAYOUTS[:1])
        config = _read_open_clip_config(directory / OPEN_CLIP_CONFIG)
        config = config.replace(quick_gelu=weights.architecture.endswith("-quickgelu"))
        weights_file = _first_file(directory, OPEN_CLIP_WEIGHTS)
    if quick_gelu is not None and quick_gelu != config.quick_gelu:
        raise CheckpointError(io.activation_message(f"{name} ({tag})", config.quick_gelu, quick_gelu))
    return _load_weights(config.replace(preprocess=tag_preprocess(weights, config.preprocess)), weights_file)


def _read_open_clip_config(path: Path) -> CLIPConfig:
    try:
        data = json.loads(path.read_text())
        model_cfg = dict(data.get("model_cfg", data))
        if "preprocess_cfg" in data and "model_cfg" in data:  # the repository's, beside the model config
            model_cfg["preprocess_cfg"] = data["preprocess_cfg"]
        return CLIPConfig.from_dict(model_cfg)
    except (json.JSONDecodeError, ConfigError) as e:
        raise CheckpointError(f"{path} is not a usable open_clip model config: {e}") from None


def _first_file(directory: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory} has no weights file; place {' or '.join(names)} there")


def _load_weights(config: CLIPConfig, path: Path) -> CLIP:
    """open_clip-named weights in ``path`` -> a CLIP of ``config``, every key checked."""
    if path.suffix == ".safetensors":
        state = io.load_state_dict_safetensors(path)
    else:
        state = open_clip.unwrap_training_checkpoint(openai.read_torch_file(path))
    state = from_open_clip_towers(open_clip.from_open_clip(state))
    if "logit_bias" in state and config.init_logit_bias is None:
        config = config.replace(init_logit_bias=0.0)
    model = CLIP(config)
    load_strict(model, state, source=str(path))
    return model.eval()


# --- the Hugging Face Hub ------------------------------------------------------------------------


def fetch_repository(repo: str, download: bool = True,
                     layouts: tuple[tuple[str, tuple[str, ...]], ...] = _LAYOUTS) -> Path:  # fmt: skip
    """The local directory (a Hub cache snapshot) holding ``repo``'s config and weights files."""
    config_names = tuple(c for c, _ in layouts)
    config = _hub_file(repo, config_names, download)
    _hub_file(repo, dict(layouts)[config.name], download)
    return config.parent


def _hub_file(repo: str, names: tuple[str, ...], download: bool) -> Path:
    """The first of ``names`` that ``repo`` has, from the cache or downloaded. Offline, a file
    that is not cached is passed over for the next; none cached is an OfflineError."""
    offline: OfflineError | None = None
    for name in names:
        try:
            path = _try_hub_file(repo, name, download)
        except OfflineError as e:
            offline = offline or e
            continue
        if path is not None:
            return path
    if offline is not None:
        raise offline
    raise CheckpointError(
        f"the Hugging Face repository {repo} has none of {', '.join(names)}; it is not a CLIP model repository"
    )


def _try_hub_file(repo: str, filename: str, download: bool) -> Path | None:
    """``filename`` of ``repo`` (cached or downloaded); None when the repository lacks it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = not download or _env_flag("HF_HUB_OFFLINE")
    try:
        return Path(hf_hub_download(repo, filename, cache_dir=_hub_cache(), local_files_only=offline))
    except LocalEntryNotFoundError as e:  # not cached, and no download allowed or possible
        raise OfflineError(_offline_message(repo, _why_offline(download, e))) from None
    except EntryNotFoundError:  # the Hub answered: no such file in this repository
        return None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"the Hugging Face repository {repo} does not exist or is private; check the name "
            "(for a private one, log in with `huggingface-cli login`)"
        ) from None
    except OSError as e:  # connection errors
        raise OfflineError(_offline_message(repo, f"download failed: {e}")) from None


def _why_offline(download: bool, error: Exception) -> str:
    if not download:
        return "downloads are disabled"
    if _env_flag("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    return f"the Hub cannot be reached: {error}"


def _offline_message(repo: str, why: str) -> str:
    from huggingface_hub import constants

    local = Path.cwd() / repo.replace("/", "--")
    cache = _hub_cache() or constants.HF_HUB_CACHE
    return (
        f"the Hugging Face repository {repo} is not in the Hugging Face cache ({cache}) and cannot "
        f"be fetched ({why}). On a connected machine download {OPEN_CLIP_CONFIG} and "
        f"{OPEN_CLIP_WEIGHTS[0]} (or {OPEN_CLIP_WEIGHTS[1]}) from https://huggingface.co/{repo} "
        f"(for a Hugging Face-format repository: {HF_CONFIG} and {HF_WEIGHTS[0]}), place them in a "
        f"directory such as {local} and load 'local-dir:{local}'; or run `huggingface-cli download "
        f"{repo}` there and copy its Hugging Face cache to {cache}"
    )


def _hub_cache() -> str | None:
    """The cache directory as the environment says now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
