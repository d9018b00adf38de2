"""The lab: measurements of the product, never imported by it. Each script runs from the repository
root as `python -m bench.<name>` and writes its figures to bench/results/ (bench.common)."""
