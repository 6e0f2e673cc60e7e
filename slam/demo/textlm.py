"""A tiny word-level text tokenizer for the demo's miniature TWIST (no downloads: trained here, in seconds).

    slam text-tokenizer corpus/stories.txt --out textlm/tokenizer
    slam train slam/recipes/demo-text.yaml data.train='[{path: corpus/stories.txt}]' \\
        data.text_tokenizer=textlm/tokenizer out=runs/text

TWIST starts a speech LM from a pretrained text LM. No pretrained LM can be downloaded here, so the demo
pre-trains its own, on the training text of the built-in corpus, with the same `slam train` loop
(`data.kind: text`). That loop reads any HF tokenizer folder; this module makes one with the `tokenizers`
package that transformers already depends on.

Why word level and not BPE: the corpus has a closed ~320-word vocabulary, so one token per word and
punctuation mark covers all of it with ~340 rows, the same order as the speech model's 202 rows, and every
token is a whole word the text LM can attach topic and grammar to. Lower-cased: the capital of a story's
first word carries nothing the speech does not also lack.

Special ids follow the speech layout of slam.tokens (pad 0, <s> = </s> 1): under TWIST's `truncate` init
the speech model's pad and bos/eos rows start from the text LM's own pad and end-of-story rows.
"""

from __future__ import annotations

from pathlib import Path

from slam.errors import SlamError

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def train_tokenizer(text_files: list[str | Path], out_dir: str | Path, min_frequency: int = 1) -> dict:
    """Fit a word-level tokenizer on `text_files` and save it as an HF tokenizer folder (AutoTokenizer
    loads it). Returns a summary: vocabulary size and the special ids."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    files = [str(f) for f in text_files]
    for f in files:
        if not Path(f).is_file():
            raise SlamError(f"text file {f!r} does not exist")
    tok = Tokenizer(WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # words and punctuation marks are separate tokens: "home." -> "home", "."
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    # special tokens first, in this order, so that their ids are 0, 1, 2 (pad, bos/eos, unk)
    trainer = WordLevelTrainer(special_tokens=[PAD, EOS, UNK], min_frequency=min_frequency, show_progress=False)
    tok.train(files, trainer)
    if tok.token_to_id(PAD) != 0 or tok.token_to_id(EOS) != 1:
        raise SlamError("text tokenizer: special tokens did not get ids 0 and 1")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=EOS, eos_token=EOS,
                                   unk_token=UNK)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return {"vocab_size": len(fast), "pad_id": fast.pad_token_id, "bos_id": fast.bos_token_id,
            "eos_id": fast.eos_token_id, "unk_id": fast.unk_token_id, "out": str(out), "files": files}
