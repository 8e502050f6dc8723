"""Evaluation: the Market-1501 ranking protocol and the ID-accuracy privacy attackers."""

from models.evaluation.ranking import cosine_distance, euclidean_distance, evaluate_rankings

__all__ = ["cosine_distance", "euclidean_distance", "evaluate_rankings"]
