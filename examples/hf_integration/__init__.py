"""A Hugging Face-style integration written only against the Metronome SDK (see README.md)."""
