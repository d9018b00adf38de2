"""ensemble: combine segmenters into one zone map with uncertainty."""
