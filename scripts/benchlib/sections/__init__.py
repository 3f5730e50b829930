"""The measured sections of scripts/bench, one module each."""
