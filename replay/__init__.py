"""replay: see DESIGN.md's layout."""
