"""localize: lesion localisation downstream of the zone map, with Grad-CAM explanations."""
