"""ILA video recognition: the authors' model, exactly, with training, evaluation and prediction."""
