"""Training: the paper's recipe (Section 3.4), fine-tuning, evaluation and the resolution pipeline."""
