"""Hub paths: a local folder or Hugging Face Hub repo id -> local path, through huggingface_hub's own download and
cache code (so HF_HUB_OFFLINE, HF_HOME / cache_dir, revision and token behave as everywhere else in diffusers), the
folder of one that holds a `save` checkpoint, and the upload of a written folder."""

from __future__ import annotations

import re
from pathlib import Path

from deltaconv_kernels.integrations.diffusers.files import CONFIG_NAME, CheckpointError, denoiser_subfolder

HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # owner/name (a bare name reads as a path)


def split_hub_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """(huggingface_hub download arguments, the rest) of a from_pretrained-style keyword dict."""
    hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    return hub, {k: v for k, v in kwargs.items() if k not in hub}


def local_path(path_or_repo_id, what: str, **hub_kwargs) -> Path:
    """`path_or_repo_id` itself when it exists on disk; else, when it looks like a repo id ("owner/name"), the
    local snapshot folder that `huggingface_hub.snapshot_download` returns (downloaded, or from the cache when
    offline). Raises CheckpointError naming both readings otherwise."""
    unknown = sorted(set(hub_kwargs) - set(HUB_KWARGS))
    if unknown:
        raise TypeError(f"unexpected Hub arguments {unknown}; accepted: {list(HUB_KWARGS)}")
    path = Path(path_or_repo_id)
    if path.exists():
        return path
    text = str(path_or_repo_id)
    if not _REPO_ID.match(text):
        raise CheckpointError(f"{text!r} does not exist, so it is not a {what} (nor a Hub repo id like "
                              "'owner/name')")
    from huggingface_hub import snapshot_download  # deferred: only a Hub repo id needs huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, **hub_kwargs))
    except (LocalEntryNotFoundError, HFValidationError, HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"{text!r} is no local {what}, and as a Hub repo id it could not be fetched: "
                                f"{type(e).__name__}: {e}") from e


def push_folder(folder: Path, repo_id: str | None, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None) -> None:
    """Upload a written folder to the Hub repo `repo_id` (created if missing) through huggingface_hub, as diffusers'
    `push_to_hub` does."""
    if not repo_id:
        raise ValueError("push_to_hub=True needs repo_id='owner/name'")
    import huggingface_hub  # deferred: only pushing needs huggingface_hub

    huggingface_hub.create_repo(repo_id, private=private, token=token, exist_ok=True)
    huggingface_hub.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token,
                                  commit_message=commit_message or "Upload a ΔConv-converted model")


def checkpoint_folder(path_or_repo_id, **hub_kwargs) -> Path:
    """The folder holding deltaconv.json for a `load`: a `save` folder, a converted model or pipeline folder,
    each local or a Hub repo id."""
    folder = local_path(path_or_repo_id, "deltaconv checkpoint", **hub_kwargs)
    if folder.is_dir() and not (folder / CONFIG_NAME).is_file():
        sub = denoiser_subfolder(folder)
        if sub is not None:
            return folder / sub
    return folder
