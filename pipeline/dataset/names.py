"""The file names of the dataset format: known here alone."""

MARKER = "COMPLETE"  # written last: the directory is a finished dataset
MANIFEST = "manifest.jsonl"  # one JSON object per kept item, in order
STATS = "stats.json"  # counts, and each file's size and checksum
CONFIG = "config.json"  # the stage, its settings, the identity of its inputs
PROGRESS = "progress.json"  # the last item boundary of a stage that is running
PARTIAL = ".partial"  # the suffix of a file being written
