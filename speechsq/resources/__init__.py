"""Package data: the embedded corpus sentence list (sentences.txt)."""
