"""Public checks: they ship with the student package and run in the notebook."""
