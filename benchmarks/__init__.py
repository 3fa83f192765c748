"""Speed measurements and their test fixtures; kept out of the installed panoptic_ext package."""
