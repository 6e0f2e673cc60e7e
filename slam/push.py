"""`slam push MODEL --repo ID`: a slam model folder to the Hugging Face hub, with a generated model card.

    slam push runs/slam/final --repo me/slam-1day                      # results.json / eval-results.json beside it
    slam push runs/slam/final --repo me/slam-1day --results eval-results/slam-final.json --private

What goes up (`push_files`): every file the folder's slam.json and config.json need to load as a slam model
(`slam generate me/slam-1day ...` downloads exactly these, slam.model_folder.MODEL_FILE_PATTERNS): the HF config
and weights (safetensors only: a pickle is refused), generation_config.json, slam.json, the tokenizer's
k-means (the embedded `tokenizer-kmeans.npz`, without which a downloaded model could not turn audio into
its units), an interleaved model's text tokenizer folder, plus the card README.md and results.json when
there are results. A file slam.json names that is missing stops the push before anything is sent.

The card (`model_card`): hub metadata (tags, base model), how to use it with slam, the token layout and
speech tokenizer (kind, units, hash), the recipe (the run folder's config.yaml when MODEL is a run's
`final/`), the training data (each units dataset's utterances, hours and tokens when the folder is at
hand), the results table, and the slam version and provenance.

The upload itself is `hub_upload` (huggingface_hub's create_repo + one create_commit of exactly these
files); tests replace it, everything else runs offline.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import yaml

import slam
from slam.errors import SlamError
from slam.model_folder import MODEL_FILE_PATTERNS
from slam.tokens import SlamInfo
from slam.units.dataset import read_meta

RESULT_NAMES = ("results.json", "eval-results.json")
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")


def _wanted(rel: str) -> bool:
    return any(fnmatch.fnmatch(rel, pat) for pat in MODEL_FILE_PATTERNS)


def push_files(folder: str | Path) -> list[str]:
    """The model files to upload, relative to `folder`, sorted (the card and results are added by
    `push_model`). Refuses a folder that is not a complete slam model."""
    folder = Path(folder)
    if not (folder / "slam.json").is_file():
        raise SlamError(f"{folder}: not a slam model folder (no slam.json); push a run's final/ or a "
                        f"`slam convert` output")
    for name in ("config.json",):
        if not (folder / name).is_file():
            raise SlamError(f"{folder}: {name} is missing")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    pickles = [f for f in files if any(fnmatch.fnmatch(f, pat) for pat in PICKLES)]
    if not any(f.endswith(".safetensors") for f in files):
        raise SlamError(f"{folder}: no *.safetensors weights{' (only ' + ', '.join(pickles) + ')' if pickles else ''};"
                        f" slam shares safetensors only (`slam convert` writes them)")
    info = SlamInfo.load(folder)
    need = []
    km = (info.tokenizer or {}).get("kmeans")
    if km and not Path(km).is_absolute():
        need.append(Path(km).as_posix())
    if info.text_tokenizer and not Path(info.text_tokenizer).is_absolute():
        need.append(Path(info.text_tokenizer).as_posix())
    out = [f for f in files if _wanted(f) and not f.startswith(".") and f not in RESULT_NAMES and f != "README.md"]
    for n in need:
        if not any(f == n or f.startswith(n.rstrip("/") + "/") for f in out):
            raise SlamError(f"{folder}: slam.json names {n}, which is missing; the pushed model could not "
                            f"tokenize audio without it")
    return out


def _results(folder: Path, results: str | Path | None) -> dict | None:
    paths = [Path(results)] if results else [folder / n for n in RESULT_NAMES]
    for p in paths:
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise SlamError(f"{p}: not a results JSON ({e})") from None
        if results:
            raise SlamError(f"--results {p}: no such file")
    return None


def _run_folder(folder: Path) -> Path | None:
    run = folder.resolve().parent
    return run if (run / "config.yaml").is_file() else None


def _data_lines(config: dict) -> list[str]:
    lines = []
    data = config.get("data") or {}
    sources = data.get("train") if isinstance(data.get("train"), list) else [data.get("train")] if data.get("train") else []
    for src in sources:
        path = src.get("path") if isinstance(src, dict) else str(src)
        try:
            meta = read_meta(path)
            lines.append(f"- `{path}`: {meta.get('n_utterances', '?')} utterances, {meta.get('hours', 0):.2f} h, "
                         f"{meta.get('n_tokens', 0):,} units (tokenizer {str(meta.get('tokenizer_hash', ''))[:12]})")
        except (SlamError, OSError, ValueError):
            lines.append(f"- `{path}`" + (f" (weight {src.get('weight')})" if isinstance(src, dict) and src.get("weight") else ""))
    return lines


def _metric_rows(results: dict) -> list[str]:
    rows = ["| metric | value | 95% CI | n |", "| --- | --- | --- | --- |"]
    for name, r in (results.get("metrics") or {}).items():
        if not isinstance(r, dict):
            continue
        ci = r.get("ci") or r.get("ci95")
        ci_s = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
        value = r.get("value")
        unit = " %" if r.get("metric") == "accuracy" else ""
        rows.append(f"| {name} | {value:.2f}{unit} | {ci_s} | {r.get('n', '')} |" if isinstance(value, (int, float))
                    else f"| {name} | {value} | {ci_s} | {r.get('n', '')} |")
    return rows


def model_card(folder: str | Path, repo: str, results: dict | None = None) -> str:
    """The README.md pushed with the model (see the module docstring)."""
    folder = Path(folder)
    info = SlamInfo.load(folder)
    run = _run_folder(folder)
    config = yaml.safe_load((run / "config.yaml").read_text()) if run else None
    tok = info.tokenizer or {}
    tags = ["slam", "speech-language-model", "textless", "audio"] + (["interleaved"] if info.text_tokenizer else [])
    front = {"library_name": "slam", "tags": tags}
    if info.base_model:
        front["base_model"] = info.base_model
    kind = "interleaved text-speech" if info.text_tokenizer else "speech-only"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {repo.split('/')[-1]}", "",
             f"A {kind} language model over {info.n_units} speech units, trained with slam {slam.__version__} "
             f"(the *Slamming* recipe, arXiv 2502.15814).",
             "", "## Use", "", "```", f"pip install slam=={slam.__version__}",
             f"slam generate {repo} --prompt in.wav --out out.wav",
             f"slam eval {repo} --bench sblimp=PATH --bench ssc=PATH --bench tsc=PATH", "```", "",
             "## Tokens", "",
             f"- Speech tokenizer: {tok.get('kind', 'unknown')}"
             + (f" ({tok.get('model')}, layer {tok.get('layer')})" if tok.get("model") else "")
             + f", {info.n_units} units, hash `{info.tokenizer_hash[:16]}`; its k-means is `{tok.get('kmeans')}` in "
             f"this repository, so audio is turned into the units the model was trained on.",
             f"- Layout: pad {info.pad_id}, bos {info.bos_id}, eos {info.eos_id}, unit u at id u + {info.unit_offset}, "
             f"vocabulary {info.vocab_size}" + (f", text tokenizer `{info.text_tokenizer}`" if info.text_tokenizer else "")
             + "."]
    if info.base_model:
        lines.append(f"- Initialised from the text LM `{info.base_model}` (TWIST).")
    train = (info.extra or {}).get("train") or {}
    if train or (info.extra or {}).get("dpo"):
        lines += ["", "## Training", ""]
        if train:
            lines.append(f"- {train.get('steps', '?')} steps, {train.get('tokens', '?'):,} tokens, "
                         f"{train.get('train_seconds', 0) / 3600:.2f} h of training."
                         if isinstance(train.get("tokens"), int) else f"- {json.dumps(train)}")
        if (info.extra or {}).get("dpo"):
            d = info.extra["dpo"]
            lines.append(f"- Preference-aligned ({d.get('loss', 'sigmoid')} loss, beta {d.get('beta')}) on "
                         f"{d.get('pairs')} pairs for {d.get('steps')} steps from `{d.get('start_model')}`.")
    if config:
        data = _data_lines(config)
        if data:
            lines += ["", "## Data", "", *data]
        lines += ["", "## Recipe", "", "The run's resolved config.yaml:", "", "```yaml",
                  yaml.safe_dump(config, sort_keys=False).strip(), "```"]
    if results:
        lines += ["", "## Results", "", *_metric_rows(results), "",
                  "Full results (per group, model and tokenizer hashes, provenance) in `results.json`."]
    lines += ["", "## Provenance", "", f"- slam {slam.__version__}"]
    if run and (run / "provenance.json").is_file():
        try:
            prov = json.loads((run / "provenance.json").read_text())
            for k in ("git_commit", "git", "torch", "transformers", "device", "created"):
                if k in prov:
                    lines.append(f"- {k}: {prov[k]}")
        except (ValueError, UnicodeDecodeError):
            pass
    return "\n".join(lines) + "\n"


def hub_upload(repo: str, files: dict[str, Path | bytes], private: bool, message: str) -> str:
    """Create `repo` (if needed) and commit exactly `files` (path in repo -> local file or bytes) in one
    commit; returns the commit URL. The only function here that talks to the network."""
    try:
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi()
        api.create_repo(repo, private=private, exist_ok=True)
        ops = [CommitOperationAdd(path_in_repo=k, path_or_fileobj=v if isinstance(v, bytes) else str(v))
               for k, v in files.items()]
        info = api.create_commit(repo, operations=ops, commit_message=message)
        return str(getattr(info, "commit_url", info))
    except Exception as e:  # offline, no token, no rights: one line
        raise SlamError(f"--repo {repo}: upload failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        f"log in with `hf auth login` (or set HF_TOKEN) and check the network") from None


def push_model(folder: str | Path, repo: str, *, results: str | Path | None = None, private: bool = False,
               message: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Check the folder, write the card, upload (see the module docstring). Returns {"repo", "files",
    "card", "url"}; `dry_run` stops before the upload."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SlamError(f"{folder}: no such model folder")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise SlamError(f"--repo {repo!r}: expected OWNER/NAME")
    files = push_files(folder)
    res = _results(folder, results)
    card = model_card(folder, repo, res)
    upload: dict[str, Path | bytes] = {f: folder / f for f in files}
    upload["README.md"] = card.encode()
    if res is not None:
        upload["results.json"] = (json.dumps(res, indent=2) + "\n").encode()
    names = sorted(upload)
    size = sum((folder / f).stat().st_size for f in files)
    url = None
    if not dry_run:
        url = hub_upload(repo, upload, private, message or f"slam {slam.__version__}: push {folder.name}")
    print(f"{'Would push' if dry_run else 'Pushed'} {len(names)} files ({size / 1e6:.1f} MB) to {repo}: "
          f"{', '.join(names)}" + (f"; {url}" if url else "") + ".")
    return {"repo": repo, "files": names, "card": card, "url": url}
