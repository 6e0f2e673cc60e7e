"""The CPU miniature of the whole recipe (`slam demo`): the plan and its steps (steps.py), the report
(report.py) and the word-level tokenizer of its text LM (textlm.py)."""
