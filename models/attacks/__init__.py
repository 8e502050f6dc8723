"""Attacks on released galleries: ID-accuracy probes, linkage, feature inversion judged by independent models."""
