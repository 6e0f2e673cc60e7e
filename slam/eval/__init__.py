"""Evaluation: pair metrics (sBLIMP, sSC, tSC, sWUGGY, any pairs.jsonl), GenPPL and auto-BLEU."""
