"""The end-to-end demo and the sample data it, the tests and the benchmarks are made of:
real photos that ship with installed packages, LSUN-format databases built from them,
planted near-duplicates, and photos with hand-checked face boxes."""
