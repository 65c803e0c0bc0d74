"""learners: see DESIGN.md's layout."""
