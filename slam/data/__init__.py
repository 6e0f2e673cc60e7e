"""Training data: document sources, packing into rows, the loss, and interleaved text-speech documents.

    sources.py     units datasets and text files -> documents (random access, lengths up front, held-out split)
    packing.py     documents -> dense [B, S] rows with per-document positions (PackedLoader, resumable)
    loss.py        the token-weighted causal LM loss of a packed batch
    interleave.py  utterances with word times -> interleaved text/speech documents (SpiritLM style)

The names most callers need are re-exported here.
"""

from slam.data.loss import causal_lm_loss, evaluate_loss
from slam.data.packing import IGNORE, PackedLoader, batch_to, pack_documents, plan_epoch, to_batch
from slam.data.sources import ArraySource, DocumentSource, in_val_split, text_source, units_layout, units_source

__all__ = ["ArraySource", "DocumentSource", "IGNORE", "PackedLoader", "batch_to", "causal_lm_loss",
           "evaluate_loss", "in_val_split", "pack_documents", "plan_epoch", "text_source", "to_batch",
           "units_layout", "units_source"]
