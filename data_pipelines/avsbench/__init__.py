"""AVSBench readers (shared by the real and the synthetic trees) and TFDS builders."""
