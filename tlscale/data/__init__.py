from tlscale.data.batching import Encoded, collate, length_grouped_batches, lengths, sequential_batches, tokenize
from tlscale.data.classification import ClassificationData, Examples, build_classification_data, read_examples
from tlscale.data.readers import READERS, read_table

__all__ = ["READERS", "ClassificationData", "Encoded", "Examples", "build_classification_data", "collate",
           "length_grouped_batches", "lengths", "read_examples", "read_table", "sequential_batches", "tokenize"]
