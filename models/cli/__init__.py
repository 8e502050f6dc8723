"""Console scripts: ``reid-train``, ``reid-eval``, ``reid-privacy-curve``, ``reid-attack`` (and ``reid-export``)."""
