from tlscale.models.loading import build_classifier, load_tokenizer, load_trained_classifier, resolve_model_path

__all__ = ["build_classifier", "load_tokenizer", "load_trained_classifier", "resolve_model_path"]
