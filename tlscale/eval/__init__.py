from tlscale.eval.evaluator import predict_probabilities
from tlscale.eval.metrics import classification_metrics
from tlscale.eval.reports import plot_confusion_matrix, write_predictions

__all__ = ["classification_metrics", "plot_confusion_matrix", "predict_probabilities", "write_predictions"]
