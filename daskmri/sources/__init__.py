"""Source formats, one module each (issue 25)."""
