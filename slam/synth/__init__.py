"""Text -> speech: the built-in story corpus and benchmark text (corpus.py), TTS backends (tts.py, espeak.py)."""
