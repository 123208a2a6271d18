from tlscale.eval.evaluator import predict_probabilities
from tlscale.eval.metrics import classification_metrics
from tlscale.eval.reports import (plot_confusion_matrix, plot_learning_curve, plot_reliability, reliability_bins,
                                  write_predictions)

__all__ = ["classification_metrics", "plot_confusion_matrix", "plot_learning_curve", "plot_reliability",
           "predict_probabilities", "reliability_bins", "write_predictions"]
