"""Predicting by student id: the feature store's online values read without Feast (see ``reader``)."""
