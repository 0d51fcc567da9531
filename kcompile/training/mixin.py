"""The Keras training API on models (`compile`, `fit`, `evaluate`, `train_on_batch`, ...)."""


class TrainingMixin:
    """Mixed into `kcompile.Model`; the training methods live here."""
