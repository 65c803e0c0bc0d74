"""actors: see DESIGN.md's layout."""
