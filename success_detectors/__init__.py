"""success_detectors: see DESIGN.md's layout."""
