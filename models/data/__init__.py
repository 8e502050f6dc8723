"""Re-ID data: Market-1501 layout reader, P x K sampler, tensor transforms."""

from models.data.market import ReIDSplit, Sample, parse_folder, read_market_split
from models.data.sampler import PKSampler

__all__ = ["PKSampler", "ReIDSplit", "Sample", "parse_folder", "read_market_split"]
